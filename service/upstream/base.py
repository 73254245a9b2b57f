"""What the relay needs from a provider adapter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from service.errors import UpstreamStatusError
from service.events import StreamEvent

__all__ = ["FrameDecoder", "UpstreamAdapter", "UpstreamFrame", "strip_terminator"]


@dataclass(frozen=True, slots=True)
class UpstreamFrame:
    """One event ready to forward."""

    raw: bytes
    """The SSE frame without its terminating blank line (the relay appends ``id:`` and it)."""
    event: StreamEvent
    """The decoded event, for accounting."""


class FrameDecoder(Protocol):
    """Incremental bytes -> frames for one response."""

    def feed(self, chunk: bytes) -> list[UpstreamFrame]: ...

    def close(self) -> list[UpstreamFrame]: ...


class UpstreamAdapter(Protocol):
    """Builds the upstream request and decodes its stream."""

    provider: str
    """``gen_ai.provider.name`` of this upstream."""

    def check_request(self, body: Mapping[str, Any]) -> None:
        """Raise :class:`~service.errors.RequestError` (400) for a request this upstream
        cannot carry, before any byte of the response is sent."""
        ...

    def build_request(
        self,
        client: httpx.AsyncClient,
        body: Mapping[str, Any],
        raw_body: bytes | None,
        client_headers: Mapping[str, str],
        stream_id: str,
    ) -> httpx.Request:
        """The streaming request; ``raw_body`` (when given) is sent unchanged."""
        ...

    def decoder(self) -> FrameDecoder: ...

    def status_error(self, response: httpx.Response, body: bytes) -> UpstreamStatusError:
        """Map a non-2xx answer (its body already read, bounded) to an error."""
        ...


def strip_terminator(raw: bytes) -> bytes:
    """Drop the blank line that ends an SSE block (its last line ending)."""
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith((b"\n", b"\r")):
        return raw[:-1]
    return raw
