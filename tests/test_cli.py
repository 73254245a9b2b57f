"""The ``relay`` command line, run as a user runs it: ``python -m service.cli`` subprocesses.

``relay chat`` talks to a mock + relay stack served in this process; ``relay serve`` and
``relay mock`` are started as processes on free ports and asked for ``/healthz``; ``relay demo``
runs to completion and writes its report.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.mock.scenarios import TOOL_FRAGMENTS, TOOL_INPUT
from tests.support.nginx import free_port
from tests.support.stack import FAST_MOCK, Stack, relay_stack

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 40
_START_TIMEOUT = 30.0
_FIGURES = re.compile(
    r"TTFT (?P<ttft>[\d.]+) ms \| TPOT (?P<tpot>[\d.]+) ms \| ITL p50 [\d.]+ ms p99 [\d.]+ ms "
    r"\| total (?P<total>[\d.]+) ms \| (?P<tokens>\d+) tokens"
)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with relay_stack() as running:
        yield running


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # Start from a clean slate: a developer's own RELAY_* variables must not leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return {**base, **(extra or {})}


def _run(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args),
        cwd=ROOT,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _expected_text(stack: Stack, prompt: str, max_tokens: int) -> str:
    """What the mock generates for the body ``relay chat`` sends (same prompt, same words)."""
    body = {
        "model": "mock-text",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    message = httpx.post(f"{stack.mock_url}/v1/messages", json=body, timeout=30).json()
    return "".join(block["text"] for block in message["content"])


# -- relay chat -------------------------------------------------------------------------------


def test_chat_streams_the_text_then_prints_the_figures(stack: Stack) -> None:
    prompt = "Stream me forty words."
    proc = subprocess.Popen(
        _command("chat", prompt, "--url", stack.relay_url, "--max-tokens", str(TOKENS)),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    reads: list[tuple[float, bytes]] = []
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            reads.append((time.perf_counter(), chunk))
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.communicate()

    output = b"".join(chunk for _, chunk in reads).decode()
    text, _, figures = output.partition("\n\n")
    assert text == _expected_text(stack, prompt, TOKENS)
    match = _FIGURES.search(figures)
    assert match, output
    assert int(match["tokens"]) == TOKENS
    assert 0 < float(match["ttft"]) < float(match["total"])
    assert float(match["tpot"]) > 0
    # The words reached the terminal as they were generated: many separate writes spread
    # over (at least half) the ~39 token gaps, not one burst at the end.
    text_reads = [at for at, chunk in reads if b"TTFT" not in chunk]
    assert len(text_reads) >= 10, len(text_reads)
    assert text_reads[-1] - text_reads[0] > 0.5 * (TOKENS - 1) * FAST_MOCK.tpot_ms / 1000


def test_chat_json_prints_one_object_with_the_client_timings(stack: Stack) -> None:
    prompt = "Measure me."
    result = _run("chat", prompt, "--url", stack.relay_url, "--max-tokens", "12", "--json")

    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["text"] == _expected_text(stack, prompt, 12)
    assert report["stop_reason"] == "max_tokens"
    assert report["tool_calls"] == []
    client = report["client"]
    assert 0 < client["ttfb"] <= client["ttft"] < client["total"]
    assert client["tpot"] > 0
    assert client["content_deltas"] == 12
    assert client["output_tokens"] == 12
    server = report["server"]
    assert server["stream_id"] == report["stream_id"]
    assert server["outcome"] == "completed"
    # Same machine, one monotonic clock: the server's TTFT is inside the client's.
    assert server["server"]["ttft_ms"] / 1000 < client["ttft"]


def test_chat_tool_turn_prints_the_parse_evidence(stack: Stack) -> None:
    result = _run("chat", "Weather?", "--url", stack.relay_url, "--model", "mock-tool_use")

    assert result.returncode == 0, result.stderr
    calls = re.findall(r"^\[tool get_weather\] (.*)$", result.stdout, re.MULTILINE)
    assert len(calls) == 1
    assert json.loads(calls[0]) == TOOL_INPUT
    size = sum(len(f.encode()) for f in TOOL_FRAGMENTS)
    evidence = (
        f"tool_input.parsed tool=get_weather fragments={len(TOOL_FRAGMENTS)} bytes={size} "
        "parse_attempts=1"
    )
    assert evidence in result.stdout
    assert "tool_input.parsed tool=get_time fragments=1 bytes=0 parse_attempts=1" in result.stdout


def test_chat_reports_a_mid_stream_error_and_exits_1(stack: Stack) -> None:
    result = _run("chat", "Fail.", "--url", stack.relay_url, "--scenario", "error_mid_stream")

    assert result.returncode == 1
    assert "relay chat: overloaded_error" in result.stderr
    assert "partial=True" in result.stderr
    assert "Traceback" not in result.stderr


# -- relay serve / relay mock -------------------------------------------------------------------


@contextmanager
def _service(
    args: list[str], env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``relay <args>`` with output to ``log``; SIGTERM (then SIGKILL) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _command(*args), cwd=ROOT, env=_env(env), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        return
    pytest.fail(f"port {port} not healthy within {_START_TIMEOUT} s:\n{log.read_text()}")


def _refuses(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    except httpx.ConnectError:
        return True
    return False


def _turn(relay_port: int) -> httpx.Response:
    body = {
        "model": "mock-text",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return httpx.post(f"http://127.0.0.1:{relay_port}/v1/messages", json=body, timeout=30)


def test_serve_and_mock_take_flags_and_a_flag_beats_its_variable(tmp_path: Path) -> None:
    mock_flag, mock_env, relay_flag, relay_env, dead = (free_port() for _ in range(5))
    mock_log, relay_log = tmp_path / "mock.log", tmp_path / "relay.log"
    relay_vars = {"RELAY_PORT": str(relay_env), "RELAY_UPSTREAM_URL": f"http://127.0.0.1:{dead}"}
    with (
        _service(
            ["mock", "--port", str(mock_flag)], {"RELAY_MOCK_PORT": str(mock_env)}, mock_log
        ) as mock,
        _service(
            ["serve", "--port", str(relay_flag), "--upstream", f"http://127.0.0.1:{mock_flag}"],
            relay_vars,
            relay_log,
        ) as relay,
    ):
        _wait_healthy(mock, mock_flag, mock_log)
        _wait_healthy(relay, relay_flag, relay_log)
        assert _refuses(mock_env)
        assert _refuses(relay_env)
        # The --upstream flag won over RELAY_UPSTREAM_URL (which points at nothing).
        response = _turn(relay_flag)
        assert response.status_code == 200, response.text
        assert response.json()["stop_reason"] == "max_tokens"


def test_serve_and_mock_take_their_variables(tmp_path: Path) -> None:
    mock_port, relay_port = free_port(), free_port()
    mock_log, relay_log = tmp_path / "mock.log", tmp_path / "relay.log"
    mock_vars = {"RELAY_MOCK_PORT": str(mock_port), "RELAY_MOCK_TTFT_MS": "0"}
    relay_vars = {
        "RELAY_PORT": str(relay_port),
        "RELAY_UPSTREAM_URL": f"http://127.0.0.1:{mock_port}",
        "RELAY_API_KEYS": "key-a,key-b",
        "RELAY_LOG_FORMAT": "json",
    }
    with (
        _service(["mock"], mock_vars, mock_log) as mock,
        _service(["serve"], relay_vars, relay_log) as relay,
    ):
        _wait_healthy(mock, mock_port, mock_log)
        _wait_healthy(relay, relay_port, relay_log)
        assert _turn(relay_port).status_code == 401  # RELAY_API_KEYS took effect
        body = {
            "model": "mock-text",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        }
        response = httpx.post(
            f"http://127.0.0.1:{relay_port}/v1/messages",
            json=body,
            headers={"x-api-key": "key-b"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    # RELAY_LOG_FORMAT=json: every line the relay wrote is one JSON object.
    output = relay_log.read_text()
    events = [json.loads(line)["event"] for line in output.splitlines() if line.strip()]
    assert "stream.started" in events, output


@pytest.mark.parametrize(
    ("command", "variable"), [("serve", "RELAY_PORT"), ("mock", "RELAY_MOCK_PORT")]
)
def test_ctrl_c_stops_serve_and_mock_cleanly(tmp_path: Path, command: str, variable: str) -> None:
    # uvicorn shuts down gracefully on SIGINT, then re-raises it as KeyboardInterrupt: the
    # command must absorb it, not end every Ctrl-C with a traceback.
    port = free_port()
    log = tmp_path / f"{command}.log"
    with _service([command], {variable: str(port)}, log) as proc:
        _wait_healthy(proc, port, log)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
    output = log.read_text()
    assert code == 0, output
    assert "Shutting down" in output
    assert "Traceback" not in output, output


@pytest.mark.parametrize(
    ("command", "variable"),
    [("serve", "RELAY_PORT"), ("mock", "RELAY_MOCK_PORT")],
)
def test_a_bad_variable_is_a_configuration_error(command: str, variable: str) -> None:
    result = _run(command, env={variable: "not-a-port"})

    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


# -- relay demo -------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_runs_to_completion_and_writes_its_report(tmp_path: Path) -> None:
    report_dir = tmp_path / "demo"
    result = subprocess.run(
        _command("demo", "--report-dir", str(report_dir), "--think-s", "2"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "tool_input.parsed tool=get_weather" in result.stdout
    report = json.loads((report_dir / "demo.json").read_text())
    assert set(report) == {"text", "tool_use", "reasoning"}
    reasoning = report["reasoning"]
    # The thinking state shows long before the answer: perceived latency < first answer token.
    assert reasoning["ttft_minus_perceived_ms"] >= 0
    assert reasoning["first_text_minus_perceived_ms"] > 1000
    assert reasoning["statement"]
    text, tool = report["text"], report["tool_use"]
    assert text["text"]
    assert text["client"]["content_deltas"] == 60
    assert 0 < text["client"]["ttft"] < text["client"]["total"]
    assert text["server"]["outcome"] == "completed"
    assert [c["name"] for c in tool["tool_calls"]] == ["get_weather", "get_time"]
    assert tool["tool_calls"][0]["input"] == TOOL_INPUT
    assert all(c["parse_attempts"] == 1 for c in tool["tool_calls"])
    # The relay logged its own parse of the same tool input.
    assert "tool_input.parsed" in (report_dir / "relay.log").read_text()
