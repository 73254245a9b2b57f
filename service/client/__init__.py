"""Python client for the relay: streams a turn, measures it client-side, reports back."""

from service.client.consumer import RelayClient, RelayStreamError, TurnResult

__all__ = ["RelayClient", "RelayStreamError", "TurnResult"]
