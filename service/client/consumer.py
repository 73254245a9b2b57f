"""Consume one streamed turn from the relay (or any Anthropic-compatible endpoint).

Timings follow :mod:`service.measure`: the clock starts when the request is sent, so TTFT
here is what the user sees, including every hop. After the stream the client posts its
view to ``POST /v1/streams/{id}/client-metrics`` so the relay can show the last-mile split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from service.accumulate import MessageAccumulator, ToolInputParsed
from service.events import ContentBlockDelta, Message, TextDelta, ThinkingDelta, decode_event
from service.measure import StreamTimings, TimingSummary
from service.sse import SSEDecoder

__all__ = ["RelayClient", "RelayStreamError", "TurnResult"]

TextCallback = Callable[[str], None]
ToolCallback = Callable[[ToolInputParsed], None]


class RelayStreamError(Exception):
    """The stream ended with an error (HTTP status before it, or an ``error`` event in it)."""

    def __init__(
        self,
        message: str,
        *,
        error_type: str,
        status: int | None = None,
        retryable: bool = False,
        partial: bool = False,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status = status
        self.retryable = retryable
        self.partial = partial
        self.reason = reason


@dataclass(slots=True)
class TurnResult:
    """One completed turn as the client saw it."""

    message: Message
    timings: TimingSummary
    stream_id: str | None
    server_metrics: dict[str, Any] | None
    tool_inputs: list[ToolInputParsed] = field(default_factory=list)
    events: int = 0
    arrivals: list[float] = field(default_factory=list)
    """Arrival offsets (seconds since the request was sent) of each content delta."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``relay chat --json``)."""
        return {
            "stream_id": self.stream_id,
            "text": "".join(getattr(b, "text", "") for b in self.message.content),
            "stop_reason": self.message.stop_reason,
            "tool_calls": [
                {
                    "name": t.tool_name,
                    "input": t.input,
                    "fragments": t.fragments,
                    "bytes": t.bytes,
                    "parse_attempts": t.parse_attempts,
                }
                for t in self.tool_inputs
            ],
            "client": self.timings.as_dict(),
            "server": self.server_metrics,
        }


class RelayClient:
    """Streams Messages turns through the relay with httpx."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
        report_metrics: bool = True,
    ) -> None:
        headers = {"anthropic-version": "2023-06-01"}
        if api_key:
            headers["x-api-key"] = api_key
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )
        self._report_metrics = report_metrics

    async def __aenter__(self) -> RelayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def stream_turn(
        self,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        on_text: TextCallback | None = None,
        on_tool: ToolCallback | None = None,
    ) -> TurnResult:
        """Send ``body`` with ``stream: true`` and consume the whole answer."""
        consumer = _TurnConsumer(on_text=on_text, on_tool=on_tool)
        payload = msgspec.json.encode({**body, "stream": True})
        request = self._http.build_request(
            "POST",
            "/v1/messages",
            content=payload,
            headers={"content-type": "application/json", **(headers or {})},
        )
        consumer.timings = StreamTimings()
        response = await self._http.send(request, stream=True)
        try:
            consumer.stream_id = response.headers.get("x-relay-stream-id")
            if response.status_code != 200:
                raise _status_error(response.status_code, await response.aread())
            async for chunk in response.aiter_bytes():
                consumer.feed(chunk)
        finally:
            await response.aclose()
        result = consumer.result()
        if self._report_metrics and result.stream_id:
            await self._post_client_metrics(result)
        return result

    async def _post_client_metrics(self, result: TurnResult) -> None:
        timings = result.timings
        report = {
            "ttft_ms": _ms(timings.ttft),
            "ttfb_ms": _ms(timings.ttfb),
            "perceived_ms": _ms(timings.perceived_latency),
            "tpot_ms": _ms(timings.tpot),
            "total_ms": _ms(timings.total),
            "content_deltas": timings.content_deltas,
        }
        # Reporting is best effort: a missing report must never fail the user's turn.
        with contextlib.suppress(httpx.HTTPError):
            await self._http.post(f"/v1/streams/{result.stream_id}/client-metrics", json=report)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _status_error(status: int, body: bytes) -> RelayStreamError:
    error_type, message = "api_error", f"HTTP {status}"
    try:
        parsed = msgspec.json.decode(body)
        error_type = parsed["error"]["type"]
        message = parsed["error"]["message"]
    except (msgspec.DecodeError, KeyError, TypeError):
        pass
    return RelayStreamError(
        message,
        error_type=error_type,
        status=status,
        retryable=status in {408, 409, 429, 500, 502, 503, 504, 529},
    )


class _TurnConsumer:
    """SSE bytes -> accumulated message and client-side timings."""

    def __init__(self, *, on_text: TextCallback | None, on_tool: ToolCallback | None) -> None:
        self.timings = StreamTimings()
        self.stream_id: str | None = None
        self.server_metrics: dict[str, Any] | None = None
        self.events = 0
        self.arrivals: list[float] = []
        self._decoder = SSEDecoder()
        self._on_text = on_text
        self._on_tool = on_tool
        self._accumulator = MessageAccumulator(on_tool_input=on_tool)

    def feed(self, chunk: bytes) -> None:
        if self.timings.first_byte is None:
            self.timings.mark_byte()
        for sse in self._decoder.feed(chunk):
            self.events += 1
            if sse.event.startswith("relay_"):
                self._relay_event(sse.event, sse.data)
                continue
            event = decode_event(sse.data)
            if sse.event == "error":
                self._raise_error(sse.data)
            self._accumulator.feed(event)
            if isinstance(event, ContentBlockDelta):
                delta = event.delta
                now = self.timings.mark_delta(is_text=isinstance(delta, TextDelta))
                self.arrivals.append(now - self.timings.start)
                if isinstance(delta, TextDelta) and self._on_text is not None:
                    self._on_text(delta.text)
                elif isinstance(delta, ThinkingDelta):
                    self.timings.mark_progress()

    def _relay_event(self, name: str, data: str) -> None:
        if name == "relay_metrics":
            self.server_metrics = msgspec.json.decode(data)
        elif name == "relay_progress":
            self.timings.mark_progress()

    def _raise_error(self, data: str) -> None:
        payload = msgspec.json.decode(data)
        error = payload.get("error", {})
        relay = payload.get("relay", {})
        raise RelayStreamError(
            error.get("message", "stream error"),
            error_type=error.get("type", "api_error"),
            retryable=bool(relay.get("retryable", False)),
            partial=bool(relay.get("partial", self.timings.content_deltas > 0)),
            reason=relay.get("reason"),
        )

    def result(self) -> TurnResult:
        if not self._accumulator.finished:
            raise RelayStreamError(
                "stream ended before message_stop",
                error_type="api_error",
                retryable=True,
                partial=self.timings.content_deltas > 0,
                reason="truncated",
            )
        output_tokens = self._accumulator.output_tokens
        if output_tokens is not None:
            self.timings.set_output_tokens(output_tokens)
        return TurnResult(
            message=self._accumulator.message,
            timings=self.timings.finish(),
            stream_id=self.stream_id,
            server_metrics=self.server_metrics,
            tool_inputs=list(self._accumulator.tool_inputs),
            events=self.events,
            arrivals=self.arrivals,
        )
