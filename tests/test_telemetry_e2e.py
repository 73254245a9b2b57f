"""Telemetry through the real relay: spans, span events and log lines of real streams.

A relay and the mock provider run under uvicorn on loopback; the relay gets its own
``TracerProvider`` with an ``InMemorySpanExporter`` (and a processor that counts span starts
and ends), so every assertion is about what the relay really exported for a real stream:
a completed text stream, a tool-call stream, a client disconnect, an explicit cancel, an
upstream error (mid-stream, and before the first byte once retries are exhausted) and a
retry. Header capture is switched on for every request and response, so the secret checks
bite: the provider key and the client key travel in headers the instrumentation records.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from service.mock import MockSettings, create_mock_app
from service.mock.scenarios import TOOL_FRAGMENTS
from service.processes import free_port
from service.telemetry.logging import shared_processors
from service.telemetry.metrics import MetricsConfig, RelayMetrics
from service.telemetry.setup import Telemetry
from tests.support.servers import run_uvicorn
from tests.support.stack import Stack, record_stream, relay_stack

PROVIDER_KEY = "sk-secret-provider-5f3a9c1e7b2d4086"
CLIENT_KEY = "relay-client-key-e4b7d2a9c6f13085"
SECRETS = (PROVIDER_KEY, CLIENT_KEY)
AUTH = {"x-api-key": CLIENT_KEY}
MODEL = "claude-e2e-model"
SETTINGS = {
    "upstream_api_key": PROVIDER_KEY,
    "api_keys": frozenset({CLIENT_KEY}),
    "progress_interval": 0.05,
    "retry_base_delay": 0.02,
    "retry_max_delay": 0.05,
    "retry_after_cap": 0.1,
    "retry_max_attempts": 2,
}
# Every header of every request and response becomes a span attribute (after scrubbing).
CAPTURE_ALL = {
    f"OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_{side}_{way}": ".*"
    for side in ("SERVER", "CLIENT")
    for way in ("REQUEST", "RESPONSE")
}
WAIT = 15.0


class SpanLedger(SpanProcessor):
    """Counts every start and end per span id (written from the relay's server thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.starts: Counter[int] = Counter()
        self.ends: Counter[int] = Counter()
        self.trace_of: dict[int, int] = {}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        context = span.get_span_context()
        with self._lock:
            self.starts[context.span_id] += 1
            self.trace_of[context.span_id] = context.trace_id

    def on_end(self, span: ReadableSpan) -> None:
        context = span.get_span_context()
        assert context is not None
        with self._lock:
            self.ends[context.span_id] += 1

    def open_in(self, trace_id: int) -> list[int]:
        """Spans of ``trace_id`` that started and have not ended yet."""
        with self._lock:
            return [
                s
                for s, t in self.trace_of.items()
                if t == trace_id and self.ends[s] < self.starts[s]
            ]

    def counts(self, span_id: int) -> tuple[int, int]:
        with self._lock:
            return self.starts[span_id], self.ends[span_id]


class _Warnings(logging.Handler):
    """Collects the SDK's warnings (a second ``end()`` on a span logs one)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass(frozen=True, slots=True)
class Traced:
    """A running stack whose relay exports spans into memory."""

    stack: Stack
    exporter: InMemorySpanExporter
    ledger: SpanLedger
    sdk_warnings: _Warnings

    @property
    def url(self) -> str:
        return self.stack.relay_url


@dataclass(frozen=True, slots=True)
class StreamTrace:
    """The spans of one stream's trace, once every one of them ended."""

    trace_id: int
    stream: ReadableSpan
    server: ReadableSpan
    upstream: list[ReadableSpan]
    """The httpx client spans (one per upstream attempt), oldest first."""
    spans: list[ReadableSpan]


@pytest.fixture(scope="module")
def traced() -> Iterator[Traced]:
    exporter, ledger, sdk_warnings = InMemorySpanExporter(), SpanLedger(), _Warnings()
    provider = TracerProvider()
    provider.add_span_processor(ledger)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry.from_parts(provider, RelayMetrics(MetricsConfig(process_metrics=False)))
    sdk_logger = logging.getLogger("opentelemetry.sdk.trace")
    sdk_logger.addHandler(sdk_warnings)
    try:
        with pytest.MonkeyPatch.context() as patch:
            # Read when the instrumentation is built: set before the relay starts.
            for name, value in CAPTURE_ALL.items():
                patch.setenv(name, value)
            mock = MockSettings(ttft_ms=30, tpot_ms=3)
            with relay_stack(SETTINGS, mock, telemetry=telemetry) as stack:
                yield Traced(stack, exporter, ledger, sdk_warnings)
    finally:
        sdk_logger.removeHandler(sdk_warnings)


# -- helpers ---------------------------------------------------------------------------------


def body(scenario: str = "text", tokens: int = 30, **options: Any) -> dict[str, Any]:
    """A streaming request for the mock; a fresh attempt key keeps retries per test."""
    return {
        "model": MODEL,
        "max_tokens": max(tokens, 64),
        "stream": True,
        "messages": [{"role": "user", "content": f"telemetry e2e {scenario}"}],
        "mock": {"scenario": scenario, "tokens": tokens, "key": uuid.uuid4().hex, **options},
    }


def ids_from(traceparent: str | None) -> tuple[int, int]:
    """Trace id and span id of a ``traceparent`` header."""
    assert traceparent is not None, "the response carries no traceparent header"
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00"
    assert int(flags, 16) & 1, "the stream's trace is not sampled"
    return int(trace_id, 16), int(span_id, 16)


def wait_for_trace(traced: Traced, traceparent: str | None) -> StreamTrace:
    """The trace of the stream the header names, after all of its spans ended."""
    trace_id, span_id = ids_from(traceparent)
    deadline = time.monotonic() + WAIT
    while True:
        spans = [s for s in traced.exporter.get_finished_spans() if s.context.trace_id == trace_id]
        stream = [s for s in spans if s.context.span_id == span_id]
        server = [s for s in spans if s.kind is SpanKind.SERVER and s.parent is None]
        if stream and server and not traced.ledger.open_in(trace_id):
            break
        assert time.monotonic() < deadline, f"trace {trace_id:032x} did not finish: {spans}"
        time.sleep(0.02)
    upstream = sorted(
        (s for s in spans if s.kind is SpanKind.CLIENT and s.name == "POST"),
        key=lambda s: s.start_time or 0,
    )
    return StreamTrace(trace_id, stream[0], server[0], upstream, spans)


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    """Attributes of the span's events called ``name``, in order."""
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


def event_names(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


def assert_ended_once(traced: Traced, result: StreamTrace) -> None:
    """Every span of the trace started once and ended once; the SDK saw no second end()."""
    for span in result.spans:
        assert traced.ledger.counts(span.context.span_id) == (1, 1), span.name
    assert not [m for m in traced.sdk_warnings.messages if "ended span" in m]


def assert_stream_span(
    span: ReadableSpan, outcome: str, *, message_started: bool = True
) -> dict[str, Any]:
    """The GenAI attributes every stream span has; returns all attributes."""
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    found = attributes(span)
    assert found["gen_ai.operation.name"] == "chat"
    assert found["gen_ai.provider.name"] == "anthropic"
    assert found["gen_ai.request.model"] == MODEL
    assert found["relay.outcome"] == outcome
    if message_started:  # usage arrives with message_start
        assert found["gen_ai.usage.input_tokens"] > 0
    else:
        assert "gen_ai.usage.input_tokens" not in found
    assert span.end_time is not None and span.start_time is not None
    assert span.end_time >= span.start_time
    return found


def assert_not_failed(span: ReadableSpan) -> None:
    assert "error.type" not in attributes(span)
    assert span.status.status_code is StatusCode.UNSET
    assert not events(span, "exception")


def all_text(spans: Sequence[ReadableSpan]) -> str:
    """Every string a backend would store for these spans."""
    parts: list[str] = []
    for span in spans:
        parts += [span.name, str(span.status.description), repr(dict(span.resource.attributes))]
        parts.append(repr(attributes(span)))
        parts += [f"{e.name} {dict(e.attributes or {})!r}" for e in span.events]
        parts += [repr(dict(link.attributes or {})) for link in span.links]
    return "\n".join(parts)


def assert_no_secrets(spans: Sequence[ReadableSpan]) -> None:
    text = all_text(spans)
    for secret in SECRETS:
        assert secret not in text


def read_deltas(lines: Iterator[str], count: int) -> None:
    """Consume SSE lines until ``count`` content deltas went by."""
    seen = 0
    for line in lines:
        seen += line.startswith("event: content_block_delta")
        if seen >= count:
            return
    raise AssertionError(f"the stream ended after {seen} deltas")


def sse_data(raw: bytes, event: str) -> list[dict[str, Any]]:
    """The JSON data of every ``event`` block of a raw SSE body."""
    out = []
    for block in raw.decode().split("\n\n"):
        lines = block.split("\n")
        if f"event: {event}" in lines:
            data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
            out.append(json.loads(data))
    return out


def stream_fully(traced: Traced, request: Mapping[str, Any]) -> tuple[StreamTrace, bytes]:
    recording = record_stream(f"{traced.url}/v1/messages", request, headers=AUTH)
    assert recording.status == 200
    return wait_for_trace(traced, recording.headers.get("traceparent")), recording.body


def stream_then_stop(traced: Traced, request: Mapping[str, Any], *, cancel: bool) -> StreamTrace:
    """Read a few deltas, then cancel explicitly (and read on to the end) or disconnect."""
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{traced.url}/v1/messages", json=dict(request), headers=AUTH)
        as response,
    ):  # fmt: skip
        assert response.status_code == 200
        traceparent = response.headers.get("traceparent")
        stream_id = response.headers["x-relay-stream-id"]
        lines = response.iter_lines()
        read_deltas(lines, 10)
        if cancel:
            answer = client.post(f"{traced.url}/v1/streams/{stream_id}/cancel", headers=AUTH)
            assert answer.status_code == 200
            assert answer.json()["outcome"] == "cancelled"
            assert any('"reason":"cancelled"' in line for line in lines)
    return wait_for_trace(traced, traceparent)


# -- the span tree -----------------------------------------------------------------------------


def test_stream_span_sits_between_the_server_span_and_the_upstream_span(traced: Traced) -> None:
    recording = record_stream(f"{traced.url}/v1/messages", body(), headers=AUTH)
    trace_id, span_id = ids_from(recording.headers.get("traceparent"))
    result = wait_for_trace(traced, recording.headers.get("traceparent"))

    assert result.stream.context.trace_id == trace_id
    assert result.stream.context.span_id == span_id  # the header names the stream span itself
    assert result.server.name == "POST /v1/messages"
    assert attributes(result.server)["http.route"] == "/v1/messages"
    assert result.stream.parent is not None
    assert result.stream.parent.span_id == result.server.context.span_id
    (upstream,) = result.upstream
    assert upstream.parent is not None
    assert upstream.parent.span_id == result.stream.context.span_id
    assert attributes(upstream)["http.status_code"] == 200
    # The httpx span ends at the response headers; the stream span covers the whole body.
    assert result.stream.start_time is not None and upstream.start_time is not None
    assert result.stream.end_time is not None and upstream.end_time is not None
    assert result.stream.start_time <= upstream.start_time
    assert upstream.end_time < result.stream.end_time
    assert {s.context.span_id for s in result.spans} == {
        result.server.context.span_id, result.stream.context.span_id, upstream.context.span_id,
    }  # fmt: skip
    assert_ended_once(traced, result)


def test_no_key_reaches_any_span_although_every_header_is_captured(traced: Traced) -> None:
    result, _ = stream_fully(traced, body())
    # The capture really ran: both keys were in recorded headers, and were masked there.
    assert attributes(result.server)["http.request.header.x_api_key"] == ("[REDACTED]",)
    (upstream,) = result.upstream
    assert attributes(upstream)["http.request.header.x_api_key"] == ("[REDACTED]",)
    # And the provider did get its key (so the mask hid something real).
    sent = traced.stack.upstream.for_stream(attributes(result.stream)["relay.stream_id"])
    assert [e.headers["x-api-key"] for e in sent] == [PROVIDER_KEY]
    assert_no_secrets(traced.exporter.get_finished_spans())


# -- one test per way a stream goes ------------------------------------------------------------


def test_completed_text_stream(traced: Traced) -> None:
    result, raw = stream_fully(traced, body(tokens=30))
    span = result.stream
    found = assert_stream_span(span, "completed")
    assert_not_failed(span)
    assert found["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert found["gen_ai.usage.output_tokens"] == 30
    assert found["relay.content_deltas"] == 30
    assert found["gen_ai.response.model"] == MODEL
    assert found["gen_ai.response.id"].startswith("msg_")
    (first,) = events(span, "gen_ai.first_token")
    assert first["relay.ttft"] > 0
    # The span's TTFT is the one the relay told the client in relay_metrics.
    (relay_metrics,) = sse_data(raw, "relay_metrics")
    assert first["relay.ttft"] * 1000 == pytest.approx(relay_metrics["server"]["ttft_ms"], abs=0.01)
    assert events(span, "gen_ai.content_block.stop") == [{"relay.block.type": "text"}]
    names = event_names(span)
    assert names.index("gen_ai.first_token") < names.index("gen_ai.content_block.stop")
    for absent in ("relay.cancel", "relay.upstream_aborted", "relay.retry"):
        assert absent not in names
    assert_no_secrets(result.spans)
    assert_ended_once(traced, result)


def test_tool_call_stream(traced: Traced) -> None:
    result, _ = stream_fully(traced, body("tool_use"))
    span = result.stream
    found = assert_stream_span(span, "completed")
    assert_not_failed(span)
    assert found["gen_ai.response.finish_reasons"] == ("tool_use",)
    assert found["relay.block_stops"] == 3
    weather_bytes = len("".join(TOOL_FRAGMENTS).encode())
    assert events(span, "gen_ai.content_block.stop") == [
        {"relay.block.type": "text"},
        {"relay.block.type": "tool_use", "gen_ai.tool.name": "get_weather",
         "relay.block.input_bytes": weather_bytes},
        {"relay.block.type": "tool_use", "gen_ai.tool.name": "get_time",
         "relay.block.input_bytes": 0},
    ]  # fmt: skip
    assert len(events(span, "gen_ai.first_token")) == 1
    assert_no_secrets(result.spans)
    assert_ended_once(traced, result)


def test_client_disconnect(traced: Traced) -> None:
    result = stream_then_stop(traced, body(tokens=5000), cancel=False)
    span = result.stream
    found = assert_stream_span(span, "client_disconnected")
    assert_not_failed(span)  # the user's choice, not a failure
    assert "gen_ai.response.finish_reasons" not in found  # the model never finished
    assert found["relay.cancel.reason"] == "client_disconnected"
    assert events(span, "relay.cancel") == [{"relay.cancel.reason": "client_disconnected"}]
    (abort,) = events(span, "relay.upstream_aborted")
    assert abort["relay.abort.reason"] == "client_disconnected"
    assert 10 <= abort["relay.abort.tokens_at_abort"] < 5000
    assert abort["relay.abort.propagation_ms"] >= 0
    names = event_names(span)
    assert names.index("gen_ai.first_token") < names.index("relay.cancel")
    assert names.index("relay.cancel") < names.index("relay.upstream_aborted")
    assert_no_secrets(result.spans)
    assert_ended_once(traced, result)


def test_explicit_cancel(traced: Traced) -> None:
    result = stream_then_stop(traced, body(tokens=5000), cancel=True)
    span = result.stream
    found = assert_stream_span(span, "cancelled")
    assert_not_failed(span)
    assert found["relay.cancel.reason"] == "cancelled"
    assert events(span, "relay.cancel") == [{"relay.cancel.reason": "cancelled"}]
    (abort,) = events(span, "relay.upstream_aborted")
    assert abort["relay.abort.reason"] == "cancelled"
    assert 10 <= abort["relay.abort.tokens_at_abort"] < 5000
    assert abort["relay.abort.propagation_ms"] >= 0
    names = event_names(span)
    assert names.index("relay.cancel") < names.index("relay.upstream_aborted")
    # The cancel request got a server span of its own, named after the route, not the id.
    cancels = [
        s for s in traced.exporter.get_finished_spans()
        if s.name == "POST /v1/streams/{stream_id}/cancel"
    ]  # fmt: skip
    assert cancels
    assert_no_secrets(result.spans)
    assert_ended_once(traced, result)


def test_upstream_error_mid_stream(traced: Traced) -> None:
    result, raw = stream_fully(traced, body("error_mid_stream", tokens=50, fail_after=5))
    span = result.stream
    found = assert_stream_span(span, "upstream_error")
    assert found["error.type"] == "overloaded_error"
    assert span.status.status_code is StatusCode.ERROR
    assert events(span, "exception") == [
        {"exception.type": "overloaded_error", "exception.message": "Overloaded"}
    ]
    assert found["relay.content_deltas"] == 5
    assert not events(span, "relay.retry")  # content was forwarded: never retried
    assert not events(span, "relay.upstream_aborted")  # the provider ended it, not the relay
    names = event_names(span)
    assert names.index("gen_ai.first_token") < names.index("exception")
    (error,) = sse_data(raw, "error")
    assert error["relay"]["partial"] is True
    assert len(result.upstream) == 1
    assert_no_secrets(result.spans)
    assert_ended_once(traced, result)


def test_retry_then_success(traced: Traced) -> None:
    result, _ = stream_fully(traced, body("rate_limited", fail_times=1, retry_after_ms=20))
    span = result.stream
    found = assert_stream_span(span, "completed")
    assert_not_failed(span)
    assert found["relay.retries"] == 1
    (retry,) = events(span, "relay.retry")
    assert retry["relay.retry.attempt"] == 1
    assert retry["relay.retry.reason"] == "status_429"
    assert retry["relay.retry.delay"] >= 0
    names = event_names(span)
    assert names.index("relay.retry") < names.index("gen_ai.first_token")
    # One httpx span per attempt, both children of the stream span.
    assert [attributes(s)["http.status_code"] for s in result.upstream] == [429, 200]
    for upstream in result.upstream:
        assert upstream.parent is not None
        assert upstream.parent.span_id == span.context.span_id
    assert_no_secrets(result.spans)
    assert_ended_once(traced, result)


def test_retries_exhausted_before_the_first_byte(traced: Traced) -> None:
    recording = record_stream(
        f"{traced.url}/v1/messages", body("overloaded", fail_times=10), headers=AUTH
    )
    result = wait_for_trace(traced, recording.headers.get("traceparent"))
    span = result.stream
    found = assert_stream_span(span, "status_529", message_started=False)
    assert found["error.type"] == "overloaded_error"
    assert span.status.status_code is StatusCode.ERROR
    assert [r["relay.retry.reason"] for r in events(span, "relay.retry")] == ["status_529"]
    (exception,) = events(span, "exception")
    assert exception["exception.type"] == "overloaded_error"
    assert not events(span, "gen_ai.first_token")
    assert [attributes(s)["http.status_code"] for s in result.upstream] == [529, 529]
    assert_no_secrets(result.spans)
    assert_ended_once(traced, result)


def test_progress_while_the_model_is_silent(traced: Traced) -> None:
    result, _ = stream_fully(traced, body(tokens=5, ttft_ms=400))
    span = result.stream
    found = assert_stream_span(span, "completed")
    progress = events(span, "relay.progress")
    assert 1 <= len(progress) <= 3  # the first few become events, the rest are counted
    assert found["relay.progress_signals"] >= len(progress)
    assert all(p["relay.progress.elapsed"] > 0 for p in progress)
    assert {p["relay.progress.phase"] for p in progress} <= {
        "connecting", "waiting", "waiting_first_token",
    }  # fmt: skip
    names = event_names(span)
    assert names.index("relay.progress") < names.index("gen_ai.first_token")
    assert_ended_once(traced, result)


# -- log lines carry the stream span's trace id -----------------------------------------------


def _lines(
    logs: Sequence[Mapping[str, Any]], stream_id: str, event: str
) -> list[Mapping[str, Any]]:
    return [e for e in logs if e.get("stream_id") == stream_id and e.get("event") == event]


def test_log_lines_carry_the_stream_span_trace_id(traced: Traced) -> None:
    # The relay's own processors (context merge, trace ids, redaction) in front of the capture.
    with capture_logs(processors=shared_processors()) as logs:
        tool, _ = stream_fully(traced, body("tool_use"))
        cancelled = stream_then_stop(traced, body(tokens=5000), cancel=True)
        dropped = stream_then_stop(traced, body(tokens=5000), cancel=False)
        failed, _ = stream_fully(traced, body("error_mid_stream", tokens=50, fail_after=5))
    expected = [
        (tool, ["stream.started", "tool_input.parsed", "stream.finished"]),
        (cancelled, ["stream.started", "upstream.aborted", "stream.finished"]),
        (dropped, ["stream.started", "upstream.aborted", "stream.finished"]),
        (failed, ["stream.started", "stream.error", "stream.finished"]),
    ]
    for result, names in expected:
        stream_id = attributes(result.stream)["relay.stream_id"]
        trace_id = f"{result.trace_id:032x}"
        for name in names:
            lines = _lines(logs, stream_id, name)
            assert lines, f"{stream_id}: no {name} line"
            for line in lines:
                assert line["trace_id"] == trace_id, (name, line)
                assert line["span_id"] == f"{result.stream.context.span_id:016x}", (name, line)
        (finished,) = _lines(logs, stream_id, "stream.finished")  # one canonical line
        assert finished["outcome"] == attributes(result.stream)["relay.outcome"]
    assert len(_lines(logs, attributes(tool.stream)["relay.stream_id"], "tool_input.parsed")) == 2
    assert PROVIDER_KEY not in repr(logs)
    assert CLIENT_KEY not in repr(logs)


# -- the same, from a real relay process writing JSON lines ------------------------------------


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with run_uvicorn(create_mock_app(MockSettings(ttft_ms=30, tpot_ms=3))) as url:
        yield url


@pytest.fixture
def relay_process(mock_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``relay serve`` as its own process, JSON logs into a file; yields (url, log path)."""
    port = free_port()
    log_path = tmp_path / "relay.log"
    env = {
        **os.environ,
        "RELAY_LOG_FORMAT": "json",
        "RELAY_UPSTREAM_API_KEY": PROVIDER_KEY,
        "RELAY_API_KEYS": CLIENT_KEY,
        **CAPTURE_ALL,
    }
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port),
             "--upstream", mock_url],
            env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, url)
            yield url, log_path
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the relay process exited during startup"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the relay process never became healthy")


def _json_lines(path: Path, expected: int, deadline: float) -> list[dict[str, Any]]:
    """Parsed JSON log lines, once ``expected`` stream.finished lines were written."""
    while True:
        parsed = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
        if sum(p.get("event") == "stream.finished" for p in parsed) >= expected:
            return parsed
        assert time.monotonic() < deadline, "stream.finished lines missing from the log"
        time.sleep(0.05)


@pytest.mark.slow
def test_json_logs_of_a_relay_process_carry_the_trace_id(
    relay_process: tuple[str, Path],
) -> None:
    url, log_path = relay_process
    streams: dict[str, tuple[str, list[str]]] = {}  # stream id -> (trace id, expected lines)

    def remember(response: httpx.Response, names: list[str]) -> None:
        trace_id, _ = ids_from(response.headers.get("traceparent"))
        streams[response.headers["x-relay-stream-id"]] = (f"{trace_id:032x}", names)

    with httpx.Client(timeout=30, headers=AUTH) as client:
        remember(client.post(f"{url}/v1/messages", json=body()), ["stream.started"])
        remember(
            client.post(f"{url}/v1/messages", json=body("tool_use")),
            ["stream.started", "tool_input.parsed"],
        )
        with client.stream("POST", f"{url}/v1/messages", json=body(tokens=5000)) as response:
            read_deltas(response.iter_lines(), 10)
            remember(response, ["stream.started", "upstream.aborted"])
    logs = _json_lines(log_path, len(streams), time.monotonic() + WAIT)
    for stream_id, (trace_id, names) in streams.items():
        for name in [*names, "stream.finished"]:
            lines = _lines(logs, stream_id, name)
            assert lines, f"{stream_id}: no {name} line"
            assert {line["trace_id"] for line in lines} == {trace_id}, name
        assert len(_lines(logs, stream_id, "stream.finished")) == 1
    text = log_path.read_text()
    assert PROVIDER_KEY not in text
    assert CLIENT_KEY not in text
