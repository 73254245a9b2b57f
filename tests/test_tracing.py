"""Tracing setup from OTEL_* variables, httpx client spans and Litestar server spans, each
against a real server on loopback."""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest
import structlog
import uvicorn
from litestar import Litestar, get, post
from litestar.params import FromPath
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.telemetry.metrics import MetricsConfig, RelayMetrics
from service.telemetry.observer import StreamInfo
from service.telemetry.tracing import (
    TracingConfigError,
    instrument_httpx_client,
    litestar_otel_plugin,
    relay_tracer,
    setup_tracing,
    shutdown_tracing,
)

SECRET = "sk-ant-api03-supersecretvalue-0123456789"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LoopbackServer:
    """A tiny HTTP server on 127.0.0.1 that records requests and answers 200."""

    received: list[Received] = field(default_factory=list)
    port: int = 0


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    state = LoopbackServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.received.append(Received(self.path, headers, body))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("set-cookie", f"session={SECRET}")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def all_attribute_text(spans: tuple[ReadableSpan, ...]) -> str:
    parts = []
    for span in spans:
        parts.append(repr(dict(span.attributes or {})))
        parts.extend(repr(dict(event.attributes or {})) for event in span.events)
    return "\n".join(parts)


# -- setup_tracing --------------------------------------------------------------------


def test_otlp_export_to_a_real_receiver(loopback: LoopbackServer) -> None:
    provider = setup_tracing(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{loopback.port}",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=relay%20team",
            "OTEL_SERVICE_NAME": "relay-under-test",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci,service.name=ignored",
        }
    )
    relay_tracer(provider).start_span("chat m").end()
    shutdown_tracing(provider)  # flushes the batch processor

    (request,) = loopback.received
    assert request.path == "/v1/traces"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["x-tenant"] == "relay team"
    export = ExportTraceServiceRequest()
    export.ParseFromString(request.body)
    (resource_spans,) = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "relay-under-test"  # OTEL_SERVICE_NAME wins
    assert resource["deployment.environment"] == "ci"
    spans = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert [s.name for s in spans] == ["chat m"]


def test_signal_endpoint_is_used_as_given(loopback: LoopbackServer) -> None:
    provider = setup_tracing(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{loopback.port}/custom"}
    )
    relay_tracer(provider).start_span("x").end()
    shutdown_tracing(provider)
    assert [r.path for r in loopback.received] == ["/custom"]


def test_console_exporter(capfd: pytest.CaptureFixture[str]) -> None:
    provider = setup_tracing({"OTEL_TRACES_EXPORTER": "console"})
    relay_tracer(provider).start_span("console-span").end()
    shutdown_tracing(provider)
    assert '"name": "console-span"' in capfd.readouterr().out


def test_no_endpoint_means_no_exporter_but_real_trace_ids(loopback: LoopbackServer) -> None:
    provider = setup_tracing({})
    span = relay_tracer(provider).start_span("local")
    span.end()
    shutdown_tracing(provider)
    assert span.get_span_context().is_valid  # logs and exemplars still get trace ids
    assert loopback.received == []


def test_sdk_disabled_gives_a_noop_provider() -> None:
    provider = setup_tracing({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    span = relay_tracer(provider).start_span("nothing")
    assert not span.get_span_context().is_valid
    shutdown_tracing(provider)


def test_default_service_name_and_version() -> None:
    provider = setup_tracing({})
    assert isinstance(provider, TracerProvider)
    attributes = provider.resource.attributes
    assert attributes["service.name"] == "llm-stream-relay"
    assert attributes["service.version"]
    other = setup_tracing({}, service_name="other")
    assert isinstance(other, TracerProvider)
    assert other.resource.attributes["service.name"] == "other"


def test_sampler_from_environ() -> None:
    provider = setup_tracing({"OTEL_TRACES_SAMPLER": "always_off"})
    span = relay_tracer(provider).start_span("dropped")
    assert not span.is_recording()
    assert not span.get_span_context().trace_flags.sampled


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "unsupported jaeger"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "unsupported sampler"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "number"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "soon", "OTEL_TRACES_EXPORTER": "console"}, "integer"),
    ],
)
def test_bad_configuration_fails_loudly(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TracingConfigError, match=message):
        setup_tracing(environ)


