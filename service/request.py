"""Validation of an incoming ``POST /v1/messages`` into a :class:`RelayRequest`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from service.errors import RequestError

__all__ = ["RelayRequest", "parse_request"]


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """A validated Messages request and the relay options its headers asked for."""

    body: dict[str, Any]
    """The parsed JSON body."""
    raw_body: bytes
    """The body exactly as received (forwarded unchanged when streaming)."""
    model: str
    streaming: bool
    headers: Mapping[str, str]
    """Lower-cased request headers."""
    idempotency_key: str | None
    early_relay_events: bool
    """``X-Relay-Events: all``: named ``relay_*`` events may come before ``message_start``."""
    timing_probe: bool
    """``X-Relay-Timing: events``: ``relay_metrics`` lists each content event's send offset."""


def parse_request(raw_body: bytes, headers: Mapping[str, str]) -> RelayRequest:
    """Validate the body; raises :class:`RequestError` (400) with a message naming the field."""
    try:
        body = msgspec.json.decode(raw_body)
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model: field required (a non-empty string)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages: field required (a non-empty array)")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, "max_tokens: field required (an integer >= 1)")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream: must be a boolean")
    key = headers.get("idempotency-key")
    if key is not None and not (1 <= len(key) <= 255 and key.isprintable()):
        raise RequestError(400, "Idempotency-Key must be 1-255 printable characters")
    return RelayRequest(
        body=body,
        raw_body=raw_body,
        model=model,
        streaming=stream,
        headers=headers,
        idempotency_key=key,
        early_relay_events=headers.get("x-relay-events", "").lower() == "all",
        timing_probe=headers.get("x-relay-timing", "").lower() == "events",
    )
