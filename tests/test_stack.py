"""``relay stack``: the local-process stack starts, serves through both nginx configs, is
scraped by Prometheus with the project's rules, and stops completely on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service import otelcol
from service.prom import RUNBOOK_DIR, free_port

REPO = Path(__file__).resolve().parents[1]
_READY = "stack ready"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class _Output:
    """Collects a child's stdout lines in a thread (so reading never blocks the test)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, marker: str, proc: subprocess.Popen[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            assert proc.poll() is None, f"stack exited with {proc.returncode}:\n{self.text}"
            assert time.monotonic() < deadline, f"no {marker!r} in:\n{self.text}"
            time.sleep(0.1)


def _stream(url: str) -> httpx.Response:
    body = {"model": "mock-text", "max_tokens": 5, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    return httpx.post(f"{url}/v1/messages", json=body, timeout=30)


def _wait_relay_scraped(prometheus: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = httpx.get(
            f"{prometheus}/api/v1/query", params={"query": 'up{job="relay"}'}, timeout=5
        ).json()["data"]["result"]
        if result and result[0]["value"][1] == "1":
            return
        time.sleep(0.25)
    raise AssertionError("Prometheus never scraped the relay")


@pytest.mark.slow
def test_stack_runs_every_local_piece_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    names = ("relay", "mock", "streaming", "buffering", "prometheus", "otlp-grpc", "otlp-http",
             "collector-metrics")  # fmt: skip
    ports = {name: free_port() for name in names}
    args = [f"--{name}-port={port}" for name, port in ports.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.stack", *args, f"--workdir={tmp_path}",
         "--scrape-interval=1s"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    output = _Output(proc)
    try:
        output.wait_for(_READY, proc, timeout=90)
        for name in ("relay", "streaming", "buffering"):
            response = _stream(f"http://127.0.0.1:{ports[name]}")
            assert response.status_code == 200, name
            assert "event: message_stop" in response.text, name
        prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        _wait_relay_scraped(prometheus)
        rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) == 15
        config = httpx.get(f"{prometheus}/api/v1/status/config", timeout=5).json()
        assert f"runbook_base_url: {RUNBOOK_DIR.as_uri()}" in config["data"]["yaml"]
        missing = otelcol.missing_components(otelcol.binary())
        if missing:  # the packaged Collector build: the stack says why it runs without it
            assert "collector: not started" in output.text
            assert "otlp" in output.text
        else:
            assert _accepts(ports["otlp-http"])
        for name in ("relay", "mock", "streaming", "buffering", "prometheus"):
            assert f"http://127.0.0.1:{ports[name]}" in output.text, name
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0, output.text
    assert "stack stopped" in output.text
    still_open = [name for name, port in ports.items() if _accepts(port)]
    assert still_open == [], output.text
    assert (tmp_path / "relay.log").stat().st_size > 0
