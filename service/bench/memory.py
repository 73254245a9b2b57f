"""``relay bench memory``: relay memory against upstream volume, with a slow client.

For each volume a fresh mock and relay run as processes. One client asks for a ``large`` mock
stream of that many MB, reads 4 KiB every 50 ms for ``slow_seconds`` (the relay's queue
fills, backpressure holds the provider), then reads the rest at full speed. Reported: the
relay's resident memory before, and its peak (``VmHWM``) over the stream. Flat growth across
volumes means memory is bounded by the queue, not by the answer's size.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.processes import free_port, spawn_service

__all__ = ["MemoryOptions", "VolumeResult", "add_bench_command", "measure", "run_memory_bench"]

_TOKEN_BYTES = 512
_SLOW_READ = 4096


@dataclass(frozen=True, slots=True)
class MemoryOptions:
    """One ``relay bench memory`` run."""

    volumes_mb: tuple[int, ...] = (10, 25, 50, 100)
    """Upstream text volumes, one fresh relay each."""
    slow_seconds: float = 2.0
    """How long the client reads slowly before draining."""
    max_queued_bytes: int = 256 * 1024
    """``RELAY_MAX_QUEUED_BYTES`` of the relay under test."""
    out: Path = field(default_factory=lambda: Path("artifacts/bench"))
    """Where ``memory.json``, ``memory.md`` and the logs go."""


@dataclass(frozen=True, slots=True)
class VolumeResult:
    """The relay's memory for one upstream volume."""

    volume_mb: int
    bytes_received: int
    rss_before_kib: int
    rss_peak_kib: int

    @property
    def growth_mib(self) -> float:
        """Peak resident memory above the idle relay's."""
        return (self.rss_peak_kib - self.rss_before_kib) / 1024


def _status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/{pid}/status (the memory bench needs Linux)")


def _stream(port: int, body: dict[str, Any], slow_seconds: float) -> int:
    """POST ``body`` over a raw socket; read slowly, then drain. Returns bytes received."""
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    received = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(head + payload)
        slow_until = time.monotonic() + slow_seconds
        while time.monotonic() < slow_until:
            received += len(sock.recv(_SLOW_READ))
            time.sleep(0.05)
        while data := sock.recv(1 << 20):
            received += len(data)
    return received


def _measure_volume(volume_mb: int, options: MemoryOptions) -> VolumeResult:
    mock_port, relay_port = free_port(), free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    env = {"RELAY_LOG_FORMAT": "json", "RELAY_UPSTREAM_URL": mock_url,
           "RELAY_MAX_QUEUED_BYTES": str(options.max_queued_bytes),
           "RELAY_CLIENT_STALL_TIMEOUT": "120"}  # fmt: skip
    tokens = volume_mb * 2**20 // _TOKEN_BYTES
    body = {"model": "mock-text", "max_tokens": tokens, "stream": True,
            "messages": [{"role": "user", "content": "a large answer"}],
            "mock": {"scenario": "large", "tokens": tokens, "token_bytes": _TOKEN_BYTES,
                     "tpot_ms": 0, "ttft_ms": 0}}  # fmt: skip
    warm = {**body, "max_tokens": 5, "mock": {"tokens": 5, "ttft_ms": 0, "tpot_ms": 0}}
    logs = options.out / "memory-logs"
    logs.mkdir(parents=True, exist_ok=True)
    relay_url = f"http://127.0.0.1:{relay_port}"
    with (
        spawn_service(["mock", "--port", str(mock_port)], env, f"{mock_url}/healthz",
                      logs / f"mock-{volume_mb}.log"),
        spawn_service(["serve", "--port", str(relay_port)], env, f"{relay_url}/healthz",
                      logs / f"relay-{volume_mb}.log") as relay,
    ):  # fmt: skip
        _stream(relay_port, warm, 0)  # imports and first-request allocations are not growth
        before = _status_kib(relay.pid, "VmRSS")
        received = _stream(relay_port, body, options.slow_seconds)
        peak = _status_kib(relay.pid, "VmHWM")
    return VolumeResult(volume_mb, received, before, peak)


def measure(options: MemoryOptions) -> list[VolumeResult]:
    """One fresh relay per volume (``VmHWM`` is a per-process peak)."""
    return [_measure_volume(volume, options) for volume in options.volumes_mb]


def render(results: list[VolumeResult], options: MemoryOptions) -> str:
    """Markdown table of the results."""
    lines = [
        f"`relay bench memory` ({time.strftime('%Y-%m-%d %H:%M')} UTC), queue bound "
        f"{options.max_queued_bytes} B, slow phase {options.slow_seconds} s, "
        f"load average {os.getloadavg()[0]:.2f}",
        "",
        "| upstream text | bytes received | relay RSS before | relay peak RSS | peak growth |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.volume_mb} MB | {r.bytes_received} | {r.rss_before_kib / 1024:.1f} MiB "
        f"| {r.rss_peak_kib / 1024:.1f} MiB | {r.growth_mib:.1f} MiB |"
        for r in results
    ]
    return "\n".join(lines) + "\n"


def run_memory_bench(options: MemoryOptions) -> int:
    """Run, print and write the results; exit 0."""
    results = measure(options)
    text = render(results, options)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "memory.md").write_text(text)
    (options.out / "memory.json").write_text(
        json.dumps([{**asdict(r), "growth_mib": r.growth_mib} for r in results], indent=2)
    )
    print(text)
    return 0


def add_bench_command(
    bench_subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """``relay bench memory``."""
    parser = bench_subparsers.add_parser(
        "memory", help="relay peak memory against upstream volume, with a slow client"
    )
    parser.add_argument("--volumes-mb", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    parser.set_defaults(func=_run_from_args)


def _run_from_args(args: argparse.Namespace) -> int:
    return run_memory_bench(
        MemoryOptions(
            volumes_mb=tuple(args.volumes_mb), slow_seconds=args.slow_seconds, out=args.out
        )
    )
