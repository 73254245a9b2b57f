"""``relay bench sweep``: the smoke run end to end, and the figures computed from raw samples.

Structural assertions only: which arms ran, that every stream arrived whole and every stop
reached the provider, that the files exist. No timing thresholds (the figures of a smoke run
on a loaded CI machine mean nothing).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from service.bench import sweep, transports
from service.bench.figures import key_level, summarise
from service.bench.report import render_markdown
from service.bench.sweep import SweepOptions, run_sweep, smoke_options


@pytest.mark.slow
def test_smoke_sweep_runs_every_step_and_writes_the_results(tmp_path: Path) -> None:
    summary = run_sweep(smoke_options(tmp_path))

    assert summary["unavailable"] == {}
    assert summary["dropped"] == {}
    assert set(summary["arms"]) == {"direct-anthropic", "relay", "relay-nginx"}
    for level in ("1", "4"):
        for name, cell in summary["levels"][level].items():
            assert cell["failed"] == 0, (name, level, cell["errors"])
            assert cell["streams_ok"] >= 2
            assert (cell["count_mismatch"], cell["bytes_mismatch"]) == (0, 0)
            assert cell["n_gaps"] == cell["streams_ok"] * 4  # 5 tokens: 4 gaps a stream
            if name != "direct-anthropic":
                assert cell["added_ttft_p50_ms"] is not None
                assert cell["cpu_ms_per_1000_events"] is not None
    for name, arm in summary["arms"].items():
        assert arm["cancel"]["propagated"] == arm["cancel"]["trials"] == 3, name
        assert not arm["broken"], name
    for name in ("relay", "relay-nginx"):
        idle = summary["arms"][name]["idle"]
        assert idle["opened"] == 8
        assert idle["upstream_closed"] == idle["upstream_seen"] == 8
        assert len(idle["rss_kib"]) == 3
    assert {t["target"] for t in summary["targets"]} >= {"RSS per idle stream"}

    written = json.loads((tmp_path / "sweep.json").read_text())
    assert written["summary"]["meta"]["command"] == "relay bench sweep --smoke"
    assert written["summary"]["meta"]["loadavg_start"]
    page = (tmp_path / "results.md").read_text()
    assert "### Targets" in page
    assert "Smoke run" in page
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- figures from synthetic samples ------------------------------------------------------------


def _batch(arm: str, level: int, ttft: float, gap: float, **extra: Any) -> dict[str, Any]:
    batch = {
        "arm": arm,
        "level": level,
        "round": 0,
        "ok": 10,
        "failed": 0,
        "count_mismatch": 0,
        "bytes_mismatch": 0,
        "events": 1000,
        "wall": 1.0,
        "timed_out": False,
        "ttfts": [ttft] * 10,
        "gaps": [gap] * 90,
        "errors": {},
        "cpu_seconds": 0.5,
    }
    batch.update(extra)
    return batch


def _options(**changes: Any) -> SweepOptions:
    base = SweepOptions(levels=(16, 64, 256), arms=("direct-anthropic", "relay"), tpot_ms=50.0)
    return replace(base, **changes)


def test_added_figures_are_the_arm_minus_its_baseline_at_the_same_level() -> None:
    raw = {
        "batches": [_batch("direct-anthropic", 64, 0.001, 0.050), _batch("relay", 64, 0.004, 0.052)]
    }
    cell = summarise(raw, _options(levels=(64,)))["levels"]["64"]["relay"]
    assert cell["added_ttft_p50_ms"] == pytest.approx(3.0)
    assert cell["added_gap_p99_ms"] == pytest.approx(2.0)
    assert cell["cpu_ms_per_1000_events"] == pytest.approx(500.0)


def test_capacity_stops_at_the_first_level_over_budget_or_with_failures() -> None:
    raw = {
        "batches": [
            _batch("relay", 16, 0.004, 0.052),
            _batch("relay", 64, 0.004, 0.059),
            _batch("relay", 256, 0.004, 0.061),  # 11 ms over the 50 ms schedule: over budget
        ]
    }
    assert summarise(raw, _options())["arms"]["relay"]["capacity"] == 64
    raw["batches"][0]["failed"] = 1
    assert summarise(raw, _options())["arms"]["relay"]["capacity"] is None


def test_cancel_latency_comes_from_the_ledger_and_misses_count_as_not_propagated() -> None:
    trials = [
        {"tag": "a", "stop": 10.0, "closed_at": 10.002},
        {"tag": "b", "stop": 11.0, "closed_at": None, "completed_at": 14.0},
    ]
    raw = {
        "batches": [_batch("relay", 64, 0.004, 0.05)],
        "cancel": {"relay": {"trials": trials, "errors": {}}},
    }
    arm = summarise(raw, _options(levels=(64,)))["arms"]["relay"]
    assert arm["cancel"]["propagated"] == 1
    assert arm["cancel"]["not_propagated"] == 1
    assert arm["cancel_p99_ms"] == pytest.approx(2.0)
    assert arm["broken"]


def test_peer_comparison_names_every_figure_the_relay_loses() -> None:
    names = ("direct-anthropic", "direct-openai", "relay", "litellm", "portkey")
    raw = {
        "batches": [
            _batch("direct-anthropic", 64, 0.001, 0.05),
            _batch("direct-openai", 64, 0.001, 0.05),
            _batch("relay", 64, 0.004, 0.05),
            _batch("litellm", 64, 0.003, 0.05),
            _batch("portkey", 64, 0.009, 0.05),
        ]
    }
    summary = summarise(raw, _options(levels=(64,), arms=names))
    row = summary["targets"][-1]
    assert row["met"] is False
    assert "added TTFT p50 (ms) vs litellm" in row["measured"]
    assert "added TTFT p50 (ms) vs portkey" not in row["measured"]


def test_without_peers_the_comparison_is_not_measured_and_the_page_says_why() -> None:
    raw = {
        "batches": [_batch("relay", 64, 0.004, 0.05)],
        "unavailable": {"litellm": "not installed"},
    }
    summary = summarise(raw, _options(levels=(64,)))
    assert summary["targets"][-1]["met"] is None
    page = render_markdown(summary)
    assert "- litellm: not installed" in page
    assert "not measured" in page


def test_key_level_is_64_or_the_nearest_level_run() -> None:
    assert key_level((1, 16, 64, 256)) == 64
    assert key_level((1, 4)) == 4
    assert key_level((100, 1000)) == 100


def test_both_commands_register_in_a_bench_group() -> None:
    parser = argparse.ArgumentParser(prog="relay bench")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep.add_bench_command(sub)
    transports.add_bench_command(sub)
    args = parser.parse_args(["sweep", "--smoke", "--levels", "1,2", "--arms", "relay"])
    assert args.smoke
    assert args.levels == (1, 2)
    assert parser.parse_args(["transports", "--rounds", "1"]).rounds == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--arms", "no-such-arm"])
