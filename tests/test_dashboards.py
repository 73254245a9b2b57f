"""Dashboards as code: the committed JSON is what the generator makes, every panel query
parses and names real metrics, and against a real Prometheus scraping a relay under a mixed
load every panel query returns data."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
import yaml

from service.client import RelayClient, RelayStreamError
from service.dashboards import DASHBOARDS, DASHBOARDS_DIR, check, register, render, write
from service.mock import MockSettings
from service.prom import ALERT_RULES, binary, render_config, run_prometheus
from service.telemetry.metrics import RelayMetrics
from tests.support.stack import relay_stack

# How Grafana fills the variables, with values that make sense for a minutes-long test.
VARIABLES = {"$__rate_interval": "1m", "$__range": "1m", "$__interval": "15s", "$model": ".*"}
PROVISIONING = DASHBOARDS_DIR / "provisioning"


def _dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads((DASHBOARDS_DIR / name).read_text()) for name in DASHBOARDS}


def _panels() -> list[dict[str, Any]]:
    return [p for d in _dashboards().values() for p in d["panels"] if p["type"] != "row"]


def _queries() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL with variables substituted) for every target."""
    out = []
    for panel in _panels():
        for target in panel["targets"]:
            out.append((f"{panel['title']} / {target['refId']}", substitute(target["expr"])))
    return out


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


# --- generator and check mode ------------------------------------------------------------


def test_committed_dashboards_are_fresh() -> None:
    assert check() == [], "run `relay dashboards` and commit dashboards/*.json"


def test_generation_is_deterministic() -> None:
    assert render() == render()


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dashboards", *argv])
    code: int = args.func(args)
    return code


def test_check_mode_fails_on_stale_or_missing_files(tmp_path: Path) -> None:
    assert _cli("--check", "--dir", str(tmp_path)) == 1  # nothing generated yet
    assert _cli("--dir", str(tmp_path)) == 0
    assert _cli("--check", "--dir", str(tmp_path)) == 0
    name = next(iter(DASHBOARDS))
    path = tmp_path / name
    path.write_text(path.read_text().replace("TTFT", "TTFB", 1))
    assert check(tmp_path) == [name]
    assert _cli("--check", "--dir", str(tmp_path)) == 1
    write(tmp_path)
    assert check(tmp_path) == []


# --- JSON shape --------------------------------------------------------------------------


def test_dashboards_are_valid_grafana_json() -> None:
    for name, board in _dashboards().items():
        assert board["uid"] and board["title"], name
        assert board["templating"]["list"][0]["type"] == "datasource"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["description"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)) and all(refs), panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"])


def test_dashboard_has_the_panels_on_call_needs() -> None:
    titles = " | ".join(p["title"] for p in _panels()).lower()
    for needed in (
        "ttft (relay)",
        "ttft heatmap",
        "tpot",
        "tpot heatmap",
        "inter-token latency",
        "itl heatmap",
        "slo attainment",
        "client vs relay",
        "streams in flight",
        "queued bytes",
        "outcome",
        "cancellations",
        "upstream aborts",
        "retries",
        "errors by type",
        "heartbeats",
    ):
        assert needed in titles, needed
    heatmaps = [p for p in _panels() if p["type"] == "heatmap"]
    assert len(heatmaps) == 3
    assert all(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])


def _known_series() -> set[str]:
    names = set()
    for family in RelayMetrics().registry.collect():
        kind, name = family.type, family.name
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif kind == "counter":
            names.add(f"{name}_total")
        else:
            names.add(name)
    rules = yaml.safe_load(ALERT_RULES.read_text())
    names |= {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    return names


_SERIES = re.compile(r"\b((?:relay|gen_ai|process|python)[a-z0-9_:]*[a-z0-9])\b")


def test_panel_queries_name_only_metrics_the_relay_exposes() -> None:
    known = _known_series()
    labels = {"gen_ai_request_model", "gen_ai_token_type"}
    for where, expr in _queries():
        used = set(_SERIES.findall(expr)) - labels
        if re.fullmatch(r"vector\([0-9.]+\)", expr):
            continue  # a constant line (the SLO objective)
        assert used, f"{where}: no relay metric in {expr}"
        assert used <= known, f"{where}: unknown {sorted(used - known)}"


def test_every_panel_query_parses(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule) exactly as Prometheus would."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(_queries())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_provisioning_points_grafana_at_the_dashboards_and_datasources() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yaml").read_text())
    by_uid = {d["uid"]: d for d in datasources["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["tempo"]["type"] == "tempo"
    exemplars = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert exemplars == [{"name": "trace_id", "datasourceUid": "tempo"}]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# --- a real Prometheus -------------------------------------------------------------------

_TEXT = {"model": "mock-text", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
_ROUND_OUTCOMES = 6


async def _mixed_round(relay_url: str) -> None:
    """Completed, tool, retried, failed and cancelled streams; clients report timings."""
    async with RelayClient(relay_url, max_turn_retries=0) as client:
        await client.stream_turn(_TEXT)
        await client.stream_turn({**_TEXT, "model": "mock-tool_use", "max_tokens": 200})
        await client.stream_turn(
            {**_TEXT, "model": "mock-rate_limited", "mock": {"retry_after_ms": 50}}
        )
        await client.stream_turn({**_TEXT, "max_tokens": 40})
        with pytest.raises(RelayStreamError):
            await client.stream_turn(
                {**_TEXT, "model": "mock-error_mid_stream", "mock": {"fail_after": 3}}
            )
        with anyio.move_on_after(0.5):  # the client cancels: relay cancels the upstream
            await client.stream_turn({**_TEXT, "max_tokens": 400})


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _wait_for_value(url: str, expr: str, expected: float, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    values: list[float] = []
    while time.monotonic() < deadline:
        values = [float(s["value"][1]) for s in _query(url, expr)]
        if values == [expected]:
            return
        time.sleep(0.25)
    raise AssertionError(f"{expr}: {values}, expected {expected}")


def _problem(url: str, expr: str) -> str | None:
    """Why a query's result would leave its panel empty, or None when it has data."""
    try:
        result = _query(url, expr)
    except AssertionError as exc:
        return str(exc)
    if not result:
        return "no series"
    values = [float(s["value"][1]) for s in result]
    if not any(math.isfinite(v) for v in values):
        return f"only NaN/Inf values: {values}"
    return None


@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_real_prometheus(tmp_path: Path) -> None:
    settings = {"heartbeat_interval": 0.05}  # heartbeats while the mock "thinks"
    with relay_stack(settings, MockSettings(ttft_ms=120.0, tpot_ms=5.0)) as stack:
        relay = urlsplit(stack.relay_url).netloc
        config = render_config({"relay": [relay]}, scrape_interval="1s", evaluation_interval="1s")
        with run_prometheus(config, workdir=tmp_path / "prometheus") as prom:
            _wait_for_value(prom.url, 'up{job="relay"}', 1)
            # Two rounds with a scrape between them: a counter first seen at its final
            # value has no rate, so every series must grow while Prometheus watches.
            for round_ in (1, 2):
                anyio.run(_mixed_round, stack.relay_url)
                _wait_for_value(
                    prom.url, "sum(relay_stream_outcomes_total)", _ROUND_OUTCOMES * round_
                )
            queries = _queries()
            deadline = time.monotonic() + 15  # recording rules evaluate every second
            while True:
                problems = {w: p for w, e in queries if (p := _problem(prom.url, e))}
                if not problems or time.monotonic() > deadline:
                    break
                time.sleep(1)
    assert problems == {}, "\n".join(f"{w}: {p}" for w, p in problems.items())
    assert len(queries) >= 40
