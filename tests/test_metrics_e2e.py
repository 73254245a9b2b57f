"""``GET /metrics`` of a real relay after a mixed load, read the way Prometheus reads it.

One relay (uvicorn on loopback, in-memory span exporter) in front of the mock takes a mix of
streams: completed text and tool-call turns through the Python client (which posts its own
timings to ``/v1/streams/{id}/client-metrics``), a retried one, an explicit cancel, a client
disconnect and a mid-stream upstream error. Then ``/metrics`` is scraped with Prometheus's
``Accept`` header and parsed with ``prometheus_client``'s OpenMetrics parser: every histogram
has observations and an exemplar that leads to a stream span that really finished, the
client-observed TTFT and last-mile histograms hold exactly what the clients reported, and
every family ``runbook/metrics.md`` documents is there.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.client import RelayClient, TurnResult
from service.mock import MockSettings
from service.telemetry.metrics import RelayMetrics
from service.telemetry.setup import Telemetry
from tests.support.stack import Stack, record_stream, relay_stack

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
REFERENCE = Path(__file__).resolve().parents[1] / "runbook" / "metrics.md"
MODEL = "claude-metrics-e2e"
SETTINGS = {
    "progress_interval": 0.05,
    "heartbeat_interval": 0.05,
    "retry_base_delay": 0.02,
    "retry_max_delay": 0.05,
    "retry_after_cap": 0.1,
}
WAIT = 15.0


@dataclass(frozen=True, slots=True)
class Family:
    """One parsed metric family."""

    name: str
    """As Prometheus would query it (counters with ``_total``)."""
    type: str
    samples: list[Sample]


@dataclass(frozen=True, slots=True)
class Scrape:
    """The relay after the mixed load, and what ``/metrics`` said about it."""

    stack: Stack
    families: dict[str, Family]
    content_type: str
    stream_spans: dict[str, ReadableSpan]
    """Finished stream spans by trace id (32 hex)."""
    client_turns: list[TurnResult]
    """Turns streamed by the Python client (each posted a client report)."""
    outcomes: dict[str, int]
    """Streams of the load by expected outcome."""


def body(scenario: str = "text", tokens: int = 20, **options: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max(tokens, 64),
        "stream": True,
        "messages": [{"role": "user", "content": f"metrics e2e {scenario}"}],
        "mock": {"scenario": scenario, "tokens": tokens, "key": uuid.uuid4().hex, **options},
    }


async def _client_turns(url: str) -> list[TurnResult]:
    turns = []
    async with RelayClient(url, max_turn_retries=0) as client:
        for request in (
            body(),
            body(ttft_ms=300),  # silent long enough for progress signals and heartbeats
            body("tool_use"),
            body("rate_limited", fail_times=1, retry_after_ms=20),  # one retry, then fine
        ):
            turns.append(await client.stream_turn(request))
    return turns


def _stop_midway(url: str, *, cancel: bool) -> str:
    """A long stream read for a while, then cancelled explicitly or dropped by the client."""
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{url}/v1/messages", json=body(tokens=5000)) as response,
    ):
        stream_id = response.headers["x-relay-stream-id"]
        # Keep a reference: a dropped line iterator is finalised, and that closes the socket.
        lines = response.iter_lines()
        deltas = 0
        for line in lines:
            deltas += line.startswith("event: content_block_delta")
            if deltas >= 10:
                break
        if cancel:
            answer = client.post(f"{url}/v1/streams/{stream_id}/cancel")
            assert answer.json()["outcome"] == "cancelled"
            assert any('"reason":"cancelled"' in line for line in lines)  # read on to the end
    return stream_id


def _wait_for_stream_spans(exporter: InMemorySpanExporter, count: int) -> dict[str, ReadableSpan]:
    deadline = time.monotonic() + WAIT
    while True:
        spans = {
            f"{s.context.trace_id:032x}": s
            for s in exporter.get_finished_spans()
            if s.name == f"chat {MODEL}"
        }
        if len(spans) >= count:
            return spans
        assert time.monotonic() < deadline, f"only {len(spans)} of {count} stream spans ended"
        time.sleep(0.02)


def _families(text: str) -> dict[str, Family]:
    out = {}
    for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = Family(name, family.type, list(family.samples))
    return out


@pytest.fixture(scope="module")
def scrape() -> Iterator[Scrape]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry.from_parts(provider, RelayMetrics())
    with relay_stack(SETTINGS, MockSettings(ttft_ms=30, tpot_ms=3), telemetry=telemetry) as stack:
        url = stack.relay_url
        turns = anyio.run(_client_turns, url)
        _stop_midway(url, cancel=True)
        _stop_midway(url, cancel=False)
        failed = record_stream(f"{url}/v1/messages", body("error_mid_stream", fail_after=5))
        assert b'"reason":"upstream_error"' in failed.body
        outcomes = {"completed": len(turns), "cancelled": 1, "client_disconnected": 1,
                    "upstream_error": 1}  # fmt: skip
        spans = _wait_for_stream_spans(exporter, sum(outcomes.values()))
        response = httpx.get(f"{url}/metrics", headers={"accept": PROMETHEUS_ACCEPT})
        assert response.status_code == 200
        yield Scrape(
            stack=stack,
            families=_families(response.text),
            content_type=response.headers["content-type"],
            stream_spans=spans,
            client_turns=turns,
            outcomes=outcomes,
        )


def _value(family: Family, suffix: str = "", **labels: str) -> float:
    """Sum of the family's samples named ``<name><suffix>`` whose labels include ``labels``."""
    base = family.name.removesuffix("_total") if family.type == "counter" else family.name
    wanted = base + (suffix or ("_total" if family.type == "counter" else ""))
    return sum(
        s.value for s in family.samples
        if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items())
    )  # fmt: skip


