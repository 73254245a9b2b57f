"""``relay capture`` end to end: real processes, the real nginx, artifacts on disk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from service.capture import PATHS, CaptureOptions, register, run_capture

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_capture_reproduces_the_failure_and_both_cures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A shorter turn than the default keeps the suite quick; still ~0.6 s of sending.
    options = CaptureOptions(out_dir=tmp_path, tokens=20, tpot_ms=30, ttft_ms=150)

    assert run_capture(options) == 0

    data = json.loads((tmp_path / "capture.json").read_text())
    paths = data["paths"]
    assert list(paths) == [p.key for p in PATHS]
    verdicts = {key: path["report"]["verdict"] for key, path in paths.items()}
    assert verdicts == {
        "buffering": "buffered",
        "streaming": "streaming",
        "buffering_with_header": "streaming",
        "buffering_identity": "streaming",
    }
    for path in paths.values():
        probe = path["probe"]
        assert len(probe["send_offsets_s"]) == len(probe["arrival_offsets_s"]) == 20
    buffered = paths["buffering"]["probe"]
    # Ordering, no margin needed: the first token reached the client after the last was sent.
    assert buffered["arrival_offsets_s"][0] > buffered["send_offsets_s"][-1]
    assert buffered["content_encoding"] == "gzip"
    assert paths["buffering"]["nginx_access_log"]["gzip"] != "-", "nginx compressed it"
    assert paths["streaming"]["probe"]["content_encoding"] is None
    assert data["meta"]["relay_http10_framing"] == "chunked"
    assert data["meta"]["mock_turn"] == {"tokens": 20, "ttft_ms": 150, "tpot_ms": 30, "seed": 7}

    markdown = (tmp_path / "capture.md").read_text()
    assert "**buffered**" in markdown
    assert markdown.count("**streaming**") == 3
    for setting in ("proxy_buffering off", "X-Accel-Buffering: no", "gzip_types"):
        assert setting in markdown
    assert "relay capture --out" in markdown

    png = (tmp_path / "capture.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 20_000, "a real figure, not an empty canvas"
    assert "capture.md" in capsys.readouterr().out


def test_capture_reports_an_unusable_nginx_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NGINX_BIN", str(tmp_path / "no-nginx"))

    assert run_capture(CaptureOptions(out_dir=tmp_path / "out")) == 4
    assert "NGINX_BIN=" in capsys.readouterr().err
    assert not (tmp_path / "out" / "mock.log").exists(), "no service was started"


def test_a_probe_too_short_to_judge_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_capture(CaptureOptions(out_dir=tmp_path, tokens=2)) == 2
    assert "--tokens" in capsys.readouterr().err


def test_register_adds_relay_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="relay")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["capture", "--out", str(tmp_path), "--tokens", "2"])
    assert (args.tpot_ms, args.ttft_ms, args.seed) == (40.0, 300.0, 7)
    assert Path(args.nginx_dir).name == "nginx"
    assert args.func(args) == 2
    assert "--tokens" in capsys.readouterr().err
