"""Helper processes (mock, relay, nginx, Prometheus, a model server): a free port, start,
wait until ready, stop.

Every tool that starts real processes (``relay demo``, ``stack``, ``capture``, benchmarks,
tests) uses these, so they all stop the same way: polite signals first, each with a grace
period, then SIGKILL to the process group (our children are started in their own session,
so workers die with their master).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

__all__ = [
    "ProcessStartError",
    "free_port",
    "http_ok",
    "log_tail",
    "port_accepts",
    "spawn_service",
    "stop_process",
    "wait_ready",
]

Probe = Callable[[], bool]


class ProcessStartError(RuntimeError):
    """A helper process exited during start-up or was not ready in time."""


def port_accepts(port: int, host: str = "127.0.0.1") -> Probe:
    """Probe: a TCP connect to ``host:port`` succeeds."""

    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return probe


def http_ok(url: str) -> Probe:
    """Probe: ``GET url`` answers 200."""

    def probe() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def log_tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` of a log file, for error messages."""
    if not path.exists():
        return f"(no log at {path})"
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path} ---\n" + "\n".join(tail)


def wait_ready(
    proc: subprocess.Popen[bytes],
    probe: Probe,
    *,
    name: str,
    timeout: float,
    log_path: Path | None = None,
    interval: float = 0.05,
    error: type[Exception] = ProcessStartError,
) -> None:
    """Poll ``probe`` until it is true. Raises ``error`` (with the log's tail) when the process
    exits first or ``timeout`` passes; on a timeout the process is stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(f"{name} exited with {proc.returncode}:\n{_tail(log_path)}")
        if probe():
            return
        time.sleep(interval)
    stop_process(proc)
    raise error(f"{name} was not ready within {timeout:.0f} s:\n{_tail(log_path)}")


def stop_process(
    proc: subprocess.Popen[bytes],
    *,
    signals: Sequence[tuple[signal.Signals, float]] = ((signal.SIGTERM, 5.0),),
) -> None:
    """Send each ``(signal, grace)`` in turn until the process exits, then SIGKILL its
    process group (or the process itself when it shares ours)."""
    for sig, grace in signals:
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    proc.wait(timeout=5.0)


def _tail(path: Path | None) -> str:
    return log_tail(path) if path is not None else "(no log)"


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    raise RuntimeError("no free port")


@contextmanager
def spawn_service(
    args: list[str], env: Mapping[str, str], health_url: str, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``relay <args>`` until the block ends; waits for ``health_url`` to answer."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own console entry point
            [sys.executable, "-m", "service.cli", *args],
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(proc, http_ok(health_url), name=args[0], timeout=30.0, log_path=log_path)
            yield proc
        finally:
            stop_process(proc, signals=((signal.SIGTERM, 10.0),))
