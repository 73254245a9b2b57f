"""``relay bench cancel``: a tiny run keeps the harness from rotting (no timing thresholds),
plus the relay-log parsing it depends on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from service.bench.cancel import (
    ARMS,
    CancelBenchOptions,
    _log_fields,
    add_bench_command,
    run_cancel_bench,
)


@pytest.mark.slow
def test_tiny_run_aborts_every_trial_and_measures_both_latencies(tmp_path: Path) -> None:
    options = CancelBenchOptions(trials=5, warmup=1, out_dir=tmp_path)

    assert run_cancel_bench(options) == 0

    data = json.loads((tmp_path / "cancel.json").read_text())
    trials = data["trials"]
    assert len(trials) == 5 * len(ARMS)
    for trial in trials:
        assert trial["mock_state"] == "aborted", trial
        assert trial["end_to_end_ms"] > 0, trial
        assert trial["relay_propagation_ms"] >= 0, trial
        assert trial["tokens_read"] >= options.read_tokens
        expected = "client_disconnected" if trial["stop"] == "disconnect" else "cancelled"
        assert trial["relay_reason"] == expected, trial
    assert len({t["stream_id"] for t in trials}) == len(trials)
    summary = data["summary"]
    assert set(summary) == {f"{route}/{stop}" for route, stop in ARMS}
    assert all(arm["aborted"] == arm["trials"] == 5 for arm in summary.values())
    meta = data["meta"]
    assert meta["nproc"] >= 1
    assert meta["nginx"].startswith("nginx/")
    assert meta["packages"]["uvicorn"]
    markdown = (tmp_path / "cancel.md").read_text()
    assert "relay bench cancel --trials 5" in markdown
    assert markdown.count("| 5/5 |") == len(ARMS)


def test_log_fields_reads_json_lines() -> None:
    line = json.dumps(
        {"event": "upstream.aborted", "stream_id": "rs_1", "propagation_ms": 0.42, "reason": "x"}
    )
    fields = _log_fields(line)
    assert fields["stream_id"] == "rs_1"
    assert fields["propagation_ms"] == 0.42


def test_log_fields_reads_console_lines_with_colours() -> None:
    line = (
        "2026-11-25 00:09:31 [\x1b[32minfo     \x1b[0m] \x1b[1mupstream.aborted\x1b[0m   "
        " \x1b[36mpropagation_ms\x1b[0m=\x1b[35m1.25\x1b[0m \x1b[36mreason\x1b[0m=\x1b[35m"
        "cancelled\x1b[0m \x1b[36mstream_id\x1b[0m=\x1b[35mrs_2\x1b[0m"
    )
    fields = _log_fields(line)
    assert fields["event"] == "upstream.aborted"
    assert fields["stream_id"] == "rs_2"
    assert float(fields["propagation_ms"]) == 1.25
    assert fields["reason"] == "cancelled"


def test_unusable_options_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cancel_bench(CancelBenchOptions(trials=0, out_dir=tmp_path)) == 2
    assert "--trials" in capsys.readouterr().err
    assert not (tmp_path / "cancel.json").exists()


def test_add_bench_command_adds_relay_bench_cancel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="relay")
    bench = parser.add_subparsers(dest="command", required=True).add_parser("bench")
    add_bench_command(bench.add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(["bench", "cancel", "--trials", "0", "--out", str(tmp_path)])
    assert (args.read_tokens, args.warmup) == (5, 3)
    assert args.func(args) == 2
    assert "--trials" in capsys.readouterr().err
