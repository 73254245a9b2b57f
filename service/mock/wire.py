"""The seam between the mock's scenario player and a provider's wire format.

A scenario is played the same way whichever API the client called; a :class:`MockWire` decides
how its errors and its frames look on that API (Anthropic Messages or OpenAI Chat Completions).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp

from service.mock.ledger import GenerationLedger, GenerationRecord
from service.mock.scenarios import Step

__all__ = ["MockWire"]


class MockWire(Protocol):
    """How one endpoint answers: error bodies and the generation player."""

    def error_response(
        self, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> ASGIResponse:
        """A non-2xx answer before any byte, for an Anthropic ``error_type``."""
        ...

    def generation_app(
        self,
        *,
        record: GenerationRecord,
        script: Iterator[Step],
        ledger: GenerationLedger,
        headers: list[tuple[bytes, bytes]],
    ) -> ASGIApp:
        """The ASGI app that plays ``script`` (written in Anthropic events) on this wire."""
        ...
