"""The stream observer driven through scripted stream lifecycles.

A local TracerProvider with an in-memory exporter, a RelayMetrics registry of its own and
structlog's capture_logs: nothing global is configured, so these tests see only their spans.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from service.measure import StreamTimings
from service.telemetry.metrics import MetricsConfig, RelayMetrics, StreamMetrics
from service.telemetry.observer import StreamInfo, StreamObserver, StreamResult
from service.telemetry.stream import (
    MAX_PROGRESS_EVENTS,
    TelemetryObserver,
    TelemetryObserverFactory,
)

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
MODEL = "claude-test-1"
GENAI = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "anthropic",
    "gen_ai_request_model": MODEL,
}
PER_MODEL = {"gen_ai_provider_name": "anthropic", "gen_ai_request_model": MODEL}


@dataclass
class FakeClock:
    """A clock the test moves by hand, shared by StreamTimings and the observer."""

    now: float = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    exporter: InMemorySpanExporter
    provider: TracerProvider
    metrics: RelayMetrics
    factory: TelemetryObserverFactory
    clock: FakeClock
    logs: list[MutableMapping[str, Any]] = field(default_factory=list)

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def only_span(self) -> ReadableSpan:
        spans = [s for s in self.spans() if s.name.startswith("chat ")]
        assert len(spans) == 1, [s.name for s in self.spans()]
        return spans[0]

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def events(self, name: str) -> list[MutableMapping[str, Any]]:
        return [entry for entry in self.logs if entry["event"] == name]


@pytest.fixture
def harness() -> Iterator[Harness]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    clock = FakeClock()
    factory = TelemetryObserverFactory(
        provider.get_tracer("test"), metrics, structlog.get_logger("test"), clock=clock
    )
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        yield Harness(exporter, provider, metrics, factory, clock, logs)
    structlog.contextvars.clear_contextvars()


def info(stream_id: str = "s1", *, streaming: bool = True) -> StreamInfo:
    return StreamInfo(
        stream_id=stream_id, model=MODEL, provider="anthropic", streaming=streaming, resumable=False
    )


@dataclass
class Script:
    """Drives an observer the way the relay pump does, with timings on the fake clock."""

    observer: StreamObserver
    clock: FakeClock
    timings: StreamTimings = field(init=False)

    def __post_init__(self) -> None:
        self.timings = StreamTimings(clock=self.clock)

    def start(self, stream_info: StreamInfo | None = None) -> None:
        self.observer.started(stream_info or info())

    def tokens(self, count: int, *, every: float = 0.02, first_after: float = 0.3) -> None:
        for index in range(count):
            self.clock.advance(first_after if index == 0 else every)
            first = self.timings.first_token is None
            previous = self.timings.last_token
            now = self.timings.mark_delta(is_text=True)
            if first:
                self.observer.first_token(now - self.timings.start)
            self.observer.delta(None if previous is None else now - previous)

    def result(self, outcome: str = "completed", **overrides: Any) -> StreamResult:
        self.timings.set_output_tokens(overrides.pop("output_tokens", self.timings.content_deltas))
        summary = self.timings.finish()
        values: dict[str, Any] = {
            "outcome": outcome,
            "timings": summary,
            "input_tokens": 12,
            "output_tokens": summary.output_tokens,
            "finish_reasons": ("end_turn",) if outcome == "completed" else (),
            "response_model": f"{MODEL}-20250101",
            "response_id": "msg_01",
            "error_type": None,
            "bytes_sent": 2048,
            "events_sent": 30,
        }
        values.update(overrides)
        return StreamResult(**values)


def script(h: Harness) -> Script:
    return Script(h.factory(), h.clock)


def om_exemplars(metrics: RelayMetrics, family: str) -> list[dict[str, str]]:
    body, content_type = metrics.render(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    for metric in text_string_to_metric_families(body.decode()):  # type: ignore[no-untyped-call]
        if metric.name == family:
            return [dict(s.exemplar.labels) for s in metric.samples if s.exemplar is not None]
    raise AssertionError(f"{family} not exposed")


def context_of(span: ReadableSpan) -> SpanContext:
    context = span.get_span_context()
    assert context is not None
    return context


def event_names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


def test_completed_text_stream(harness: Harness) -> None:
    tracer = harness.provider.get_tracer("server")
    with tracer.start_as_current_span("POST /v1/messages", kind=SpanKind.SERVER) as server:
        s = script(harness)
        s.start()
        traceparent = s.observer.traceparent()
        s.tokens(10)
        s.observer.block_stopped("text", None, None)
        result = s.result()
        s.observer.finished(result)
        s.observer.finished(result)  # the relay's finally may race another path: ignored

    span = harness.only_span()
    ctx = context_of(span)
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == server.get_span_context().span_id
    assert traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert ctx.trace_flags.sampled
    assert event_names(span) == ["gen_ai.first_token", "gen_ai.content_block.stop"]
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.response.model"] == f"{MODEL}-20250101"
    assert attrs["gen_ai.response.id"] == "msg_01"
    assert attrs["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert attrs["gen_ai.usage.input_tokens"] == 12
    assert attrs["gen_ai.usage.output_tokens"] == 10
    assert attrs["relay.outcome"] == "completed"
    assert "error.type" not in attrs
    assert span.status.status_code is StatusCode.UNSET
    first_token = span.events[0]
    assert first_token.attributes is not None
    assert first_token.attributes["relay.ttft"] == pytest.approx(0.3)

    h = harness
    assert h.value("gen_ai_server_time_to_first_token_seconds_count", GENAI) == 1
    assert h.value("gen_ai_server_time_to_first_token_seconds_sum", GENAI) == pytest.approx(0.3)
    assert h.value("relay_inter_token_latency_seconds_count", PER_MODEL) == 9
    assert h.value("gen_ai_server_time_per_output_token_seconds_sum", GENAI) == pytest.approx(0.02)
    assert h.value("gen_ai_client_token_usage_sum", {**GENAI, "gen_ai_token_type": "output"}) == 10
    assert h.value("gen_ai_client_token_usage_sum", {**GENAI, "gen_ai_token_type": "input"}) == 12
    duration = {**GENAI, "error_type": ""}
    assert h.value("gen_ai_server_request_duration_seconds_count", duration) == 1
    assert h.value("relay_stream_outcomes_total", {"outcome": "completed"}) == 1
    assert h.value("relay_streams_in_flight") == 0

    trace_hex = f"{ctx.trace_id:032x}"
    for family in (
        "gen_ai_server_time_to_first_token_seconds",
        "relay_inter_token_latency_seconds",
        "gen_ai_server_request_duration_seconds",
    ):
        exemplars = om_exemplars(h.metrics, family)
        assert exemplars, family
        assert {e["trace_id"] for e in exemplars} == {trace_hex}
        assert {e["span_id"] for e in exemplars} == {f"{ctx.span_id:016x}"}

    (line,) = h.events("stream.finished")
    assert line["log_level"] == "info"
    assert line["stream_id"] == "s1"
    assert line["trace_id"] == trace_hex
    assert line["span_id"] == f"{ctx.span_id:016x}"
    assert line["outcome"] == "completed"
    assert line["ttft"] == pytest.approx(0.3)
    assert line["tpot"] == pytest.approx(0.02)
    assert line["itl_p50"] == pytest.approx(0.02)
    assert line["output_tokens"] == 10
    assert line["bytes_sent"] == 2048
    assert line["total"] == pytest.approx(0.48)


def test_tool_call_stream_records_block_stops(harness: Harness) -> None:
    s = script(harness)
    s.start()
    s.tokens(3)
    s.observer.block_stopped("text", None, None)
    s.tokens(5, first_after=0.05)
    s.observer.block_stopped("tool_use", "get_weather", 42)
    s.observer.finished(s.result(finish_reasons=("tool_use",)))

    span = harness.only_span()
    stops = [e for e in span.events if e.name == "gen_ai.content_block.stop"]
    assert [dict(e.attributes or {}) for e in stops] == [
        {"relay.block.type": "text"},
        {"relay.block.type": "tool_use", "gen_ai.tool.name": "get_weather",
         "relay.block.input_bytes": 42},
    ]  # fmt: skip
    assert (span.attributes or {})["gen_ai.response.finish_reasons"] == ("tool_use",)
    assert event_names(span)[0] == "gen_ai.first_token"


def test_client_disconnect_aborts_upstream(harness: Harness) -> None:
    s = script(harness)
    s.start()
    s.tokens(4)
    s.observer.queued_bytes(300)
    s.observer.cancelled("client_disconnected")
    s.observer.upstream_aborted("client_disconnected", 4, 0.004)
    s.observer.finished(s.result("client_disconnected"))

    span = harness.only_span()
    assert event_names(span)[-2:] == ["relay.cancel", "relay.upstream_aborted"]
    abort = span.events[-1].attributes or {}
    assert abort["relay.abort.tokens_at_abort"] == 4
    assert abort["relay.abort.propagation_ms"] == pytest.approx(4.0)
    assert span.status.status_code is StatusCode.UNSET  # the user left; not a failure
    assert "error.type" not in (span.attributes or {})

    h = harness
    assert h.value("relay_cancellations_total", {"reason": "client_disconnected"}) == 1
    assert h.value("relay_upstream_aborts_total", {"reason": "client_disconnected"}) == 1
    abort_count = "relay_upstream_abort_latency_seconds_count"
    assert h.value(abort_count, {"reason": "client_disconnected"}) == 1
    assert h.value("relay_queued_bytes") == 0  # bytes left in the queue are given back
    assert h.value("relay_streams_in_flight") == 0
    assert h.events("upstream.aborted") == []  # the relay writes that line itself
    (line,) = h.events("stream.finished")
    assert line["cancel_reason"] == "client_disconnected"
    assert line["abort_reason"] == "client_disconnected"


def test_explicit_cancel_with_upstream_abort(harness: Harness) -> None:
    s = script(harness)
    s.start(info("s2"))
    s.tokens(2)
    s.observer.progress("generating", 0.5)
    s.observer.cancelled("cancel_endpoint")
    s.observer.upstream_aborted("cancel_endpoint", 2, 0.01)
    s.observer.finished(s.result("cancelled"))

    span = harness.only_span()
    assert event_names(span) == [
        "gen_ai.first_token",
        "relay.progress",
        "relay.cancel",
        "relay.upstream_aborted",
    ]
    assert (span.events[2].attributes or {})["relay.cancel.reason"] == "cancel_endpoint"
    assert harness.value("relay_stream_outcomes_total", {"outcome": "cancelled"}) == 1


def test_upstream_error_marks_span_failed(harness: Harness) -> None:
    s = script(harness)
    s.start()
    s.tokens(2)
    s.observer.error("overloaded_error", "Overloaded")
    s.observer.finished(s.result("upstream_error", error_type="overloaded_error"))

    span = harness.only_span()
    assert span.status.status_code is StatusCode.ERROR
    attrs = span.attributes or {}
    assert attrs["error.type"] == "overloaded_error"
    exception = [e for e in span.events if e.name == "exception"]
    assert [dict(e.attributes or {}) for e in exception] == [
        {"exception.type": "overloaded_error", "exception.message": "Overloaded"}
    ]
    h = harness
    assert h.value("relay_upstream_errors_total", {"error_type": "overloaded_error"}) == 1
    failed = {**GENAI, "error_type": "overloaded_error"}
    assert h.value("gen_ai_server_request_duration_seconds_count", failed) == 1
    (line,) = h.events("stream.finished")
    assert line["log_level"] == "warning"
    assert line["error_type"] == "overloaded_error"


def test_error_messages_are_scrubbed(harness: Harness) -> None:
    s = script(harness)
    s.start()
    s.observer.error("authentication_error", "invalid x-api-key: sk-ant-api03-0123456789abcdefghij")
    s.observer.finished(s.result("upstream_error"))
    (event,) = [e for e in harness.only_span().events if e.name == "exception"]
    message = (event.attributes or {})["exception.message"]
    assert message == "invalid x-api-key: [REDACTED]"


def test_failure_without_error_type_uses_outcome(harness: Harness) -> None:
    s = script(harness)
    s.start()
    s.observer.finished(s.result("upstream_stall"))
    span = harness.only_span()
    assert (span.attributes or {})["error.type"] == "upstream_stall"
    assert span.status.status_code is StatusCode.ERROR


def test_retry_then_success(harness: Harness) -> None:
    s = script(harness)
    s.start()
    harness.clock.advance(0.1)
    s.observer.retry(1, "429", 0.5)
    harness.clock.advance(0.5)  # the backoff
    s.tokens(3, first_after=0.4)
    s.observer.finished(s.result())

    span = harness.only_span()
    assert event_names(span)[:2] == ["relay.retry", "gen_ai.first_token"]
    retry = dict(span.events[0].attributes or {})
    assert retry == {
        "relay.retry.attempt": 1,
        "relay.retry.reason": "429",
        "relay.retry.delay": 0.5,
    }
    assert (span.attributes or {})["relay.retries"] == 1
    h = harness
    assert h.value("relay_retries_total", {"reason": "429"}) == 1
    # Server TTFT includes the failed attempt and the backoff; upstream TTFT does not.
    assert h.value("gen_ai_server_time_to_first_token_seconds_sum", GENAI) == pytest.approx(1.0)
    upstream = h.value("relay_upstream_time_to_first_token_seconds_sum", PER_MODEL)
    assert upstream == pytest.approx(0.4)
    (line,) = h.events("stream.finished")
    assert line["retries"] == 1


def test_reported_upstream_ttft_wins_over_estimate(harness: Harness) -> None:
    s = script(harness)
    s.start()
    s.tokens(2)
    observer = s.observer
    assert isinstance(observer, TelemetryObserver)
    observer.upstream_first_token(0.123)
    observer.finished(s.result())
    upstream = harness.value("relay_upstream_time_to_first_token_seconds_sum", PER_MODEL)
    assert upstream == pytest.approx(0.123)


def test_progress_events_are_bounded(harness: Harness) -> None:
    s = script(harness)
    s.start()
    for index in range(MAX_PROGRESS_EVENTS + 4):
        harness.clock.advance(1.0)
        s.timings.mark_progress()
        s.observer.progress("thinking", float(index + 1))
    s.observer.heartbeat("comment")
    s.observer.heartbeat("typed")
    s.tokens(2)
    s.observer.finished(s.result())

    span = harness.only_span()
    assert event_names(span).count("relay.progress") == MAX_PROGRESS_EVENTS
    assert (span.attributes or {})["relay.progress_signals"] == MAX_PROGRESS_EVENTS + 4
    h = harness
    assert h.value("relay_heartbeats_total", {"kind": "comment"}) == 1
    assert h.value("relay_heartbeats_total", {"kind": "typed"}) == 1
    # Perceived latency (first progress at 1 s) is well below TTFT (7 s + 0.3 s).
    assert h.value("relay_time_to_first_progress_seconds_sum", PER_MODEL) == pytest.approx(1.0)


def test_in_flight_counts_running_streams(harness: Harness) -> None:
    first, second = script(harness), script(harness)
    first.start(info("a"))
    second.start(info("b"))
    assert harness.value("relay_streams_in_flight") == 2
    first.observer.finished(first.result())
    assert harness.value("relay_streams_in_flight") == 1
    second.observer.finished(second.result("client_disconnected"))
    assert harness.value("relay_streams_in_flight") == 0
    assert len(harness.spans()) == 2


def test_abandoned_observer_is_reaped_once(harness: Harness) -> None:
    s = script(harness)
    s.start(info("lost"))
    s.observer.queued_bytes(128)
    assert harness.value("relay_streams_in_flight") == 1
    del s
    gc.collect()
    assert harness.factory.reap() == 1
    assert harness.factory.reap() == 0

    span = harness.only_span()
    assert (span.attributes or {})["relay.outcome"] == "abandoned"
    assert span.status.status_code is StatusCode.ERROR
    assert harness.value("relay_streams_in_flight") == 0
    assert harness.value("relay_queued_bytes") == 0
    assert harness.value("relay_stream_outcomes_total", {"outcome": "abandoned"}) == 1
    (line,) = harness.events("stream.finished")
    assert line["stream_id"] == "lost"


def test_finished_observer_is_not_reaped(harness: Harness) -> None:
    s = script(harness)
    s.start()
    s.observer.finished(s.result())
    del s
    gc.collect()
    harness.factory()  # making a new observer reaps too
    assert harness.factory.reap() == 0
    assert len(harness.spans()) == 1


def test_finished_without_start_counts_outcome_only(harness: Harness) -> None:
    s = script(harness)
    s.observer.finished(s.result("rejected", error_type="invalid_request_error"))
    assert harness.spans() == ()
    assert harness.value("relay_stream_outcomes_total", {"outcome": "rejected"}) == 1
    assert harness.value("relay_streams_in_flight") == 0
    (line,) = harness.events("stream.finished")
    assert line["error_type"] == "invalid_request_error"


def test_hooks_after_finish_do_not_touch_the_span(harness: Harness) -> None:
    s = script(harness)
    s.start()
    s.observer.finished(s.result())
    s.observer.progress("late", 1.0)
    s.observer.cancelled("late")
    s.observer.error("late", "late")
    span = harness.only_span()
    assert "relay.progress" not in event_names(span)
    assert "exception" not in event_names(span)
    assert harness.value("relay_telemetry_errors_total", {"hook": "progress"}) == 0


def test_activate_makes_the_stream_span_current(harness: Harness) -> None:
    s = script(harness)
    assert trace.get_current_span() is trace.INVALID_SPAN
    with s.observer.activate():  # before start: nothing to activate, no error
        assert trace.get_current_span() is trace.INVALID_SPAN
    s.start()
    with s.observer.activate():
        current = trace.get_current_span().get_span_context()
        child = harness.provider.get_tracer("httpx").start_span("POST")
        child.end()
    assert trace.get_current_span() is trace.INVALID_SPAN
    s.observer.finished(s.result())
    stream_span = harness.only_span()
    assert current.span_id == context_of(stream_span).span_id
    (httpx_span,) = [x for x in harness.spans() if x.name == "POST"]
    assert httpx_span.parent is not None
    assert httpx_span.parent.span_id == context_of(stream_span).span_id


def test_failing_telemetry_never_breaks_the_stream(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("broken exporter")

    monkeypatch.setattr(StreamMetrics, "gap", broken)
    monkeypatch.setattr(StreamMetrics, "tpot", broken)
    s = script(harness)
    s.start()
    s.tokens(3)  # delta() hits the broken histogram twice
    s.observer.finished(s.result())  # so does finished(): the span must still end

    assert harness.value("relay_telemetry_errors_total", {"hook": "delta"}) == 2
    assert harness.value("relay_telemetry_errors_total", {"hook": "finished"}) == 1
    assert len(harness.spans()) == 1
    assert harness.value("relay_streams_in_flight") == 0


class Interrupt(BaseException):
    """Stands in for a cancellation exception: a hook must let it through."""


def test_hooks_do_not_swallow_base_exceptions(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*_args: object) -> None:
        raise Interrupt

    monkeypatch.setattr(RelayMetrics, "heartbeat", interrupt)
    s = script(harness)
    s.start()
    with pytest.raises(Interrupt):
        s.observer.heartbeat("comment")


def test_works_without_tracing() -> None:
    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    clock = FakeClock()
    factory = TelemetryObserverFactory(
        trace.NoOpTracerProvider().get_tracer("x"), metrics, structlog.get_logger(), clock=clock
    )
    s = Script(factory(), clock)
    with capture_logs() as logs:
        s.start()
        s.tokens(3)
        assert s.observer.traceparent() is None
        s.observer.finished(s.result())
    assert (
        metrics.registry.get_sample_value("gen_ai_server_time_to_first_token_seconds_count", GENAI)
        == 1
    )
    assert om_exemplars(metrics, "gen_ai_server_time_to_first_token_seconds") == []
    (line,) = [entry for entry in logs if entry["event"] == "stream.finished"]
    assert "trace_id" not in line
    assert line["stream_id"] == "s1"


def test_unsampled_trace_gets_no_exemplar() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    provider = TracerProvider(sampler=ALWAYS_OFF)
    clock = FakeClock()
    factory = TelemetryObserverFactory(
        provider.get_tracer("x"), metrics, structlog.get_logger(), clock=clock
    )
    s = Script(factory(), clock)
    s.start()
    s.tokens(2)
    traceparent = s.observer.traceparent()
    s.observer.finished(s.result())
    assert traceparent is not None
    assert int(traceparent.rsplit("-", 1)[1], 16) & 1 == 0  # propagated, but not sampled
    assert om_exemplars(metrics, "gen_ai_server_time_to_first_token_seconds") == []


def test_stream_ids_are_bound_for_the_stream_lifetime(harness: Harness) -> None:
    s = script(harness)
    s.start(info("bound-1"))
    bound = structlog.contextvars.get_contextvars()
    structlog.get_logger("relay").info("relay.something")
    s.observer.finished(s.result())
    after = structlog.contextvars.get_contextvars()

    trace_hex = f"{context_of(harness.only_span()).trace_id:032x}"
    assert bound["stream_id"] == "bound-1"
    assert bound["trace_id"] == trace_hex
    assert "stream_id" not in after
    (line,) = harness.events("relay.something")
    assert line["stream_id"] == "bound-1"
    assert line["trace_id"] == trace_hex


@pytest.mark.anyio
async def test_child_tasks_inherit_the_stream_ids(harness: Harness) -> None:
    s = script(harness)
    s.start(info("task-1"))

    async def reader() -> None:
        await anyio.lowlevel.checkpoint()
        structlog.get_logger("relay").info("reader.line")

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
    s.observer.finished(s.result())
    (line,) = harness.events("reader.line")
    assert line["stream_id"] == "task-1"
    assert len(line["trace_id"]) == 32


def test_observer_satisfies_the_protocol(harness: Harness) -> None:
    observer: StreamObserver = harness.factory()  # mypy checks the structural match
    assert isinstance(observer, TelemetryObserver)
