"""The per-stream pump: upstream reader -> frame buffer (bounded queue + replay) -> writers.

A :class:`RelayStream` owns one generation. :meth:`RelayStream.run` reads the upstream
(retrying per :mod:`service.retry` until a frame was forwarded), accounts every event
(timings, usage, tool blocks) and appends frames to its :class:`~service.buffer.FrameBuffer`;
client connections drain the buffer (see :mod:`service.responder`). Every way a stream can
end goes through :meth:`RelayStream.stop` or an upstream outcome, and :meth:`RelayStream.run`
finalises exactly once: the upstream response is closed shielded from cancellation (so the
provider stops generating), terminal frames are written, and the observer is told.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import msgspec
import structlog

from service.accumulate import AccumulationError, MessageAccumulator, ToolInputParsed
from service.buffer import FrameBuffer
from service.config import Settings
from service.errors import UpstreamError, UpstreamProtocolError, UpstreamStatusError
from service.events import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    ErrorEvent,
    MessageDelta,
    MessageStart,
    MessageStop,
    ServerToolUseBlock,
    StreamEvent,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
)
from service.measure import StreamTimings
from service.request import RelayRequest
from service.retry import RetryPolicy
from service.sse import encode_comment, encode_event
from service.telemetry.observer import StreamInfo, StreamObserver, StreamResult
from service.upstream.base import UpstreamAdapter, UpstreamFrame

__all__ = ["STOP_REASONS", "RelayStream", "input_digest"]

log = structlog.get_logger("relay")

STOP_REASONS = frozenset(
    {"client_disconnected", "cancelled", "slow_client", "deadline", "shutdown", "interrupted"}
)
"""Reasons a stream is stopped from outside the upstream (each closes the upstream).
``interrupted``: the task running the stream was cancelled by something other than
:meth:`RelayStream.stop` (uvicorn cancelling requests when its graceful shutdown timed out)."""

_RETRYABLE_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)
_MAX_TIMING_OFFSETS = 10_000
_ERROR_BODY_LIMIT = 64 * 1024


def input_digest(value: dict[str, Any]) -> str:
    """SHA-256 of a tool input's canonical JSON (sorted keys), as logged."""
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()


