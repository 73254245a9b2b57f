"""``relay bench sweep``: the relay against a direct connection and against peer gateways.

One command starts the fast mock, every arm (:mod:`service.bench.arms`) pinned to the SUT's
CPUs and the load generator (:mod:`service.bench.loadgen`) on the other CPUs, then measures,
in this order:

1. warm-up: a small batch through every arm, discarded;
2. idle memory: RSS of each SUT's process tree with 0, K/2 and K streams held open and idle
   (the marginal KiB per idle stream is the slope between K/2 and K);
3. the sweep: for each concurrency level, ``rounds`` rounds; each round runs one batch per arm,
   the arms' order rotating from round to round (machine drift spreads over all of them); the
   SUT's CPU time is read around each batch; an arm that fails most of its streams at a level
   (or hits the batch deadline) is not run at higher levels;
4. cancel propagation: streams are read for a few tokens and then the client closes its
   socket; the fast mock's ledger says when the provider side saw its socket close.

Writes ``sweep.json`` (raw samples and figures), ``results.md`` (the results section) and
``sweep.png`` (the plot) into ``--out``. ``--smoke`` is a tiny version that takes seconds
(CI runs it so the harness never rots); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import httpx

from service.bench import procstat
from service.bench.arms import ARMS, SMOKE_ARMS, RunningArm, Stack, StackOptions, start_stack
from service.bench.figures import summarise
from service.bench.loadgen import LoadGenProcess
from service.bench.machine import cpu_model, package_versions
from service.bench.peers import DEFAULT_CACHE, install_peers
from service.bench.report import render_markdown, render_plot

__all__ = ["SweepOptions", "add_bench_command", "run_sweep", "smoke_options"]

_SETTLE: Final = 0.3
_IDLE_SETTLE: Final = 1.0
_LEDGER_WAIT: Final = 5.0


@dataclass(frozen=True, slots=True)
class SweepOptions:
    """What ``relay bench sweep`` runs."""

    levels: tuple[int, ...] = (1, 16, 64, 256, 1000)
    """Concurrency levels (streams in flight)."""
    arms: tuple[str, ...] = tuple(ARMS)
    """Arms to run (unavailable ones are reported, not run)."""
    rounds: int = 3
    """Batches per arm and level; arms interleaved, their order rotating."""
    tokens: int = 40
    """Content deltas per stream (2 s at 20 tokens/s: long enough that per-stream costs do not
    swamp the per-event ones, short enough for a sweep of minutes)."""
    tpot_ms: float = 50.0
    """Mock gap between deltas: 50 ms is 20 tokens/s per stream."""
    ttft_ms: float = 0.0
    """Mock delay before the first delta (0: TTFT is the hops' own cost)."""
    per_worker: int = 1
    """Measured streams per connection and batch (after one unmeasured ramp stream)."""
    min_streams: int = 8
    """Measured streams per batch at least (low levels run more per connection)."""
    gap_budget_ms: float = 10.0
    """Capacity: gap p99 may exceed the mock's ``tpot_ms`` by this much."""
    idle_streams: int = 500
    """Idle streams held open for the memory figure."""
    cancel_trials: int = 60
    """Cancel-propagation trials per arm."""
    cancel_read: int = 3
    """Content deltas read before the client stops."""
    cancel_tpot_ms: float = 10.0
    """Mock gap between deltas of the streams that get stopped."""
    drop_failure_rate: float = 0.5
    """An arm failing more than this share of its streams at a level skips the higher ones."""
    out_dir: Path = Path("artifacts/bench/sweep")
    """Where sweep.json, results.md, sweep.png and the logs go."""
    peers_cache: Path = DEFAULT_CACHE
    """Where LiteLLM and Portkey are installed."""
    install: bool = False
    """Install missing peers first (PyPI, npm)."""
    sut_cpus: tuple[int, ...] | None = None
    """CPUs of the system under test (default: the last CPU; none on a 1-CPU machine)."""
    harness_cpus: tuple[int, ...] | None = None
    """CPUs of the mock and the load generator (default: all the others)."""
    smoke: bool = False
    """The tiny CI version."""
    command: str = "relay bench sweep"
    """The command line, for the results page."""


def smoke_options(out_dir: Path = Path("artifacts/bench/sweep-smoke")) -> SweepOptions:
    """A sweep that exercises every step in seconds (its figures mean nothing)."""
    return SweepOptions(
        levels=(1, 4),
        arms=SMOKE_ARMS,
        rounds=1,
        tokens=5,
        tpot_ms=20.0,
        per_worker=1,
        min_streams=2,
        idle_streams=8,
        cancel_trials=3,
        out_dir=out_dir,
        smoke=True,
        command="relay bench sweep --smoke",
    )


def _cpus(options: SweepOptions) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    if options.sut_cpus is not None:
        rest = tuple(c for c in sorted(os.sched_getaffinity(0)) if c not in options.sut_cpus)
        return options.sut_cpus, options.harness_cpus or rest or None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return (available[-1],), tuple(available[:-1])


# -- measuring ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    options: SweepOptions
    stack: Stack
    loadgen: LoadGenProcess
    raw: dict[str, Any] = field(default_factory=dict)

    def job(self, arm: RunningArm, kind: str, **fields: Any) -> dict[str, Any]:
        return self.loadgen.call({"kind": kind, "target": asdict(arm.target), **fields})


def _per_worker(options: SweepOptions, level: int) -> int:
    return max(options.per_worker, math.ceil(options.min_streams / level))


def _deadline(options: SweepOptions, per_worker: int) -> float:
    duration = (options.ttft_ms + options.tokens * options.tpot_ms) / 1000
    return 3 * (per_worker + 3) * duration + 30


def _batch(
    run: _Run, arm: RunningArm, level: int, round_: int, per_worker: int, tag: str
) -> dict[str, Any]:
    o = run.options
    pids = arm.sut_pids()
    cpu = procstat.cpu_seconds(pids)
    result = run.job(
        arm,
        "batch",
        concurrency=level,
        per_worker=per_worker,
        tokens=o.tokens,
        tpot_ms=o.tpot_ms,
        ttft_ms=o.ttft_ms,
        deadline=_deadline(o, per_worker),
        tag=tag,
    )
    time.sleep(_SETTLE)  # the SUT finishes its bookkeeping (log lines, spans) in the window
    result["cpu_seconds"] = procstat.cpu_seconds(pids) - cpu if pids else None
    return {"arm": arm.name, "level": level, "round": round_, **result}


def _warm_up(run: _Run) -> None:
    for arm in run.stack.arms.values():
        _batch(run, arm, min(4, max(run.options.levels)), -1, 1, f"warm-{arm.name}")


def _sweep(run: _Run) -> None:
    batches: list[dict[str, Any]] = run.raw.setdefault("batches", [])
    active = list(run.stack.arms)
    dropped: dict[str, str] = run.raw.setdefault("dropped", {})
    for level in run.options.levels:
        per_worker = _per_worker(run.options, level)
        stalled: set[str] = set()  # hit the batch deadline: its other rounds would too
        for round_ in range(run.options.rounds):
            shift = round_ % max(1, len(active))
            for name in active[shift:] + active[:shift]:
                if name in stalled:
                    continue
                tag = f"s{level}r{round_}{name}"
                batch = _batch(run, run.stack.arms[name], level, round_, per_worker, tag)
                batches.append(batch)
                _progress(batch)
                if batch["timed_out"]:
                    stalled.add(name)
        for name in list(active):
            mine = [b for b in batches if b["arm"] == name and b["level"] == level]
            failed = sum(b["failed"] for b in mine)
            total = failed + sum(b["ok"] for b in mine)
            if any(b["timed_out"] for b in mine) or failed > run.options.drop_failure_rate * total:
                dropped[name] = f"saturated at c={level}: {failed}/{total} streams failed"
                active.remove(name)


def _progress(batch: dict[str, Any]) -> None:
    gaps = sorted(batch["gaps"])
    p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] * 1000 if gaps else float("nan")
    print(
        f"  c={batch['level']:<5} round {batch['round']} {batch['arm']:<20} ok {batch['ok']:>5}"
        f" failed {batch['failed']:>4} gap p99 {p99:7.2f} ms  {batch['wall']:.1f} s",
        flush=True,
    )


