"""RelayMetrics: exposition formats, exemplars, label bounds, multiprocess mode, and the
reference page runbook/metrics.md kept in step with what /metrics exposes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from service.telemetry.metrics import (
    OTHER,
    UNKNOWN,
    MetricsConfig,
    RelayMetrics,
    clear_multiprocess_dir,
    exemplar_from_traceparent,
    multiprocess_registry,
    render_metrics,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "runbook" / "metrics.md"
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
TRACE = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}


def om_families(text: str) -> list[Metric]:
    return list(om_parse(text))  # type: ignore[no-untyped-call]


def text_families(text: str) -> list[Metric]:
    return list(text_parse(text))


def exercise(metrics: RelayMetrics) -> None:
    """Touch every family once so each exposes its samples (and so its label names)."""
    stream = metrics.stream("anthropic", "claude-x")
    metrics.stream_started()
    stream.first_token(0.5, TRACE)
    stream.upstream_first_token(0.4, TRACE)
    stream.gap(0.02, TRACE)
    stream.tpot(0.02, TRACE)
    stream.first_progress(0.2, TRACE)
    stream.tokens(10, 20, TRACE)
    stream.duration(1.5, "overloaded_error", TRACE)
    metrics.queued_bytes(100)
    metrics.stream_ended("completed")
    metrics.cancellation("cancel_endpoint")
    metrics.upstream_abort("cancel_endpoint", 0.003, TRACE)
    metrics.retry("429")
    metrics.upstream_error("overloaded_error")
    metrics.heartbeat("comment")
    metrics.telemetry_error("delta")
    metrics.observe_client_report(
        0.9,
        0.3,
        provider="anthropic",
        model="claude-x",
        client="python",
        server_ttft=0.5,
        exemplar=TRACE,
    )


def families(metrics: RelayMetrics) -> dict[str, tuple[str, str, frozenset[str]]]:
    """Exposed name -> (type, unit, label names), as a Prometheus query would name them."""
    body, _ = metrics.render("application/openmetrics-text; version=1.0.0")
    out: dict[str, tuple[str, str, frozenset[str]]] = {}
    for family in om_families(body.decode()):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(k for s in family.samples for k in s.labels if k not in {"le"})
        out[name] = (family.type, family.unit, labels)
    return out


def documented() -> dict[str, tuple[str, str, frozenset[str]]]:
    """Rows of the reference page's tables whose first cell is a metric name."""
    rows: dict[str, tuple[str, str, frozenset[str]]] = {}
    for line in REFERENCE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not re.fullmatch(r"`[a-z_:][a-z0-9_:]*`", cells[0]):
            continue
        name, kind, unit, labels, meaning = cells
        assert meaning, f"{name}: no meaning documented"
        assert name.strip("`") not in rows, f"{name} documented twice"
        rows[name.strip("`")] = (kind, unit, frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return rows


def test_reference_page_matches_exposed_families() -> None:
    metrics = RelayMetrics()
    exercise(metrics)
    exposed, docs = families(metrics), documented()
    assert sorted(set(exposed) - set(docs)) == [], "exposed but not in runbook/metrics.md"
    assert sorted(set(docs) - set(exposed)) == [], "in runbook/metrics.md but not exposed"
    for name, (kind, unit, labels) in exposed.items():
        assert docs[name] == (kind, unit, labels), name


def test_openmetrics_negotiation_carries_exemplars() -> None:
    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    metrics.stream("anthropic", "m").first_token(0.7, TRACE)
    body, content_type = metrics.render(PROMETHEUS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    (family,) = [
        f for f in om_families(body.decode())
        if f.name == "gen_ai_server_time_to_first_token_seconds"
    ]  # fmt: skip
    exemplars = [s.exemplar for s in family.samples if s.exemplar is not None]
    assert len(exemplars) == 1
    assert exemplars[0].labels == TRACE
    assert exemplars[0].value == pytest.approx(0.7)
    bucket = next(s for s in family.samples if s.exemplar is not None)
    assert bucket.labels["le"] == "0.75"  # the exemplar sits on the bucket it fell into


@pytest.mark.parametrize("accept", [None, "", "text/plain", "text/plain;version=0.0.4", "*/*"])
def test_plain_text_without_openmetrics_accept(accept: str | None) -> None:
    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    metrics.stream("anthropic", "m").first_token(0.7, TRACE)
    body, content_type = metrics.render(accept)
    assert content_type.startswith("text/plain")
    assert b"# EOF" not in body
    assert b"trace_id" not in body  # the classic format has no exemplars
    names = {f.name for f in text_families(body.decode())}
    assert "gen_ai_server_time_to_first_token_seconds" in names


def test_render_metrics_serialises_any_registry() -> None:
    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    metrics.retry("timeout")
    body, _ = render_metrics(metrics.registry, "text/plain")
    assert b'relay_retries_total{reason="timeout"} 1.0' in body


def test_registries_are_isolated() -> None:
    first, second = RelayMetrics(), RelayMetrics()
    first.retry("429")
    assert first.registry.get_sample_value("relay_retries_total", {"reason": "429"}) == 1
    assert second.registry.get_sample_value("relay_retries_total", {"reason": "429"}) is None


def test_model_label_is_bounded() -> None:
    metrics = RelayMetrics(MetricsConfig(model_label_limit=2, process_metrics=False))
    models = [metrics.stream("anthropic", f"model-{i}").model for i in range(4)]
    assert models == ["model-0", "model-1", OTHER, OTHER]
    assert metrics.stream("anthropic", "model-0").model == "model-0"  # seen ones stay


def test_free_form_labels_are_bounded_and_cleaned() -> None:
    metrics = RelayMetrics(MetricsConfig(label_value_limit=3, process_metrics=False))
    for reason in ["A Reason!", "b", "c", "d", "e", ""]:
        metrics.cancellation(reason)
    body, _ = metrics.render("text/plain")
    reasons = {
        s.labels["reason"]
        for f in text_families(body.decode()) if f.name == "relay_cancellations"
        for s in f.samples if s.name.endswith("_total")
    }  # fmt: skip
    assert reasons == {"a_reason_", "b", "c", OTHER, UNKNOWN}
    long = RelayMetrics(MetricsConfig(label_max_length=8, process_metrics=False))
    assert long.stream("anthropic", "x" * 50).model == "x" * 8


def test_gauges_follow_streams_and_queue() -> None:
    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    metrics.stream_started()
    metrics.stream_started()
    metrics.queued_bytes(500)
    metrics.queued_bytes(-200)
    assert metrics.registry.get_sample_value("relay_streams_in_flight") == 2
    assert metrics.registry.get_sample_value("relay_queued_bytes") == 300
    metrics.stream_ended("completed")
    assert metrics.registry.get_sample_value("relay_streams_in_flight") == 1


def test_client_report_and_last_mile() -> None:
    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    metrics.observe_client_report(
        2.5, 0.4, provider="anthropic", model="m", client="browser", server_ttft=0.5,
        exemplar=TRACE,
    )  # fmt: skip
    metrics.observe_client_report(None, 0.1, provider="anthropic", model="m", client="browser")
    metrics.observe_client_report(None, 0.2, provider="anthropic", model="m")
    browser = {"gen_ai_provider_name": "anthropic", "gen_ai_request_model": "m",
               "client": "browser"}  # fmt: skip
    value = metrics.registry.get_sample_value
    assert value("relay_client_time_to_first_token_seconds_count", browser) == 1
    assert value("relay_client_perceived_latency_seconds_count", browser) == 2
    assert value("relay_client_last_mile_seconds_sum", browser) == pytest.approx(2.0)
    unknown = {**browser, "client": UNKNOWN}
    assert value("relay_client_perceived_latency_seconds_count", unknown) == 1
    exemplars = [
        s.exemplar.labels
        for f in om_families(metrics.render(PROMETHEUS_ACCEPT)[0].decode())
        if f.name == "relay_client_last_mile_seconds"
        for s in f.samples if s.exemplar is not None
    ]  # fmt: skip
    assert exemplars == [TRACE]


def test_client_kinds_are_few() -> None:
    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    for index in range(12):
        metrics.observe_client_report(0.1, None, provider="anthropic", model="m",
                                      client=f"kind-{index}")  # fmt: skip
    kinds = {
        s.labels["client"]
        for f in text_families(metrics.render(None)[0].decode())
        if f.name == "relay_client_time_to_first_token_seconds"
        for s in f.samples
    }  # fmt: skip
    assert len(kinds) == 9
    assert OTHER in kinds


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), 90_000.0])
def test_client_report_rejects_nonsense(bad: float) -> None:
    metrics = RelayMetrics(MetricsConfig(process_metrics=False))
    with pytest.raises(ValueError, match="ttft"):
        metrics.observe_client_report(bad, None, provider="anthropic", model="m")
    with pytest.raises(ValueError, match="perceived"):
        metrics.observe_client_report(None, bad, provider="anthropic", model="m")
    body, _ = metrics.render(None)
    assert b"relay_client_time_to_first_token_seconds_count{" not in body


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (f"00-{TRACE['trace_id']}-{TRACE['span_id']}-01", TRACE),
        (f"00-{TRACE['trace_id']}-{TRACE['span_id']}-03", TRACE),
        (f"00-{TRACE['trace_id']}-{TRACE['span_id']}-00", None),  # not sampled
        (f"00-{'0' * 32}-{TRACE['span_id']}-01", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_exemplar_from_traceparent(
    traceparent: str | None, expected: dict[str, str] | None
) -> None:
    assert exemplar_from_traceparent(traceparent) == expected


WORKER = textwrap.dedent(
    """
    import sys
    from service.telemetry.metrics import RelayMetrics
    metrics = RelayMetrics()
    assert metrics.multiprocess_dir is not None
    metrics.stream_started()
    metrics.stream_started()
    metrics.stream_ended("completed")
    metrics.stream("anthropic", "m").first_token(0.5, {"trace_id": "ab" * 16})
    if sys.argv[1] == "clean":
        metrics.close()
    """
)


def run_worker(directory: Path, mode: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", WORKER, mode], env=env, cwd=ROOT, check=True, timeout=60)


def test_multiprocess_mode_aggregates_workers(tmp_path: Path) -> None:
    run_worker(tmp_path, "crashed")  # exits without close(): its live gauge lingers
    run_worker(tmp_path, "clean")
    registry = multiprocess_registry(tmp_path)
    value = registry.get_sample_value
    assert value("relay_stream_outcomes_total", {"outcome": "completed"}) == 2
    labels = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "anthropic",
              "gen_ai_request_model": "m"}  # fmt: skip
    assert value("gen_ai_server_time_to_first_token_seconds_count", labels) == 2
    # livesum: the cleanly closed worker's in-flight stream is gone, the crashed one's is not.
    assert value("relay_streams_in_flight") == 1
    body, _ = render_metrics(registry, PROMETHEUS_ACCEPT)
    assert b"trace_id" not in body  # exemplars are lost in multiprocess mode
    assert b"process_resident_memory_bytes" not in body  # so are custom collectors
    clear_multiprocess_dir(tmp_path)
    assert list(tmp_path.glob("*.db")) == []


def test_single_process_mode_by_default() -> None:
    metrics = RelayMetrics()
    assert metrics.multiprocess_dir is None
    assert metrics.exposition_registry() is metrics.registry
    metrics.close()  # a no-op outside multiprocess mode
