"""The stream observer: one span, metrics and a canonical log line per relayed stream.

:class:`TelemetryObserver` implements :class:`~service.telemetry.observer.StreamObserver`.
The span ``chat {model}`` (kind CLIENT, GenAI semantic conventions) is started with
``start_span`` and ended exactly once: by :meth:`TelemetryObserver.finished`, or, for an
observer dropped without ever finishing, by :meth:`TelemetryObserverFactory.reap` with
outcome ``abandoned``. Hooks never raise (a telemetry bug must not break a stream): a failure
is logged and counted in ``relay_telemetry_errors_total``. They catch ``Exception`` only, so
cancellation always passes through.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Concatenate, Final, ParamSpec, Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from service.measure import TimingSummary
from service.telemetry.logging import bind_stream_context, unbind_stream_context
from service.telemetry.metrics import Exemplar, RelayMetrics, StreamMetrics
from service.telemetry.observer import StreamInfo, StreamResult
from service.telemetry.redact import redact_text

__all__ = [
    "MAX_BLOCK_EVENTS",
    "MAX_PROGRESS_EVENTS",
    "NOT_FAILURES",
    "StreamLogger",
    "TelemetryObserver",
    "TelemetryObserverFactory",
]

MAX_PROGRESS_EVENTS: Final = 3
"""Progress span events per stream; later progress signals are only counted."""
MAX_BLOCK_EVENTS: Final = 64
"""Content-block-stop span events per stream; later ones are only counted."""
NOT_FAILURES: Final = frozenset({"completed", "cancelled", "client_disconnected"})
"""Outcomes that leave the span status unset: success, and endings the user chose."""
_MAX_MESSAGE: Final = 1024
_ABANDONED: Final = "abandoned"
_FAILED: Final = "telemetry hook %s failed; the stream goes on"

_P = ParamSpec("_P")
_logger = logging.getLogger(__name__)


class StreamLogger(Protocol):
    """The slice of a structlog logger the observer uses."""

    def bind(self, **values: Any) -> StreamLogger: ...

    def info(self, event: str, **values: Any) -> Any: ...

    def warning(self, event: str, **values: Any) -> Any: ...


class _State:
    """Everything a stream's telemetry needs to finish, kept apart from the observer so that
    an abandoned observer can be finished after it was garbage collected."""

    __slots__ = (
        "abort_reason",
        "attempt_at",
        "block_events",
        "block_stops",
        "cancel_reason",
        "ended",
        "error_type",
        "exemplar",
        "info",
        "log",
        "metrics",
        "progress",
        "queued",
        "retries",
        "span",
        "started_at",
        "ttft_seen",
        "upstream_ttft",
        "upstream_ttft_estimate",
    )  # fmt: skip

    def __init__(self, info: StreamInfo, span: trace.Span, metrics: StreamMetrics,
                 log: StreamLogger, exemplar: Exemplar | None, now: float) -> None:  # fmt: skip
        self.info = info
        self.span = span
        self.metrics = metrics
        self.log = log
        self.exemplar = exemplar
        self.started_at = now
        self.attempt_at = now  # when the current upstream attempt (probably) began
        self.ended = False
        self.queued = 0
        self.retries = 0
        self.progress = 0
        self.block_stops = 0
        self.block_events = 0
        self.ttft_seen = False
        self.upstream_ttft: float | None = None
        self.upstream_ttft_estimate: float | None = None
        self.cancel_reason: str | None = None
        self.abort_reason: str | None = None
        self.error_type: str | None = None


def _guarded(
    method: Callable[Concatenate[TelemetryObserver, _P], None],
) -> Callable[Concatenate[TelemetryObserver, _P], None]:
    """Run a hook; on failure log it and count it instead of raising into the relay."""
    hook = method.__name__

    @functools.wraps(method)
    def wrapper(self: TelemetryObserver, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            _logger.exception(_FAILED, hook)
            self._relay_metrics.telemetry_error(hook)

    return wrapper


class TelemetryObserver:
    """Traces, measures and logs one stream. Made by :class:`TelemetryObserverFactory`."""

    __slots__ = ("__weakref__", "_clock", "_factory", "_finalizer", "_log", "_relay_metrics",
                 "_state", "_tracer")  # fmt: skip

    def __init__(self, factory: TelemetryObserverFactory) -> None:
        self._factory = factory
        self._tracer = factory.tracer
        self._relay_metrics = factory.metrics
        self._log = factory.logger
        self._clock = factory.clock
        self._state: _State | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None

    # -- start ------------------------------------------------------------------------

    @_guarded
    def started(self, info: StreamInfo) -> None:
        """Start the span (child of the current context), bind log ids, count in flight."""
        if self._state is not None:
            return
        span = self._tracer.start_span(
            f"chat {info.model}", kind=SpanKind.CLIENT, attributes=_start_attributes(info)
        )
        ids = _span_ids(span)
        log = self._log.bind(stream_id=info.stream_id, **ids)
        state = _State(info, span, self._relay_metrics.stream(info.provider, info.model), log,
                       _exemplar(span), self._clock())  # fmt: skip
        self._state = state
        self._relay_metrics.stream_started()
        # Safety net: an observer dropped without finished() still ends its span, later, at
        # a safe point (never inside a GC callback, which may run under a metrics lock).
        self._finalizer = weakref.finalize(self, self._factory._abandoned.append, state)
        self._finalizer.atexit = False
        bind_stream_context(stream_id=info.stream_id, trace_id=ids.get("trace_id"),
                            span_id=ids.get("span_id"))  # fmt: skip

    def traceparent(self) -> str | None:
        """W3C ``traceparent`` of the stream span (``None`` before start or without tracing)."""
        try:
            state = self._state
            if state is None:
                return None
            context = state.span.get_span_context()
            if context.is_valid:
                ids = f"{context.trace_id:032x}-{context.span_id:016x}"
                return f"00-{ids}-{context.trace_flags:02x}"
        except Exception:
            _logger.exception(_FAILED, "traceparent")
            self._relay_metrics.telemetry_error("traceparent")
        return None

    def activate(self) -> AbstractContextManager[None]:
        """Make the stream span current in the calling task (for the httpx child span)."""
        try:
            state = self._state
            if state is None or state.ended:
                return nullcontext()
            return _use_span(state.span)
        except Exception:
            _logger.exception(_FAILED, "activate")
            self._relay_metrics.telemetry_error("activate")
            return nullcontext()

    # -- during the stream ------------------------------------------------------------

    @_guarded
    def retry(self, attempt: int, reason: str, delay: float) -> None:
        """An upstream attempt failed before the first byte and will be retried."""
        self._relay_metrics.retry(reason)
        state = self._state
        if state is None or state.ended:
            return
        state.retries += 1
        state.attempt_at = self._clock() + max(0.0, delay)
        state.span.add_event(
            "relay.retry",
            {"relay.retry.attempt": attempt, "relay.retry.reason": reason,
             "relay.retry.delay": delay},
        )  # fmt: skip

    @_guarded
    def first_byte(self, ttfb: float) -> None:
        """First upstream byte arrived."""
        state = self._state
        if state is not None and not state.ended:
            state.span.set_attribute("relay.ttfb", ttfb)

    @_guarded
    def first_token(self, ttft: float) -> None:
        """First content delta: TTFT is observed now, not at the end of a long stream."""
        state = self._state
        if state is None or state.ended or state.ttft_seen:
            return
        state.ttft_seen = True
        state.upstream_ttft_estimate = self._clock() - state.attempt_at
        state.metrics.first_token(ttft, state.exemplar)
        state.span.add_event("gen_ai.first_token", {"relay.ttft": ttft})

    def upstream_first_token(self, seconds: float) -> None:
        """Upstream TTFT measured by the relay (final attempt's request -> first delta).

        Not (yet) part of the ``StreamObserver`` protocol; without it the observer estimates
        the figure from its own clock and the retry delays.
        """
        try:
            state = self._state
            if state is not None and not state.ended:
                state.upstream_ttft = seconds
        except Exception:
            _logger.exception(_FAILED, "upstream_first_token")
            self._relay_metrics.telemetry_error("upstream_first_token")

    def delta(self, gap: float | None) -> None:
        """A content delta (hot path: one histogram observation, no span event)."""
        if gap is None:
            return
        try:
            state = self._state
            if state is not None:
                state.metrics.gap(gap, state.exemplar)
        except Exception:
            _logger.exception(_FAILED, "delta")
            self._relay_metrics.telemetry_error("delta")

    @_guarded
    def block_stopped(
        self, block_type: str, tool_name: str | None, input_bytes: int | None
    ) -> None:
        """A content block ended (``tool_use`` blocks carry the tool name and input size)."""
        state = self._state
        if state is None or state.ended:
            return
        state.block_stops += 1
        if state.block_events >= MAX_BLOCK_EVENTS:
            return
        state.block_events += 1
        attributes: dict[str, str | int] = {"relay.block.type": block_type}
        if tool_name is not None:
            attributes["gen_ai.tool.name"] = tool_name
        if input_bytes is not None:
            attributes["relay.block.input_bytes"] = input_bytes
        state.span.add_event("gen_ai.content_block.stop", attributes)

    @_guarded
    def progress(self, phase: str, elapsed: float) -> None:
        """A progress signal went to the client; only the first few become span events."""
        state = self._state
        if state is None or state.ended:
            return
        state.progress += 1
        if state.progress <= MAX_PROGRESS_EVENTS:
            state.span.add_event(
                "relay.progress", {"relay.progress.phase": phase, "relay.progress.elapsed": elapsed}
            )

    @_guarded
    def heartbeat(self, kind: str) -> None:
        """A heartbeat was written."""
        self._relay_metrics.heartbeat(kind)

    @_guarded
    def queued_bytes(self, delta: int) -> None:
        """Bytes entered (+) or left (-) this stream's queue."""
        state = self._state
        if state is None or state.ended:
            return
        state.queued += delta
        self._relay_metrics.queued_bytes(delta)

    @_guarded
    def cancelled(self, reason: str) -> None:
        """The stream is being cancelled (client disconnect, cancel endpoint, stall ...)."""
        self._relay_metrics.cancellation(reason)
        state = self._state
        if state is None or state.ended:
            return
        state.cancel_reason = reason
        state.span.add_event("relay.cancel", {"relay.cancel.reason": reason})

    @_guarded
    def upstream_aborted(self, reason: str, tokens_at_abort: int, propagation: float) -> None:
        """The upstream response was closed early so the provider stops generating.

        (The relay writes the ``upstream.aborted`` log line itself; this records the span
        event and the metrics.)"""
        state = self._state
        exemplar = state.exemplar if state is not None else None
        self._relay_metrics.upstream_abort(reason, propagation, exemplar)
        if state is None or state.ended:
            return
        state.abort_reason = reason
        state.span.add_event(
            "relay.upstream_aborted",
            {"relay.abort.reason": reason, "relay.abort.tokens_at_abort": tokens_at_abort,
             "relay.abort.propagation_ms": round(propagation * 1000, 3)},
        )  # fmt: skip

    @_guarded
    def error(self, error_type: str, message: str) -> None:
        """An error happened on the stream (recorded as an ``exception`` span event)."""
        self._relay_metrics.upstream_error(error_type)
        state = self._state
        if state is None or state.ended:
            return
        state.error_type = error_type
        text = redact_text(message[:_MAX_MESSAGE])  # a provider error may quote a header
        state.span.add_event("exception", {"exception.type": error_type, "exception.message": text})
        state.log.warning("stream.error", error_type=error_type, message=text)

    # -- end --------------------------------------------------------------------------

    @_guarded
    def finished(self, result: StreamResult) -> None:
        """End the span, observe the end-of-stream metrics, log ``stream.finished`` (once)."""
        state = self._state
        if state is None:
            # Never started (rejected before the stream began): no span, nothing in flight.
            self._relay_metrics.count_outcome(result.outcome)
            failed = result.outcome not in NOT_FAILURES
            error_type = (result.error_type or result.outcome) if failed else None
            fields = _canonical_fields(None, result, error_type)
            (self._log.warning if failed else self._log.info)("stream.finished", **fields)
            return
        if state.ended:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        try:
            _finish(self._relay_metrics, state, result)
        finally:
            unbind_stream_context()


class TelemetryObserverFactory:
    """Makes one :class:`TelemetryObserver` per stream, sharing tracer, metrics and logger."""

    def __init__(self, tracer: trace.Tracer, metrics: RelayMetrics, logger: StreamLogger,
                 *, clock: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.tracer = tracer
        self.metrics = metrics
        self.logger = logger
        self.clock = clock
        # Filled by GC finalizers (deque.append is atomic and takes no Python-level lock);
        # drained at safe points. Bounded by the number of streams ever abandoned unreaped.
        self._abandoned: deque[_State] = deque()

    def __call__(self) -> TelemetryObserver:
        """A fresh observer (abandoned streams are reaped first)."""
        self.reap()
        return TelemetryObserver(self)

    def reap(self) -> int:
        """Finish streams whose observer was dropped without ``finished()``; returns how many.

        Call it at shutdown too; it also runs whenever a new observer is made.
        """
        reaped = 0
        while self._abandoned:
            state = self._abandoned.popleft()
            if state.ended:
                continue
            try:
                _finish(self.metrics, state, _abandoned_result(state, self.clock()))
            except Exception:
                _logger.exception(_FAILED, "reap")
                self.metrics.telemetry_error("reap")
            reaped += 1
        return reaped


def _finish(metrics: RelayMetrics, state: _State, result: StreamResult) -> None:
    state.ended = True
    span = state.span
    failed = result.outcome not in NOT_FAILURES
    error_type = (result.error_type or state.error_type or result.outcome) if failed else None
    try:
        _observe_end(state, result, error_type)
        span.set_attributes(_end_attributes(state, result))
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
        fields = _canonical_fields(state, result, error_type)
        (state.log.warning if failed else state.log.info)("stream.finished", **fields)
    finally:
        # Whatever failed above, the gauges must come back down and the span must end.
        if state.queued:
            metrics.queued_bytes(-state.queued)  # bytes still queued when the stream ended
            state.queued = 0
        metrics.stream_ended(result.outcome)
        span.end()


def _observe_end(state: _State, result: StreamResult, error_type: str | None) -> None:
    m, ex, timings = state.metrics, state.exemplar, result.timings
    if not state.ttft_seen and timings.ttft is not None:
        m.first_token(timings.ttft, ex)  # the relay never called first_token()
    upstream_ttft = state.upstream_ttft if state.upstream_ttft is not None else (
        state.upstream_ttft_estimate
    )  # fmt: skip
    if upstream_ttft is not None:
        m.upstream_first_token(upstream_ttft, ex)
    if timings.tpot is not None:
        m.tpot(timings.tpot, ex)
    if timings.perceived_latency is not None:
        m.first_progress(timings.perceived_latency, ex)
    m.tokens(result.input_tokens, result.output_tokens, ex)
    m.duration(timings.total, error_type, ex)


def _start_attributes(info: StreamInfo) -> dict[str, str | bool]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": info.provider,
        "gen_ai.request.model": info.model,
        "gen_ai.request.stream": info.streaming,
        "relay.stream_id": info.stream_id,
        "relay.resumable": info.resumable,
    }


def _end_attributes(state: _State, result: StreamResult) -> dict[str, Any]:
    t = result.timings
    attributes: dict[str, Any] = {
        "relay.outcome": result.outcome,
        "relay.duration": t.total,
        "relay.ttft": t.ttft,
        "relay.tpot": t.tpot,
        "relay.perceived_latency": t.perceived_latency,
        "relay.itl.p50": t.itl_p50,
        "relay.itl.p99": t.itl_p99,
        "relay.content_deltas": t.content_deltas,
        "relay.bytes_sent": result.bytes_sent,
        "relay.events_sent": result.events_sent,
        "relay.retries": state.retries,
        "relay.progress_signals": state.progress,
        "relay.block_stops": state.block_stops,
        "relay.cancel.reason": state.cancel_reason,
        "gen_ai.usage.input_tokens": result.input_tokens,
        "gen_ai.usage.output_tokens": result.output_tokens,
        "gen_ai.response.model": result.response_model,
        "gen_ai.response.id": result.response_id,
        "gen_ai.response.finish_reasons": list(result.finish_reasons) or None,
    }
    return {key: value for key, value in attributes.items() if value is not None}


def _canonical_fields(state: _State | None, result: StreamResult,
                      error_type: str | None) -> dict[str, Any]:  # fmt: skip
    fields: dict[str, Any] = dict(result.timings.as_dict())
    if state is not None:
        fields.update(
            model=state.info.model,
            provider=state.info.provider,
            retries=state.retries,
            cancel_reason=state.cancel_reason,
            abort_reason=state.abort_reason,
        )
    fields.update(
        outcome=result.outcome,
        response_model=result.response_model,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        finish_reasons=list(result.finish_reasons),
        bytes_sent=result.bytes_sent,
        events_sent=result.events_sent,
        error_type=error_type,
    )
    return fields


def _abandoned_result(state: _State, now: float) -> StreamResult:
    timings = TimingSummary(
        ttft=None, ttfb=None, time_to_first_text=None, perceived_latency=None, tpot=None,
        itl_p50=None, itl_p99=None, itl_max=None, total=max(0.0, now - state.started_at),
        content_deltas=0, output_tokens=None,
    )  # fmt: skip
    return StreamResult(
        outcome=_ABANDONED, timings=timings, input_tokens=None, output_tokens=None,
        finish_reasons=(), response_model=None, response_id=None, error_type=_ABANDONED,
        bytes_sent=0, events_sent=0,
    )  # fmt: skip


def _span_ids(span: trace.Span) -> dict[str, str]:
    context = span.get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def _exemplar(span: trace.Span) -> Exemplar | None:
    # Only sampled traces: an exemplar must lead to a trace that exists in the backend.
    context = span.get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return _span_ids(span)


@contextmanager
def _use_span(span: trace.Span) -> Iterator[None]:
    with trace.use_span(span, end_on_exit=False, record_exception=False,
                        set_status_on_exception=False):  # fmt: skip
        yield
