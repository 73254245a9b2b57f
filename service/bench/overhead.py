"""``relay bench overhead``: what telemetry costs a relayed stream.

Starts the mock provider in fast mode and two relays in front of it, each its own process:
arm ``on`` with the full telemetry (stream span, Litestar server spans, httpx client spans,
Prometheus histograms with exemplars, the canonical log line) and arm ``off`` with
:meth:`Telemetry.disabled` (no tracing plugin, a ``NullObserver`` per stream). Both log JSON
lines at the same level to ``/dev/null``, so the log lines every stream writes anyway are in
both arms. For each concurrency, batches of streams go to the arms in alternating order
(on/off, off/on, ...) so a change in machine load hits both arms alike.

Per arm and concurrency it reports relay-side CPU time (the relay process's user + system
time over the batch, from ``/proc``, Linux only) per stream and per 1000 SSE events, and the
latency a client sees: TTFT (request sent to first content delta) and the gap between
consecutive content deltas, p50 and p99. The overhead is ``on - off`` and ``on / off``.
Figures from a shared or loaded machine are noisy: run more rounds, and say so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import httpx

from service.measure import percentile
from service.processes import http_ok, stop_process, wait_ready
from service.sse import SSEDecoder

__all__ = [
    "ARMS",
    "ArmFigures",
    "BatchResult",
    "OverheadOptions",
    "OverheadReport",
    "add_bench_command",
    "arm_order",
    "measure_overhead",
    "run_overhead_bench",
    "serve_arm",
    "summarise",
]

ARMS: Final = ("on", "off")
"""Telemetry on (the full :class:`~service.telemetry.setup.Telemetry`) and off (disabled)."""

_HEADERS: Final = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
_SETTLE: Final = 0.1  # let the relay finish its bookkeeping before reading its CPU time
_STARTUP_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class OverheadOptions:
    """What to run."""

    streams: int = 40
    """Streams per batch (one batch = one arm, one concurrency, one round)."""
    concurrency: tuple[int, ...] = (1, 8, 32)
    """Concurrent streams levels, each measured separately."""
    rounds: int = 3
    """Batches per arm and concurrency; the arms alternate between rounds."""
    tokens: int = 500
    """Content deltas per stream."""
    tpot_ms: float = 1.0
    """Mock time between tokens (0 sends them as fast as the mock can)."""
    ttft_ms: float = 0.0
    """Mock time to the first token."""
    warmup_streams: int = 5
    """Unmeasured streams per arm before the first batch (imports, pools, caches)."""
    log_level: str = "info"
    """Log level of both relays (JSON lines to ``/dev/null``)."""
    json_path: str | None = None
    """Where to write the report as JSON (``None``: print only)."""


@dataclass(slots=True)
class _Sample:
    """One stream as the client saw it."""

    ok: bool
    events: int = 0
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    traceparent: bool = False


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One batch of streams through one arm."""

    arm: str
    concurrency: int
    round: int
    streams: int
    failed: int
    events: int
    cpu_seconds: float
    wall_seconds: float
    ttfts: list[float]
    gaps: list[float]
    traceparent_seen: bool


@dataclass(frozen=True, slots=True)
class ArmFigures:
    """One arm at one concurrency, all its batches together."""

    streams: int
    failed: int
    events: int
    cpu_seconds: float
    cpu_ms_per_stream: float | None
    cpu_ms_per_1000_events: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    traceparent_seen: bool


