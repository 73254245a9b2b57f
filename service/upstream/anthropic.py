"""Anthropic Messages upstream: frames pass through with their original bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from service.config import Settings
from service.errors import UpstreamProtocolError, UpstreamStatusError, error_type_for_status
from service.events import EventDecodeError, decode_event
from service.retry import RETRYABLE_STATUSES, parse_retry_after
from service.sse import ServerSentEvent, SSEDecodeError, SSEDecoder
from service.upstream.base import UpstreamFrame, strip_terminator

__all__ = ["AnthropicDecoder", "AnthropicUpstream"]

# Client headers that carry meaning for the provider and are safe to pass on.
_FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


class AnthropicDecoder:
    """SSE bytes -> typed events, keeping each event's original bytes."""

    def __init__(self, *, max_event_bytes: int) -> None:
        self._sse = SSEDecoder(max_line_bytes=max_event_bytes, max_event_bytes=max_event_bytes)

    def feed(self, chunk: bytes) -> list[UpstreamFrame]:
        """Frames completed by ``chunk``."""
        try:
            events = self._sse.feed(chunk)
        except SSEDecodeError as exc:
            raise UpstreamProtocolError(f"upstream SSE: {exc}") from exc
        return [self._frame(sse) for sse in events]

    def close(self) -> list[UpstreamFrame]:
        """End of the upstream body. An unterminated last event is dropped; an event whose
        blank line ended in the body's very last CR is complete and returned."""
        try:
            events = self._sse.close()
        except SSEDecodeError as exc:
            raise UpstreamProtocolError(f"upstream SSE: {exc}") from exc
        return [self._frame(sse) for sse in events]

    @staticmethod
    def _frame(sse: ServerSentEvent) -> UpstreamFrame:
        try:
            event = decode_event(sse.data)
        except EventDecodeError as exc:
            raise UpstreamProtocolError(f"upstream event {sse.event!r}: {exc}") from exc
        return UpstreamFrame(strip_terminator(sse.raw), event)


class AnthropicUpstream:
    """Adapter for the Anthropic Messages API and compatible servers (the built-in mock)."""

    provider = "anthropic"

    def __init__(self, settings: Settings) -> None:
        self._url = settings.upstream_url.rstrip("/") + "/v1/messages"
        self._api_key = settings.upstream_api_key
        self._version = settings.anthropic_version
        self._max_event_bytes = settings.max_event_bytes

    def check_request(self, body: Mapping[str, Any]) -> None:
        """Every Messages request passes through as it is."""

    def build_request(
        self,
        client: httpx.AsyncClient,
        body: Mapping[str, Any],
        raw_body: bytes | None,
        client_headers: Mapping[str, str],
        stream_id: str,
    ) -> httpx.Request:
        """POST the body (``stream`` forced true) with the provider key, never the client's."""
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "accept-encoding": "identity",
            "anthropic-version": self._version,
            "x-relay-stream-id": stream_id,
        }
        for name in _FORWARDED_HEADERS:
            if name in client_headers:
                headers[name] = client_headers[name]
        if self._api_key:
            headers["x-api-key"] = self._api_key
        content = (
            raw_body if raw_body is not None else msgspec.json.encode({**body, "stream": True})
        )
        return client.build_request("POST", self._url, headers=headers, content=content)

    def decoder(self) -> AnthropicDecoder:
        """A fresh decoder for one response."""
        return AnthropicDecoder(max_event_bytes=self._max_event_bytes)

    def status_error(self, response: httpx.Response, body: bytes) -> UpstreamStatusError:
        """Anthropic error body -> :class:`UpstreamStatusError` (message kept, key-free)."""
        status = response.status_code
        error_type = error_type_for_status(status)
        message = f"upstream answered {status}"
        try:
            parsed = msgspec.json.decode(body)
        except msgspec.DecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            error_type = str(parsed["error"].get("type", error_type))
            message = str(parsed["error"].get("message", message))
        return UpstreamStatusError(
            status,
            message,
            error_type=error_type,
            retryable=status in RETRYABLE_STATUSES,
            retry_after=parse_retry_after(response.headers),
        )
