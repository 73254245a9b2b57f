"""``relay bench overhead``: a tiny real run (structure only, no thresholds) and its pieces."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from service.bench.overhead import (
    ARMS,
    BatchResult,
    OverheadOptions,
    add_bench_command,
    arm_order,
    summarise,
)
from service.telemetry.observer import NullObserver
from service.telemetry.setup import Telemetry


def _parser() -> argparse.ArgumentParser:
    """The shape the CLI gives it: ``relay bench overhead ...``."""
    parser = argparse.ArgumentParser(prog="relay")
    groups = parser.add_subparsers(dest="command", required=True)
    bench = groups.add_parser("bench").add_subparsers(dest="bench_command", required=True)
    add_bench_command(bench)
    return parser


def _batch(arm: str, concurrency: int, cpu: float, ttfts: list[float]) -> BatchResult:
    return BatchResult(
        arm=arm, concurrency=concurrency, round=0, streams=len(ttfts), failed=0,
        events=100 * len(ttfts), cpu_seconds=cpu, wall_seconds=1.0, ttfts=ttfts,
        gaps=[0.001] * 10, traceparent_seen=arm == "on",
    )  # fmt: skip


def test_arms_alternate_between_rounds() -> None:
    assert [arm_order(r) for r in range(3)] == [("on", "off"), ("off", "on"), ("on", "off")]


def test_summary_compares_the_arms_per_concurrency() -> None:
    options = OverheadOptions(concurrency=(1, 4))
    batches = [
        _batch("on", 1, 0.3, [0.010, 0.020]),
        _batch("off", 1, 0.2, [0.010, 0.010]),
        _batch("on", 4, 0.6, [0.030] * 4),
        _batch("off", 4, 0.4, [0.020] * 4),
    ]
    report = summarise(options, batches, {"cpus": 2})
    on, off = report.figures[1]["on"], report.figures[1]["off"]
    assert on.cpu_ms_per_stream == 150.0
    assert off.cpu_ms_per_1000_events == 1000.0  # 200 ms over 200 events
    row = report.overhead[1]["cpu_ms_per_stream"]
    assert row == {"on": 150.0, "off": 100.0, "delta": 50.0, "ratio": 1.5}
    assert report.overhead[4]["ttft_p50_ms"]["delta"] == pytest.approx(10.0)
    assert json.loads(json.dumps(report.as_dict()))["overhead"]["4"]


def test_disabled_telemetry_adds_nothing() -> None:
    off = Telemetry.disabled()
    assert off.plugins() == []
    assert isinstance(off.observer_factory(), NullObserver)
    off.shutdown()  # nothing to reap or flush, and no error


def test_parser_takes_the_options() -> None:
    args = _parser().parse_args(
        ["bench", "overhead", "--streams", "3", "--concurrency", "1,4", "--tpot-ms", "0"]
    )
    assert (args.streams, args.concurrency, args.tpot_ms) == (3, (1, 4), 0.0)
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", "overhead", "--concurrency", "0"])


@pytest.mark.slow
def test_a_tiny_run_measures_both_arms(tmp_path: Path) -> None:
    report_path = tmp_path / "overhead.json"
    args = _parser().parse_args(
        ["bench", "overhead", "--streams", "2", "--concurrency", "1,2", "--rounds", "2",
         "--tokens", "20", "--tpot-ms", "0", "--warmup", "1", "--json", str(report_path)]
    )  # fmt: skip
    assert args.func(args) == 0
    report = json.loads(report_path.read_text())
    assert set(report["figures"]) == {"1", "2"}
    for arms in report["figures"].values():
        assert set(arms) == set(ARMS)
        for figures in arms.values():
            assert figures["streams"] == 4  # 2 streams x 2 rounds
            assert figures["failed"] == 0
            assert figures["events"] >= 4 * 20
            assert figures["cpu_seconds"] >= 0
            assert figures["ttft_p50_ms"] > 0
            assert figures["itl_p99_ms"] >= figures["itl_p50_ms"] >= 0
        # The arms really differ: only the telemetry arm answers with a traceparent.
        assert arms["on"]["traceparent_seen"] is True
        assert arms["off"]["traceparent_seen"] is False
    for rows in report["overhead"].values():
        assert set(rows) >= {"cpu_ms_per_1000_events", "ttft_p99_ms", "itl_p99_ms"}
    # Batches alternate the arms within every concurrency level.
    order = [(b["concurrency"], b["arm"]) for b in report["batches"]]
    assert order == [(1, "on"), (1, "off"), (1, "off"), (1, "on"),
                     (2, "on"), (2, "off"), (2, "off"), (2, "on")]  # fmt: skip