@dataclass(frozen=True, slots=True)
class OverheadReport:
    """Everything measured: options, machine, per-arm figures, the overhead, raw batches."""

    options: OverheadOptions
    machine: dict[str, Any]
    figures: dict[int, dict[str, ArmFigures]]
    """concurrency -> arm -> figures."""
    overhead: dict[int, dict[str, dict[str, float | None]]]
    """concurrency -> figure name -> ``on``, ``off``, ``delta`` (on - off), ``ratio``."""
    batches: list[BatchResult]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the per-event lists of the batches are left out)."""
        return {
            "options": asdict(self.options),
            "machine": self.machine,
            "figures": {
                str(c): {a: asdict(f) for a, f in arms.items()} for c, arms in self.figures.items()
            },
            "overhead": {str(c): rows for c, rows in self.overhead.items()},
            "batches": [
                {k: v for k, v in asdict(b).items() if k not in ("ttfts", "gaps")}
                for b in self.batches
            ],
        }


# -- the relay of one arm (runs in its own process) --------------------------------------------


def serve_arm(arm: str, port: int, upstream_url: str, log_level: str = "info") -> None:
    """Serve a relay with telemetry ``on`` or ``off`` until SIGTERM (JSON logs on stderr)."""
    import uvicorn

    from service.app import create_app
    from service.config import Settings
    from service.server import RelayServer
    from service.telemetry.logging import configure_logging
    from service.telemetry.setup import Telemetry

    settings = Settings.from_environ(
        {}, port=port, upstream_url=upstream_url, log_format="json", log_level=log_level
    )
    configure_logging("json", log_level)
    telemetry = Telemetry.from_environ(os.environ) if arm == "on" else Telemetry.disabled()
    app = create_app(settings, telemetry=telemetry)
    config = uvicorn.Config(
        app, host=settings.host, port=port, log_config=None, access_log=False, lifespan="on"
    )
    RelayServer(config, app.state["relay"]).run()


# -- processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    from service.processes import free_port

    return free_port()


@contextmanager
def _process(argv: list[str], env: dict[str, str], url: str, log: Path) -> Iterator[int]:
    """Run ``python <argv>`` until the block ends; yields its pid once ``url/healthz`` answers."""
    with log.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own modules, no shell
            [sys.executable, *argv], env={**os.environ, **env},
            stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
        try:
            wait_ready(
                proc,
                http_ok(f"{url}/healthz"),
                name=url,
                timeout=_STARTUP_TIMEOUT,
                log_path=log,
                interval=0.1,
            )
            yield proc.pid
        finally:
            stop_process(proc, signals=((signal.SIGTERM, 15.0),))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from ``/proc/<pid>/stat``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        raise RuntimeError(f"no /proc/{pid}/stat: the overhead bench needs Linux") from None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


# -- the client side ---------------------------------------------------------------------------


def _request_body(options: OverheadOptions) -> bytes:
    mock = {"tokens": options.tokens, "tpot_ms": options.tpot_ms, "ttft_ms": options.ttft_ms,
            "jitter": 0}  # fmt: skip
    body = {
        "model": "mock-text",
        "max_tokens": options.tokens,
        "stream": True,
        "messages": [{"role": "user", "content": "overhead benchmark"}],
        "mock": mock,
    }
    return json.dumps(body).encode()


async def _one_stream(client: httpx.AsyncClient, url: str, body: bytes) -> _Sample:
    decoder = SSEDecoder()
    arrivals: list[float] = []
    events, completed = 0, False
    start = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/messages", content=body, headers=_HEADERS) as r:
        if r.status_code != 200:
            await r.aread()
            return _Sample(ok=False)
        async for chunk in r.aiter_raw():
            now = time.perf_counter()
            for event in decoder.feed(chunk):
                events += 1
                if event.event == "content_block_delta":
                    arrivals.append(now)
                elif event.event == "relay_metrics":
                    completed = json.loads(event.data).get("outcome") == "completed"
        traceparent = "traceparent" in r.headers
    if not arrivals:
        return _Sample(ok=False, events=events, traceparent=traceparent)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return _Sample(completed, events, arrivals[0] - start, gaps, traceparent)


async def _stream_batch(
    client: httpx.AsyncClient, url: str, body: bytes, streams: int, concurrency: int
) -> list[_Sample]:
    samples: list[_Sample] = []
    limiter = anyio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            try:
                samples.append(await _one_stream(client, url, body))
            except httpx.HTTPError:
                samples.append(_Sample(ok=False))

    async with anyio.create_task_group() as tg:
        for _ in range(streams):
            tg.start_soon(one)
    return samples


async def _batch(
    client: httpx.AsyncClient, arm: str, url: str, pid: int, body: bytes,
    options: OverheadOptions, concurrency: int, round_: int,
) -> BatchResult:  # fmt: skip
    cpu_before, wall_before = _cpu_seconds(pid), time.perf_counter()
    samples = await _stream_batch(client, url, body, options.streams, concurrency)
    wall = time.perf_counter() - wall_before
    await anyio.sleep(_SETTLE)
    cpu = _cpu_seconds(pid) - cpu_before
    good = [s for s in samples if s.ok]
    return BatchResult(
        arm=arm, concurrency=concurrency, round=round_, streams=len(samples),
        failed=len(samples) - len(good), events=sum(s.events for s in samples),
        cpu_seconds=cpu, wall_seconds=wall,
        ttfts=[s.ttft for s in good if s.ttft is not None],
        gaps=[g for s in good for g in s.gaps],
        traceparent_seen=any(s.traceparent for s in samples),
    )  # fmt: skip


def arm_order(round_: int) -> tuple[str, str]:
    """Which arm goes first in a round: on/off, then off/on, and so on."""
    return ARMS if round_ % 2 == 0 else (ARMS[1], ARMS[0])


async def _run_batches(
    urls: dict[str, str], pids: dict[str, int], options: OverheadOptions
) -> list[BatchResult]:
    body = _request_body(options)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    batches: list[BatchResult] = []
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        for arm in ARMS:
            await _stream_batch(client, urls[arm], body, options.warmup_streams, 1)
        for concurrency in options.concurrency:
            for round_ in range(options.rounds):
                for arm in arm_order(round_):
                    batches.append(await _batch(client, arm, urls[arm], pids[arm], body,
                                                options, concurrency, round_))  # fmt: skip
    return batches


# -- figures -----------------------------------------------------------------------------------


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _per(total: float, count: int, scale: float) -> float | None:
    return round(total * 1000 * scale / count, 4) if count else None


def _figures(batches: Sequence[BatchResult]) -> ArmFigures:
    streams = sum(b.streams for b in batches)
    events = sum(b.events for b in batches)
    cpu = sum(b.cpu_seconds for b in batches)
    ttfts = [t for b in batches for t in b.ttfts]
    gaps = [g for b in batches for g in b.gaps]
    return ArmFigures(
        streams=streams, failed=sum(b.failed for b in batches), events=events,
        cpu_seconds=round(cpu, 4), cpu_ms_per_stream=_per(cpu, streams, 1),
        cpu_ms_per_1000_events=_per(cpu, events, 1000),
        ttft_p50_ms=_ms(percentile(ttfts, 50)), ttft_p99_ms=_ms(percentile(ttfts, 99)),
        itl_p50_ms=_ms(percentile(gaps, 50)), itl_p99_ms=_ms(percentile(gaps, 99)),
        traceparent_seen=any(b.traceparent_seen for b in batches),
    )  # fmt: skip


_COMPARED: Final = ("cpu_ms_per_stream", "cpu_ms_per_1000_events", "ttft_p50_ms", "ttft_p99_ms",
                    "itl_p50_ms", "itl_p99_ms")  # fmt: skip


def _compare(on: ArmFigures, off: ArmFigures) -> dict[str, dict[str, float | None]]:
    rows: dict[str, dict[str, float | None]] = {}
    for name in _COMPARED:
        a, b = getattr(on, name), getattr(off, name)
        delta = None if a is None or b is None else round(a - b, 4)
        ratio = None if a is None or not b else round(a / b, 3)
        rows[name] = {"on": a, "off": b, "delta": delta, "ratio": ratio}
    return rows


def summarise(
    options: OverheadOptions, batches: list[BatchResult], machine: dict[str, Any]
) -> OverheadReport:
    """Per-arm figures and the on/off comparison of every concurrency."""
    figures: dict[int, dict[str, ArmFigures]] = {}
    for concurrency in options.concurrency:
        figures[concurrency] = {
            arm: _figures([b for b in batches if b.arm == arm and b.concurrency == concurrency])
            for arm in ARMS
        }
    overhead = {c: _compare(f["on"], f["off"]) for c, f in figures.items()}
    return OverheadReport(options, machine, figures, overhead, batches)


# -- the whole run -----------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def measure_overhead(options: OverheadOptions) -> OverheadReport:
    """Start mock and both relays, run every batch, stop them; returns the report."""
    mock_port = _free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    mock_env = {"RELAY_MOCK_TTFT_MS": str(options.ttft_ms), "RELAY_MOCK_JITTER": "0",
                "RELAY_MOCK_TPOT_MS": str(options.tpot_ms), "RELAY_LOG_LEVEL": "warning",
                "RELAY_LOG_FORMAT": "json"}  # fmt: skip
    machine = _machine()
    with tempfile.TemporaryDirectory(prefix="relay-bench-overhead-") as logs, ExitStack() as stack:
        stack.enter_context(_process(
            ["-m", "service.cli", "mock", "--port", str(mock_port)], mock_env, mock_url,
            Path(logs, "mock.log"),
        ))  # fmt: skip
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        for arm in ARMS:
            port = _free_port()
            urls[arm] = f"http://127.0.0.1:{port}"
            argv = ["-m", "service.bench.overhead", "serve-arm", arm, str(port), mock_url,
                    options.log_level]  # fmt: skip
            pids[arm] = stack.enter_context(_process(argv, {}, urls[arm], Path(logs, f"{arm}.log")))
        batches = anyio.run(_run_batches, urls, pids, options)
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return summarise(options, batches, machine)


def _print(report: OverheadReport) -> None:
    m = report.machine
    print(f"relay bench overhead: {m['cpus']} CPUs, load average {m['loadavg']} -> "
          f"{m['loadavg_after']}; {report.options.tokens} tokens per stream, "
          f"{report.options.streams} streams x {report.options.rounds} rounds per arm")  # fmt: skip
    header = f"{'conc':>4} {'figure':<24} {'on':>10} {'off':>10} {'on-off':>10} {'on/off':>8}"
    print(header)
    for concurrency, rows in report.overhead.items():
        for name, row in rows.items():
            cells = [_cell(row[k]) for k in ("on", "off", "delta")]
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
            print(f"{concurrency:>4} {name:<24} {cells[0]:>10} {cells[1]:>10} {cells[2]:>10} "
                  f"{ratio:>8}")  # fmt: skip
    for concurrency, arms in report.figures.items():
        for arm, fig in arms.items():
            if fig.failed:
                print(f"WARNING: {fig.failed} of {fig.streams} streams failed ({arm}, "
                      f"concurrency {concurrency})")  # fmt: skip


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_overhead_bench(options: OverheadOptions) -> int:
    """Measure, print a table, write the JSON report if asked; 1 when any stream failed."""
    report = measure_overhead(options)
    _print(report)
    if options.json_path:
        path = Path(options.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"report written to {path}")
    failed = sum(f.failed for arms in report.figures.values() for f in arms.values())
    return 1 if failed else 0


# -- command line ------------------------------------------------------------------------------


def _levels(raw: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {raw!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return levels


def _command(args: argparse.Namespace) -> int:
    options = OverheadOptions(
        streams=args.streams, concurrency=args.concurrency, rounds=args.rounds,
        tokens=args.tokens, tpot_ms=args.tpot_ms, ttft_ms=args.ttft_ms,
        warmup_streams=args.warmup, log_level=args.log_level, json_path=args.json,
    )  # fmt: skip
    return run_overhead_bench(options)


def add_bench_command(
    bench_subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``overhead`` to the ``relay bench`` group."""
    d = OverheadOptions()
    p = bench_subparsers.add_parser(
        "overhead", help="telemetry on vs off: relay CPU per stream, added TTFT and ITL"
    )
    p.add_argument("--streams", type=int, default=d.streams, help="streams per batch")
    p.add_argument("--concurrency", type=_levels, default=d.concurrency,
                   help="comma list of concurrency levels (default 1,8,32)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=d.rounds, help="batches per arm and level")
    p.add_argument("--tokens", type=int, default=d.tokens, help="content deltas per stream")
    p.add_argument("--tpot-ms", type=float, default=d.tpot_ms, help="mock ms between tokens")
    p.add_argument("--ttft-ms", type=float, default=d.ttft_ms, help="mock ms to first token")
    p.add_argument("--warmup", type=int, default=d.warmup_streams, help="unmeasured streams")
    p.add_argument("--log-level", default=d.log_level, help="log level of both relays")
    p.add_argument("--json", help="write the report as JSON to this path")
    p.set_defaults(func=_command)


def _main(argv: Sequence[str]) -> int:
    """``python -m service.bench.overhead serve-arm <on|off> <port> <upstream> [level]``."""
    if len(argv) not in (4, 5) or argv[0] != "serve-arm" or argv[1] not in ARMS:
        print(_main.__doc__, file=sys.stderr)
        return 2
    serve_arm(argv[1], int(argv[2]), argv[3], *argv[4:])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