def _idle(run: _Run) -> None:
    out: dict[str, Any] = run.raw.setdefault("idle", {})
    half = max(1, run.options.idle_streams // 2)
    for name, arm in run.stack.arms.items():
        if not arm.roots:
            continue
        samples = [procstat.rss_kib(arm.sut_pids())]
        opened = 0
        for step in range(2):
            answer = run.job(arm, "idle_open", count=half, tag=f"idle-{name}-{step}", wait=60)
            opened += answer["opened"]
            time.sleep(_IDLE_SETTLE)
            samples.append(procstat.rss_kib(arm.sut_pids()))
        run.job(arm, "idle_close")
        time.sleep(_IDLE_SETTLE)
        # Did closing the idle clients close their upstreams too? (A gateway that keeps them
        # holds the provider's connection and, for a real model, its generation.)
        tags = [f"idle-{name}-{step}-{i}" for step in range(2) for i in range(half)]
        records = _ledger(run.stack.mock_url, tags)
        closed = sum(1 for r in records.values() if r.get("closed_at") is not None)
        out[name] = {
            "rss_kib": samples,
            "opened": opened,
            "per_step": half,
            "upstream_closed": closed,
            "upstream_seen": len(records),
        }


def _cancel(run: _Run) -> None:
    o = run.options
    stops: dict[str, list[dict[str, Any]]] = {name: [] for name in run.stack.arms}
    errors: dict[str, dict[str, int]] = {name: {} for name in run.stack.arms}
    per_job = max(1, min(5, o.cancel_trials))
    names = list(run.stack.arms)
    for round_ in range(math.ceil(o.cancel_trials / per_job)):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            answer = run.job(
                run.stack.arms[name],
                "cancel",
                trials=per_job,
                read_tokens=o.cancel_read,
                tpot_ms=o.cancel_tpot_ms,
                tag=f"c{round_}{name}",
            )
            stops[name].extend(answer["stops"])
            for error, count in answer["errors"].items():
                errors[name][error] = errors[name].get(error, 0) + count
    time.sleep(_LEDGER_WAIT)  # let a slow propagation land before the ledger is read
    ledger = _ledger(run.stack.mock_url, [s["tag"] for all_ in stops.values() for s in all_])
    run.raw["cancel"] = {
        name: {
            "trials": [{**s, **ledger.get(s["tag"], {})} for s in arm_stops],
            "errors": errors[name],
        }
        for name, arm_stops in stops.items()
    }


def _ledger(mock_url: str, tags: list[str]) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(tags), 200):
            chunk = ",".join(tags[start : start + 200])
            records.update(client.get(f"{mock_url}/bench/ledger", params={"tags": chunk}).json())
    return records