# -- histograms and exemplars ------------------------------------------------------------------


def test_answered_in_openmetrics(scrape: Scrape) -> None:
    assert scrape.content_type.startswith("application/openmetrics-text")


def test_every_histogram_has_observations_and_an_exemplar_of_a_finished_span(
    scrape: Scrape,
) -> None:
    histograms = {n: f for n, f in scrape.families.items() if f.type == "histogram"}
    documented = {n for n, kind in _documented().items() if kind == "histogram"}
    assert set(histograms) == documented
    for name, family in histograms.items():
        assert _value(family, "_count") > 0, f"{name}: no observations"
        exemplars = [s.exemplar for s in family.samples if s.exemplar is not None]
        assert exemplars, f"{name}: no exemplar"
        for exemplar in exemplars:
            span = scrape.stream_spans.get(exemplar.labels["trace_id"])
            assert span is not None, f"{name}: exemplar {exemplar.labels} leads to no stream span"
            assert exemplar.labels["span_id"] == f"{span.context.span_id:016x}", name


def test_stream_histograms_count_every_stream(scrape: Scrape) -> None:
    families = scrape.families
    streams = sum(scrape.outcomes.values())
    # Every stream here got a first token and ended, so each has a TTFT and a duration.
    assert _value(families["gen_ai_server_time_to_first_token_seconds"], "_count") == streams
    duration = families["gen_ai_server_request_duration_seconds"]
    assert _value(duration, "_count") == streams
    assert _value(duration, "_count", error_type="") == streams - 1
    assert _value(duration, "_count", error_type="overloaded_error") == 1
    assert _value(families["relay_upstream_abort_latency_seconds"], "_count") == 2
    tokens = families["gen_ai_client_token_usage"]
    assert _value(tokens, "_count", gen_ai_token_type="input") == streams


def test_client_reports_land_once_each_in_client_ttft_and_last_mile(scrape: Scrape) -> None:
    turns = scrape.client_turns
    reported = [t.timings.ttft for t in turns]
    assert all(v is not None for v in reported)
    client_ttft = scrape.families["relay_client_time_to_first_token_seconds"]
    last_mile = scrape.families["relay_client_last_mile_seconds"]
    perceived = scrape.families["relay_client_perceived_latency_seconds"]
    # One report per turn, recorded once.
    assert _value(client_ttft, "_count", client="python") == len(turns)
    assert _value(last_mile, "_count", client="python") == len(turns)
    assert _value(perceived, "_count", client="python") == len(turns)
    # The histogram holds what the clients measured (sent in ms, rounded to the microsecond).
    expected = sum(v for v in reported if v is not None)
    assert _value(client_ttft, "_sum") == pytest.approx(expected, abs=1e-5 * len(turns))
    # Last mile = client TTFT - relay TTFT of the same stream (the relay's figure as it told
    # the client in relay_metrics), clamped at zero.
    gaps = []
    for turn in turns:
        assert turn.server_metrics is not None and turn.timings.ttft is not None
        server_ttft = turn.server_metrics["server"]["ttft_ms"] / 1000
        gaps.append(max(0.0, turn.timings.ttft - server_ttft))
    assert _value(last_mile, "_sum") == pytest.approx(sum(gaps), abs=1e-4 * len(turns))


# -- counters and gauges -----------------------------------------------------------------------


def test_outcomes_cancellations_retries_and_errors_are_counted(scrape: Scrape) -> None:
    families = scrape.families
    outcomes = families["relay_stream_outcomes_total"]
    for outcome, count in scrape.outcomes.items():
        assert _value(outcomes, outcome=outcome) == count, outcome
    cancellations = families["relay_cancellations_total"]
    assert _value(cancellations, reason="cancelled") == 1
    assert _value(cancellations, reason="client_disconnected") == 1
    aborts = families["relay_upstream_aborts_total"]
    assert _value(aborts, reason="cancelled") == 1
    assert _value(aborts, reason="client_disconnected") == 1
    assert _value(families["relay_retries_total"], reason="status_429") == 1
    assert _value(families["relay_upstream_errors_total"], error_type="overloaded_error") == 1
    assert _value(families["relay_heartbeats_total"], kind="comment") >= 1
    assert _value(families["relay_telemetry_errors_total"]) == 0


def test_gauges_are_back_to_zero_after_the_load(scrape: Scrape) -> None:
    assert _value(scrape.families["relay_streams_in_flight"]) == 0
    assert _value(scrape.families["relay_queued_bytes"]) == 0


# -- the reference page ------------------------------------------------------------------------


def _documented() -> dict[str, str]:
    """Metric name -> type, from the tables of the reference page."""
    names = {}
    for line in REFERENCE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`[a-z_:][a-z0-9_:]*`", cells[0]):
            names[cells[0].strip("`")] = cells[1]
    return names


def test_every_documented_family_is_exposed_by_the_real_relay(scrape: Scrape) -> None:
    documented = set(_documented())
    assert len(documented) >= 20  # the page parsed: both tables' rows were found
    assert sorted(documented - set(scrape.families)) == []
    relay_families = {n for n in scrape.families if n.startswith(("relay_", "gen_ai_"))}
    assert sorted(relay_families - documented) == [], "exposed but not in runbook/metrics.md"
