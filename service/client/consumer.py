"""Consume one streamed turn from the relay (or any Anthropic-compatible endpoint).

Timings follow :mod:`service.measure`: the clock starts when the request is sent, so TTFT
here is what the user sees, including every hop. After the stream the client posts its
view to ``POST /v1/streams/{id}/client-metrics`` so the relay can show the last-mile split.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import msgspec

from service.accumulate import MessageAccumulator, ToolInputParsed
from service.events import ContentBlockDelta, Message, TextDelta, ThinkingDelta, decode_event
from service.measure import StreamTimings, TimingSummary
from service.sse import SSEDecoder

__all__ = ["RelayClient", "RelayStreamError", "TurnResult"]

TextCallback = Callable[[str], None]
ToolCallback = Callable[[ToolInputParsed], None]
NoticeCallback = Callable[[str], None]


def _notify(callback: NoticeCallback | None, message: str) -> None:
    if callback is not None:
        callback(message)


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
        max_resumes: int = 3,
        max_turn_retries: int = 2,
    ) -> None:
        # Opt in to relay_progress before message_start: perceived latency then counts the
        # relay's progress signal, not only the first thinking or text delta.
        headers = {"anthropic-version": "2023-06-01", "x-relay-events": "all"}
        if api_key:
            headers["x-api-key"] = api_key
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )
        self._report_metrics = report_metrics
        self._max_resumes = max_resumes
        self._max_turn_retries = max_turn_retries

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
        on_notice: NoticeCallback | None = None,
    ) -> TurnResult:
        """Send ``body`` with ``stream: true`` and consume the whole answer.

        A dropped connection is resumed from the last event id (no duplicate, no gap). When
        resuming is impossible and the error is retryable, the partial answer is discarded,
        ``on_notice`` is told, and the whole turn is sent again under a new idempotency key.
        Non-retryable errors raise :class:`RelayStreamError` at once. If the caller is
        cancelled (Ctrl-C), the relay is asked to cancel the stream before re-raising.
        """
        turn = 0
        while True:
            turn += 1
            consumer = _TurnConsumer(on_text=on_text, on_tool=on_tool)
            try:
                return await self._stream_once(body, consumer, headers, on_notice)
            except RelayStreamError as exc:
                if not exc.retryable or turn > self._max_turn_retries:
                    raise
                delay = min(8.0, 0.5 * 2.0 ** (turn - 1))
                _notify(
                    on_notice,
                    f"stream failed ({exc.reason or exc.error_type}): partial "
                    f"answer discarded, retrying the whole turn in {delay:.1f} s",
                )
                await anyio.sleep(delay)

    async def cancel(self, stream_id: str) -> None:
        """Ask the relay to stop a stream and its upstream generation (best effort)."""
        with contextlib.suppress(httpx.HTTPError):
            await self._http.post(f"/v1/streams/{stream_id}/cancel", timeout=5.0)

    async def _stream_once(
        self,
        body: Mapping[str, Any],
        consumer: _TurnConsumer,
        headers: Mapping[str, str] | None,
        on_notice: NoticeCallback | None,
    ) -> TurnResult:
        # A fresh key per whole-turn attempt: a retry must never attach to the failed one.
        request_headers = {
            "content-type": "application/json",
            "idempotency-key": f"turn-{uuid.uuid4().hex}",
            **(headers or {}),
        }
        payload = msgspec.json.encode({**body, "stream": True})
        consumer.timings = StreamTimings()
        request = self._http.build_request(
            "POST", "/v1/messages", content=payload, headers=request_headers
        )
        try:
            response = await self._send_first(request)
            consumer.stream_id = response.headers.get("x-relay-stream-id")
            resumes = 0
            while not await self._consume(response, consumer):
                if consumer.stream_id is None or resumes >= self._max_resumes:
                    raise RelayStreamError(
                        "connection lost and cannot resume",
                        error_type="api_error",
                        retryable=True,
                        partial=consumer.partial,
                        reason="connection_lost",
                    )
                resumes += 1
                _notify(on_notice, f"connection lost; resuming after {consumer.last_event_id}")
                response = await self._resume(consumer)
        except anyio.get_cancelled_exc_class():
            if consumer.stream_id is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await self.cancel(consumer.stream_id)
            raise
        result = consumer.result()
        if self._report_metrics and result.stream_id:
            await self._post_client_metrics(result)
        return result

    async def _send_first(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise RelayStreamError(
                f"cannot reach the relay: {exc}",
                error_type="api_error",
                retryable=True,
                reason="connect_failed",
            ) from None

    async def _consume(self, response: httpx.Response, consumer: _TurnConsumer) -> bool:
        """Feed one connection's body; True when the stream ended, False when it dropped."""
        try:
            if response.status_code != 200:
                raise _status_error(response.status_code, await response.aread())
            consumer.new_connection()
            async for chunk in response.aiter_bytes():
                consumer.feed(chunk)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout):
            return consumer.finished
        finally:
            await response.aclose()
        return consumer.finished

    async def _resume(self, consumer: _TurnConsumer) -> httpx.Response:
        headers = {"last-event-id": consumer.last_event_id} if consumer.last_event_id else {}
        request = self._http.build_request(
            "GET", f"/v1/streams/{consumer.stream_id}", headers=headers
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise RelayStreamError(
                f"resume failed: {exc}",
                error_type="api_error",
                retryable=True,
                partial=consumer.partial,
                reason="resume_failed",
            ) from None
        if response.status_code != 200:
            await response.aclose()
            raise RelayStreamError(
                f"resume unavailable (HTTP {response.status_code})",
                error_type="api_error",
                status=response.status_code,
                retryable=True,
                partial=consumer.partial,
                reason="resume_unavailable",
            )
        return response

    async def _post_client_metrics(self, result: TurnResult) -> None:
        timings = result.timings
        report = {
            "ttft_ms": _ms(timings.ttft),
            "ttfb_ms": _ms(timings.ttfb),
            "perceived_ms": _ms(timings.perceived_latency),
            "tpot_ms": _ms(timings.tpot),
            "total_ms": _ms(timings.total),
            "content_deltas": timings.content_deltas,
            "client": "python",
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
        self.last_event_id: str | None = None
        self._decoder = SSEDecoder()
        self._on_text = on_text
        self._on_tool = on_tool
        self._accumulator = MessageAccumulator(on_tool_input=on_tool)

    @property
    def finished(self) -> bool:
        """``message_stop`` was received."""
        return self._accumulator.finished

    @property
    def partial(self) -> bool:
        """Content was already received."""
        return self.timings.content_deltas > 0

    def new_connection(self) -> None:
        """A new connection (first or resumed): partial bytes of the old one are dropped."""
        self._decoder = SSEDecoder()

    def feed(self, chunk: bytes) -> None:
        self.timings.mark_byte()
        for sse in self._decoder.feed(chunk):
            self.events += 1
            if sse.id is not None:
                self.last_event_id = sse.id
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