# -- metadata ----------------------------------------------------------------------------------


def _git_commit() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(  # noqa: S603 - read-only git commands
            [git, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            cwd=repo,
        )
        dirty = subprocess.run(  # noqa: S603
            [git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            cwd=repo,
        )
    except OSError:
        return "unknown"
    commit = head.stdout.strip() or "unknown"
    return f"{commit} (with uncommitted changes)" if dirty.stdout.strip() else commit


def _meta(options: SweepOptions, stack: Stack, cpus: tuple[Any, Any]) -> dict[str, Any]:
    versions = package_versions()
    peers = stack.peers
    return {
        "command": options.command,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "relay_commit": _git_commit(),
        "nginx": _nginx_version(),
        "node": _node_version(),
        "litellm": peers.litellm_version if peers else None,
        "portkey": peers.portkey_version if peers else None,
        "portkey_hono_node_server": peers.portkey_hono if peers else None,
        "packages": versions,
        "sut_cpus": cpus[0],
        "harness_cpus": cpus[1],
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
    }


def _nginx_version() -> str | None:
    from service.proxy.nginx import NginxError, nginx_version

    try:
        return nginx_version()
    except (NginxError, OSError):
        return None


def _node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        result = subprocess.run(  # noqa: S603 - fixed arguments
            [node, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() or None


# -- the command -------------------------------------------------------------------------------


def run_sweep(options: SweepOptions) -> dict[str, Any]:
    """Run the whole sweep; writes sweep.json, results.md and sweep.png; returns the summary."""
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if options.install:
        for line in install_peers(options.peers_cache):
            print(f"relay bench sweep: {line}", flush=True)
    cpus = _cpus(options)
    stack_options = StackOptions(
        out_dir=out,
        sut_cpus=cpus[0],
        harness_cpus=cpus[1],
        peers_cache=options.peers_cache,
        max_streams=max(max(options.levels), options.idle_streams),
    )
    started = time.monotonic()
    print(f"relay bench sweep: starting {', '.join(options.arms)}", flush=True)
    with start_stack(options.arms, stack_options) as stack:
        for name, reason in stack.unavailable.items():
            print(f"relay bench sweep: arm {name} not run: {reason}", flush=True)
        loadgen = LoadGenProcess(out / "logs" / "loadgen.log", cpus[1])
        run = _Run(options, stack, loadgen, {"meta": _meta(options, stack, cpus)})
        try:
            for phase, step in (
                ("warm-up", _warm_up),
                ("idle memory", _idle),
                ("sweep", _sweep),
                ("cancel propagation", _cancel),
            ):
                print(
                    f"relay bench sweep: {phase} ({time.monotonic() - started:.0f} s)", flush=True
                )
                step(run)
        finally:
            loadgen.close()
    run.raw["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    run.raw["meta"]["runtime_s"] = round(time.monotonic() - started, 1)
    run.raw["unavailable"] = stack.unavailable
    summary = summarise(run.raw, options)
    (out / "sweep.json").write_text(json.dumps({"summary": summary, "raw": run.raw}) + "\n")
    markdown = render_markdown(summary, plot_name="sweep.png")
    (out / "results.md").write_text(markdown)
    render_plot(summary, out / "sweep.png")
    print(markdown)
    print(f"written: {out / 'results.md'}, {out / 'sweep.png'}, {out / 'sweep.json'}")
    return summary


def _csv_ints(raw: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in raw.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {raw!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError("expected integers >= 0")
    return values


def _arms(raw: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in raw.split(",") if p.strip())
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    return names


def _options_from(args: argparse.Namespace, argv: Sequence[str]) -> SweepOptions:
    base = (
        smoke_options(Path(args.out or "artifacts/bench/sweep-smoke"))
        if args.smoke
        else (SweepOptions(out_dir=Path(args.out or "artifacts/bench/sweep")))
    )
    changes: dict[str, Any] = {
        "install": args.install_peers,
        "command": " ".join(["relay bench sweep", *argv]),
    }
    for name in (
        "levels",
        "arms",
        "rounds",
        "tokens",
        "tpot_ms",
        "idle_streams",
        "cancel_trials",
        "gap_budget_ms",
        "sut_cpus",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.peers_cache:
        changes["peers_cache"] = Path(args.peers_cache)
    return replace(base, **changes)


def _command(args: argparse.Namespace) -> int:
    # The command as typed, for the results page (a programmatic call records none).
    argv = sys.argv[sys.argv.index("sweep") + 1 :] if "sweep" in sys.argv else []
    options = _options_from(args, argv)
    summary = run_sweep(options)
    broken = [name for name, figures in summary["arms"].items() if figures.get("broken")]
    if broken:
        print(
            f"relay bench sweep: arms with failed or unfaithful streams: {', '.join(broken)}",
            file=sys.stderr,
        )
    return 1 if options.smoke and broken else 0


def add_bench_command(
    bench_subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``sweep`` to the ``relay bench`` group."""
    p = bench_subparsers.add_parser(
        "sweep",
        help="the relay vs a direct connection and peer gateways (latency, capacity, "
        "memory, cancel, CPU); writes results.md and sweep.png",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sweep in seconds (CI)")
    p.add_argument(
        "--install-peers",
        action="store_true",
        help="install LiteLLM and Portkey into the peers cache first",
    )
    p.add_argument("--peers-cache", help=f"where peers live (default {DEFAULT_CACHE})")
    p.add_argument("--out", help="output directory (default artifacts/bench/sweep[-smoke])")
    p.add_argument("--levels", type=_csv_ints, help="concurrency levels (default 1,16,64,256,1000)")
    p.add_argument("--arms", type=_arms, help=f"comma list of arms (default all: {','.join(ARMS)})")
    p.add_argument("--rounds", type=int, help="rounds per level (default 3)")
    p.add_argument("--tokens", type=int, help="content deltas per stream (default 40)")
    p.add_argument("--tpot-ms", type=float, help="mock ms between deltas (default 50 = 20 tok/s)")
    p.add_argument("--idle-streams", type=int, help="idle streams for the memory figure (500)")
    p.add_argument("--cancel-trials", type=int, help="cancel trials per arm (default 60)")
    p.add_argument("--gap-budget-ms", type=float, help="capacity: gap p99 over tpot (10)")
    p.add_argument("--sut-cpus", type=_csv_ints, help="CPUs of the system under test")
    p.set_defaults(func=_command)