def test_global_provider_is_left_alone() -> None:
    before = trace.get_tracer_provider()
    setup_tracing({"OTEL_TRACES_EXPORTER": "console"})
    assert trace.get_tracer_provider() is before


# -- httpx ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_httpx_span_is_a_child_of_the_stream_span_and_keys_are_scrubbed(
    loopback: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An operator capturing every header must still never export a key.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", ".*")
    provider, exporter = memory_provider()
    from service.telemetry.stream import TelemetryObserverFactory

    factory = TelemetryObserverFactory(
        relay_tracer(provider),
        RelayMetrics(MetricsConfig(process_metrics=False)),
        structlog.get_logger(),
    )
    observer = factory()
    observer.started(StreamInfo("s1", "m", "anthropic", streaming=True, resumable=False))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{loopback.port}") as client:
        instrument_httpx_client(client, provider)
        with observer.activate():
            response = await client.post(
                "/v1/messages",
                json={"model": "m"},
                headers={"x-api-key": SECRET, "authorization": f"Bearer {SECRET}",
                         "x-request-id": "req-1"},
            )  # fmt: skip
    assert response.status_code == 200
    assert loopback.received[0].headers["x-api-key"] == SECRET  # the provider gets the key
    assert "traceparent" in loopback.received[0].headers

    spans = exporter.get_finished_spans()
    (http_span,) = [s for s in spans if s.kind is SpanKind.CLIENT and s.name == "POST"]
    assert http_span.parent is not None
    stream_context = trace.get_current_span().get_span_context()
    assert not stream_context.is_valid  # activate() restored the previous context
    traceparent = observer.traceparent()
    assert traceparent is not None
    assert http_span.parent.span_id == int(traceparent.split("-")[2], 16)
    attributes = dict(http_span.attributes or {})
    assert attributes["http.request.header.x_request_id"] == ("req-1",)
    assert attributes["http.request.header.x_api_key"] == ("[REDACTED]",)
    assert attributes["http.request.header.authorization"] == ("[REDACTED]",)
    assert attributes["http.response.header.set_cookie"] == ("[REDACTED]",)
    assert SECRET not in all_attribute_text(spans)
    http_context = http_span.get_span_context()
    assert http_context is not None
    assert loopback.received[0].headers["traceparent"].split("-")[2] == (
        f"{http_context.span_id:016x}"
    )


# -- Litestar server spans ------------------------------------------------------------


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", sync_to_thread=False)
def metrics_endpoint() -> str:
    return "# EOF\n"


@post("/v1/streams/{stream_id:str}/cancel", status_code=202, sync_to_thread=False)
def cancel(stream_id: FromPath[str]) -> dict[str, str]:
    return {"cancelled": stream_id}


@pytest.mark.anyio
async def test_litestar_server_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    provider, exporter = memory_provider()
    app = Litestar([healthz, metrics_endpoint, cancel], plugins=[litestar_otel_plugin(provider)])
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    # A listening socket of our own: requests wait in its backlog until uvicorn accepts.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(server.serve, sockets=[sock]))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/metrics")).status_code == 200
                response = await client.post(
                    "/v1/streams/abc123/cancel",
                    headers={"x-api-key": SECRET, "x-request-id": "req-2"},
                )
                assert response.status_code == 202
        finally:
            server.should_exit = True

    spans = exporter.get_finished_spans()
    (span,) = spans  # no spans for /healthz and /metrics, no per-message send/receive spans
    assert span.kind is SpanKind.SERVER
    assert span.name == "POST /v1/streams/{stream_id}/cancel"
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == "/v1/streams/{stream_id}/cancel"
    assert "abc123" not in span.name
    assert attributes["http.request.header.x_request_id"] == ("req-2",)
    assert attributes["http.request.header.x_api_key"] == ("[REDACTED]",)
    assert SECRET not in all_attribute_text(spans)