class RelayStream:
    """One relayed generation, its buffer, its measurements and its single ending."""

    def __init__(
        self,
        *,
        stream_id: str,
        request: RelayRequest,
        settings: Settings,
        adapter: UpstreamAdapter,
        client: httpx.AsyncClient,
        observer: StreamObserver,
        policy: RetryPolicy,
        client_key_id: str | None = None,
    ) -> None:
        self.id = stream_id
        self.request = request
        self.client_key_id = client_key_id
        self.settings = settings
        self.resumable = request.idempotency_key is not None
        self.timings = StreamTimings()
        # A streaming relay forwards bytes: it keeps tool inputs and usage, never the text.
        self.accumulator = MessageAccumulator(
            on_tool_input=self._tool_input_parsed, keep_text=not request.streaming
        )
        self.observer = observer
        self.buffer: FrameBuffer | None = (
            FrameBuffer(
                max_pending_bytes=settings.max_queued_bytes,
                replay_max_bytes=settings.replay_buffer_bytes,
                on_pending_change=observer.queued_bytes,
            )
            if request.streaming
            else None
        )
        self.outcome: str | None = None
        self.error: UpstreamError | None = None
        self.done = anyio.Event()
        self.finished_at: float | None = None
        self._finish_callbacks: list[Callable[[RelayStream], None]] = []
        self._adapter = adapter
        self._client = client
        self._policy = policy
        self._scope = anyio.CancelScope()
        self._stop_reason: str | None = None
        self._stop_requested_at: float | None = None
        self._response: httpx.Response | None = None
        self._phase = "connecting"
        self._message_started = False
        self._forwarded = False
        self._bytes_forwarded = 0
        self._events_forwarded = 0
        self._send_offsets: list[float] = []
        self._orphaned = anyio.Event()
        self._adopted = anyio.Event()
        self._last_tool_input: ToolInputParsed | None = None
        self._attempt_started = 0.0
        self._sending = False
        self._id_bytes = stream_id.encode()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Open the stream span; call in the request task, before the response headers."""
        self.observer.started(
            StreamInfo(
                stream_id=self.id,
                model=self.request.model,
                provider=self._adapter.provider,
                streaming=self.request.streaming,
                resumable=self.resumable,
            )
        )
        log.info(
            "stream.started",
            stream_id=self.id,
            model=self.request.model,
            streaming=self.request.streaming,
            resumable=self.resumable,
        )

    def stop(self, reason: str) -> None:
        """End the stream from outside (disconnect, cancel, stall, deadline, shutdown).
        The first reason wins; the upstream is closed by :meth:`run`'s cleanup."""
        if self._stop_reason is None and self.outcome is None:
            self._stop_reason = reason
            self._stop_requested_at = time.perf_counter()
            self.observer.cancelled(reason)
            self._scope.cancel()

    @property
    def provider(self) -> str:
        """``gen_ai.provider.name`` of the upstream."""
        return self._adapter.provider

    @property
    def stop_reason(self) -> str | None:
        """Why the stream was stopped from outside, if it was."""
        return self._stop_reason

    @property
    def allows_named_events(self) -> bool:
        """Whether ``relay_*`` events may be sent now (see the SDK compatibility rule)."""
        return self._message_started or self.request.early_relay_events

    def on_finish(self, callback: Callable[[RelayStream], None]) -> None:
        """Call ``callback(self)`` once the stream is finalised (at once if it already is)."""
        if self.finished_at is not None:
            callback(self)
        else:
            self._finish_callbacks.append(callback)

    def writer_attached(self) -> None:
        """A client connection started reading this stream."""
        self._adopted.set()

    def writer_detached(self) -> None:
        """A client connection went away; a stream nobody reads is stopped (resumable
        streams after ``resume_grace``, so a reconnect can pick them up)."""
        if self.buffer is None or self.buffer.writers > 0 or self.done.is_set():
            return
        if self.resumable:
            self._adopted = anyio.Event()
            self._orphaned.set()
        else:
            self.stop("client_disconnected")

    async def run(self) -> None:
        """Produce the whole stream; returns once it ended and was finalised."""
        try:
            with self._scope:
                if self._stop_reason is None:  # stopped before it ran: nothing to open
                    await self._generate()
        except anyio.get_cancelled_exc_class():
            if self._stop_reason is None:
                self._stop_reason = "interrupted"
                self._stop_requested_at = time.perf_counter()
                self.observer.cancelled("interrupted")
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._finalise()

    async def _generate(self) -> None:
        with anyio.move_on_after(self.settings.stream_deadline) as deadline:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._progress_loop)
                if self.resumable:
                    tg.start_soon(self._resume_watchdog)
                await self._read_guarded()
                tg.cancel_scope.cancel()
        if deadline.cancelled_caught:
            self.stop("deadline")

    # -- reading -------------------------------------------------------------------------

    async def _read_guarded(self) -> None:
        try:
            await self._read_with_retries()
        except UpstreamError as exc:
            self.error = exc

    async def _read_with_retries(self) -> None:
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._attempt()
            except UpstreamError as exc:
                self._sending = False
                if self._forwarded or not exc.retryable:
                    raise
                retry_after = exc.retry_after if isinstance(exc, UpstreamStatusError) else None
                delay = self._policy.next_delay(
                    attempt, elapsed=time.perf_counter() - started, retry_after=retry_after
                )
                if delay is None:
                    raise
                log.warning(
                    "upstream.retry",
                    stream_id=self.id,
                    attempt=attempt,
                    reason=exc.reason,
                    delay_ms=round(delay * 1000, 1),
                    retry_after=retry_after,
                )
                self.observer.retry(attempt, exc.reason, delay)
                self._phase = "retrying"
                await self._close_response()
                await anyio.sleep(delay)
            else:
                return

    async def _attempt(self) -> None:
        self._phase = "connecting"
        self._attempt_started = time.perf_counter()
        request = self._adapter.build_request(
            self._client,
            self.request.body,
            self.request.raw_body if self.request.streaming else None,
            self.request.headers,
            self.id,
        )
        try:
            # A stop while the request is in flight aborts it too (the provider may have
            # started generating before its headers reach us).
            self._sending = True
            with self.observer.activate():
                self._response = await self._client.send(request, stream=True)
            self._sending = False
            if self._response.status_code >= 300:
                body = await self._read_error_body(self._response)
                raise self._adapter.status_error(self._response, body)
            self._phase = "waiting"
            await self._pump(self._response)
        except httpx.TimeoutException as exc:
            reason = "upstream_stall" if self._response is not None else "upstream_timeout"
            raise UpstreamError(
                f"upstream timed out ({type(exc).__name__})",
                reason=reason,
                error_type="timeout_error",
                retryable=True,
            ) from None
        except httpx.TransportError as exc:
            reason = "upstream_dropped" if self._response is not None else "upstream_connect"
            raise UpstreamError(
                f"upstream connection failed ({type(exc).__name__})", reason=reason, retryable=True
            ) from None

    async def _pump(self, response: httpx.Response) -> None:
        decoder = self._adapter.decoder()
        async for chunk in response.aiter_bytes():
            if self.timings.first_byte is None:
                self.observer.first_byte(self.timings.mark_byte() - self.timings.start)
            for frame in decoder.feed(chunk):
                self._account(frame.event)
                # The provider generated content: a retry would bill it again (and, when
                # streaming, repeat what the client has). Never retry from here on.
                self._forwarded = True
                self._forward(frame)
            if self.buffer is not None and not self.buffer.writable():
                await self._wait_for_client()
        for frame in decoder.close():
            self._account(frame.event)
            self._forwarded = True
            self._forward(frame)
        if self.outcome != "completed":
            raise UpstreamError(
                "upstream closed the stream before message_stop",
                reason="upstream_truncated",
                retryable=True,
            )

    async def _wait_for_client(self) -> None:
        assert self.buffer is not None
        with anyio.move_on_after(self.settings.client_stall_timeout):
            await self.buffer.wait_writable()
            return
        self.stop("slow_client")
        await anyio.lowlevel.checkpoint()

    async def _read_error_body(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= _ERROR_BODY_LIMIT:
                break
        return b"".join(chunks)[:_ERROR_BODY_LIMIT]

    # -- accounting (hot path: once per upstream event) --------------------------------

    def _account(self, event: StreamEvent) -> None:
        if isinstance(event, ErrorEvent):
            kind = event.error.type
            raise UpstreamError(
                event.error.message,
                reason="upstream_error",
                error_type=kind,
                retryable=kind in _RETRYABLE_ERROR_TYPES,
            )
        try:
            self.accumulator.feed(event)
        except AccumulationError as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        if isinstance(event, ContentBlockDelta):
            self._account_delta(event)
        elif isinstance(event, MessageStart):
            self._message_started = True
            self._phase = "waiting_first_token"
        elif isinstance(event, ContentBlockStart):
            if isinstance(event.content_block, ThinkingBlock):
                self._phase = "thinking"
        elif isinstance(event, ContentBlockStop):
            self._account_block_stop(event.index)
        elif isinstance(event, MessageDelta):
            if event.usage.output_tokens is not None:
                self.timings.set_output_tokens(event.usage.output_tokens)
        elif isinstance(event, MessageStop):
            self.outcome = "completed"

    def _account_delta(self, event: ContentBlockDelta) -> None:
        delta = event.delta
        first = self.timings.first_token is None
        previous = self.timings.last_token
        now = self.timings.mark_delta(is_text=isinstance(delta, TextDelta))
        if first:
            self.observer.first_token(now - self.timings.start)
            self.observer.upstream_first_token(now - self._attempt_started)
            self.observer.delta(None)
        else:
            assert previous is not None
            self.observer.delta(now - previous)
        self._phase = "thinking" if isinstance(delta, ThinkingDelta) else "generating"
        if self.request.timing_probe and len(self._send_offsets) < _MAX_TIMING_OFFSETS:
            self._send_offsets.append(now - self.timings.start)

    def _account_block_stop(self, index: int) -> None:
        block = self.accumulator.message.content[index]
        if isinstance(block, ToolUseBlock | ServerToolUseBlock):
            parsed = self._last_tool_input
            size = parsed.bytes if parsed is not None and parsed.index == index else None
            self.observer.block_stopped(block.type, block.name, size)
        else:
            self.observer.block_stopped(block.type, None, None)

    def _tool_input_parsed(self, parsed: ToolInputParsed) -> None:
        self._last_tool_input = parsed
        content: dict[str, Any] = {
            "input_keys": sorted(parsed.input),
            "input_sha256": input_digest(parsed.input),
        }
        if self.settings.log_tool_input:
            content["input"] = parsed.input
        log.info(
            "tool_input.parsed",
            stream_id=self.id,
            tool=parsed.tool_name,
            fragments=parsed.fragments,
            bytes=parsed.bytes,
            parse_attempts=parsed.parse_attempts,
            **content,
        )

    # -- frames --------------------------------------------------------------------------

    def _forward(self, frame: UpstreamFrame) -> None:
        if self.buffer is None:
            return
        seq = self.buffer.next_seq
        data = b"%sid: %s:%d\n\n" % (frame.raw, self._id_bytes, seq)
        self.buffer.append(data)
        self._bytes_forwarded += len(data)
        self._events_forwarded += 1

    def _append_event(self, name: str, payload: dict[str, Any]) -> None:
        """A relay event, or a comment when named events are not allowed yet."""
        if self.buffer is None or self.buffer.closed:
            return
        data = msgspec.json.encode(payload).decode()
        if name == "error" or self.allows_named_events:
            seq = self.buffer.next_seq
            frame = encode_event(data, event=name, id=f"{self.id}:{seq}")
            self._events_forwarded += 1
        else:
            frame = encode_comment(f"{name} {data}")
        self._bytes_forwarded += len(frame)
        self.buffer.append(frame)

    async def _progress_loop(self) -> None:
        interval = self.settings.progress_interval
        while True:
            await anyio.sleep(interval)
            last = self.timings.last_token or self.timings.start
            now = time.perf_counter()
            if now - last < interval:
                continue
            elapsed = now - self.timings.start
            self.timings.mark_progress()
            self.observer.progress(self._phase, elapsed)
            self._append_event(
                "relay_progress",
                {
                    "type": "relay_progress",
                    "phase": self._phase,
                    "elapsed_ms": round(elapsed * 1000),
                },
            )

    async def _resume_watchdog(self) -> None:
        while True:
            await self._orphaned.wait()
            self._orphaned = anyio.Event()
            with anyio.move_on_after(self.settings.resume_grace):
                await self._adopted.wait()
            if self.buffer is not None and self.buffer.writers == 0:
                self.stop("client_disconnected")
                return

    # -- the single ending ---------------------------------------------------------------

    async def _close_response(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            await response.aclose()

    async def _finalise(self) -> None:
        was_open = self._sending or (self._response is not None and not self._response.is_closed)
        await self._close_response()
        if self._stop_reason is not None:
            self.outcome = self._stop_reason
        elif self.error is not None:
            self.outcome = self.error.reason
        elif self.outcome is None:
            self.outcome = "upstream_truncated"
        if self._stop_reason is not None and was_open:
            self._log_abort()
        if self.error is not None:
            self.observer.error(self.error.error_type, self.error.message)
        self._write_ending()
        if self.buffer is not None:
            self.buffer.close()
            self.buffer.settle_accounting()
        self.finished_at = time.perf_counter()
        self.observer.finished(self._result())
        self.done.set()
        for callback in self._finish_callbacks:
            callback(self)

    def _log_abort(self) -> None:
        assert self._stop_requested_at is not None
        assert self._stop_reason is not None
        propagation = time.perf_counter() - self._stop_requested_at
        tokens = self.tokens_so_far
        log.info(
            "upstream.aborted",
            stream_id=self.id,
            reason=self._stop_reason,
            tokens_at_abort=tokens,
            propagation_ms=round(propagation * 1000, 3),
        )
        self.observer.upstream_aborted(self._stop_reason, tokens, propagation)

    @property
    def tokens_so_far(self) -> int:
        """Output tokens received: cumulative usage when reported, else content deltas."""
        reported = self.accumulator.output_tokens
        return max(reported or 0, self.timings.content_deltas)

    def _write_ending(self) -> None:
        summary = self.timings.finish()
        if self.outcome != "completed":
            self._append_event("error", self._error_payload())
        metrics: dict[str, Any] = {
            "type": "relay_metrics",
            "stream_id": self.id,
            "outcome": self.outcome,
            "server": summary.as_ms_dict(),
            "usage": {
                "input_tokens": self.accumulator.input_tokens,
                "output_tokens": self.accumulator.output_tokens,
            },
        }
        if self.buffer is not None:
            metrics["queue_peak_bytes"] = self.buffer.peak_pending_bytes
        if self.request.timing_probe:
            metrics["send_offsets_ms"] = [round(t * 1000, 3) for t in self._send_offsets]
        self._append_event("relay_metrics", metrics)

    def _error_payload(self) -> dict[str, Any]:
        partial = self.timings.content_deltas > 0
        if self.error is not None:
            error_type, message = self.error.error_type, self.error.message
            retryable, reason = self.error.retryable, self.error.reason
        else:
            reason = self.outcome or "unknown"
            error_type = "overloaded_error" if reason == "shutdown" else "api_error"
            message = f"stream ended by the relay: {reason}"
            retryable = reason in {"shutdown", "client_disconnected", "slow_client"}
        return {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "relay": {"retryable": retryable, "partial": partial, "reason": reason},
        }

    def _result(self) -> StreamResult:
        message = self.accumulator.message if self.accumulator.started else None
        stop = self.accumulator.stop_reason
        return StreamResult(
            outcome=self.outcome or "unknown",
            timings=self.timings.summary(),
            input_tokens=self.accumulator.input_tokens,
            output_tokens=self.accumulator.output_tokens,
            finish_reasons=(stop,) if stop else (),
            response_model=message.model if message is not None else None,
            response_id=message.id if message is not None else None,
            error_type=self.error.error_type
            if self.error is not None
            else (None if self.outcome == "completed" else self.outcome),
            bytes_sent=self._bytes_forwarded,
            events_sent=self._events_forwarded,
        )
