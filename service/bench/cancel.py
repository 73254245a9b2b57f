"""``relay bench cancel``: how fast a stop reaches the provider, direct and through nginx.

Setup: the mock provider and the relay as real processes on loopback (``relay mock``,
``relay serve``), and the real nginx with ``nginx/streaming.conf`` in front of the relay.
Each trial starts a long stream, reads ``read_tokens`` content deltas, then stops it by
closing the connection (``disconnect``) or by ``POST /v1/streams/{id}/cancel`` (``cancel``).
Four arms (direct/nginx x disconnect/cancel) run interleaved, trial by trial, so drift in
machine load spreads over all of them.

Two latencies per trial, from the stop action on:

- **end to end** (client stop -> provider stopped): the client's wall-clock time just before
  it closes the socket or sends the cancel, against the mock ledger's ``ended_at`` for the
  generation (set when the mock saw its connection close). Both are ``time.time()``, i.e.
  ``CLOCK_REALTIME`` read by two processes on the same host: one clock, no offset. A clock
  step during the run would corrupt this, so the offset between the wall clock and the
  monotonic clock is compared at start and end and reported (``clock_slew_ms``).
- **relay-internal** (relay stop -> upstream response closed): ``propagation_ms`` of the
  relay's ``upstream.aborted`` log line. For a disconnect it starts when the relay *noticed*
  the disconnect, so end to end minus relay-internal is detection plus the mock's own
  reaction.

Writes ``<out>/cancel.json`` (every trial) and ``<out>/cancel.md`` (the results section for
runbook/performance.md: command, machine, versions, date, p50/p99 per arm).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from service.bench.machine import cpu_model, package_versions
from service.measure import percentile
from service.processes import free_port, spawn_service
from service.proxy.nginx import (
    DEFAULT_CONFIGS_DIR,
    NginxError,
    nginx_binary,
    nginx_version,
    run_nginx,
)
from service.sse import SSEDecoder

__all__ = [
    "ARMS",
    "CancelBenchOptions",
    "CancelBenchResult",
    "Trial",
    "add_bench_command",
    "bench",
    "render_markdown",
    "run_cancel_bench",
]

Route = Literal["direct", "nginx"]
StopKind = Literal["disconnect", "cancel"]

ARMS: tuple[tuple[Route, StopKind], ...] = (
    ("direct", "disconnect"),
    ("direct", "cancel"),
    ("nginx", "disconnect"),
    ("nginx", "cancel"),
)
"""Route x stop action, in the order each round runs them."""

_FIRST_POLL = 0.05
_POLL_EVERY = 0.02
_END_TIMEOUT = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KV = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelBenchOptions:
    """What ``relay bench cancel`` runs and where it writes."""

    trials: int = 200
    """Measured trials per arm."""
    warmup: int = 3
    """Unmeasured rounds first (imports, connection pools, nginx workers)."""
    read_tokens: int = 5
    """Content deltas the client reads before it stops the stream."""
    ttft_ms: float = 20.0
    """Mock time to first token."""
    tpot_ms: float = 10.0
    """Mock time per output token: the stream is busy when the stop comes."""
    out_dir: Path = Path("artifacts/bench")
    """Where cancel.json, cancel.md, service logs and the nginx prefix go."""
    configs_dir: Path = DEFAULT_CONFIGS_DIR
    """Where the nginx configs are read from."""


@dataclass(slots=True)
class Trial:
    """One stream stopped once."""

    route: Route
    stop: StopKind
    stream_id: str
    tokens_read: int
    """Content deltas the client had read when it stopped."""
    stop_wall: float
    """``time.time()`` just before the stop action."""
    mock_state: str | None = None
    """Ledger state once the generation ended (``aborted`` expected)."""
    mock_ended_wall: float | None = None
    """Ledger ``ended_at``."""
    mock_tokens: int | None = None
    """Tokens the provider generated in all."""
    relay_reason: str | None = None
    """Reason on the relay's ``upstream.aborted`` line."""
    relay_propagation_ms: float | None = None
    """Relay-internal: stop requested -> upstream response closed."""

    @property
    def end_to_end_ms(self) -> float | None:
        """Client stop -> provider stopped generating."""
        if self.mock_ended_wall is None:
            return None
        return (self.mock_ended_wall - self.stop_wall) * 1000


@dataclass(slots=True)
class CancelBenchResult:
    """All trials of a run and the figures around them."""

    options: CancelBenchOptions
    trials: list[Trial] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def arm(self, route: Route, stop: StopKind) -> list[Trial]:
        """The trials of one arm."""
        return [t for t in self.trials if t.route == route and t.stop == stop]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per arm: counts and p50/p90/p99/max of both latencies (ms)."""
        out = {}
        for route, stop in ARMS:
            trials = self.arm(route, stop)
            e2e = [t.end_to_end_ms for t in trials if t.end_to_end_ms is not None]
            relay = [t.relay_propagation_ms for t in trials if t.relay_propagation_ms is not None]
            out[f"{route}/{stop}"] = {
                "trials": len(trials),
                "aborted": sum(t.mock_state == "aborted" for t in trials),
                "end_to_end_ms": _stats(e2e),
                "relay_internal_ms": _stats(relay),
            }
        return out


def run_cancel_bench(options: CancelBenchOptions) -> int:
    """``relay bench cancel``: run, write cancel.json / cancel.md, print the table.

    Returns 0 when every trial ended ``aborted`` with both latencies measured, 1 when some
    did not (the JSON says which), 2 for unusable options, 4 when the stack could not start.
    """
    if options.trials < 1 or options.read_tokens < 1 or options.warmup < 0:
        print("relay bench cancel: need --trials >= 1 and --read-tokens >= 1", file=sys.stderr)
        return 2
    try:
        result = bench(options)
    except (NginxError, RuntimeError) as exc:
        print(f"relay bench cancel: could not run: {exc}", file=sys.stderr)
        return 4
    out = options.out_dir
    payload = {
        "meta": result.meta,
        "summary": result.summary(),
        "trials": [{**asdict(t), "end_to_end_ms": t.end_to_end_ms} for t in result.trials],
    }
    (out / "cancel.json").write_text(json.dumps(payload, indent=2) + "\n")
    markdown = render_markdown(result)
    (out / "cancel.md").write_text(markdown)
    print(markdown)
    print(f"written: {out / 'cancel.md'}, {out / 'cancel.json'}")
    incomplete = [
        t.stream_id
        for t in result.trials
        if t.mock_state != "aborted" or t.end_to_end_ms is None or t.relay_propagation_ms is None
    ]
    if incomplete:
        print(
            f"relay bench cancel: {len(incomplete)} trial(s) not aborted or not measured:"
            f" {', '.join(incomplete[:5])}",
            file=sys.stderr,
        )
        return 1
    return 0


def bench(options: CancelBenchOptions) -> CancelBenchResult:
    """Run every trial; latencies are filled in from the ledger and the relay's log."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    nginx_binary()
    result = CancelBenchResult(options=options, meta=_meta(options))
    slew_start = time.time() - time.monotonic()
    with _stack(options) as stack:
        clients = {
            route: httpx.Client(base_url=url, timeout=10.0) for route, url in stack.urls.items()
        }
        try:
            for n in range(options.warmup + options.trials):
                for route, stop in ARMS:
                    trial = _trial(clients[route], route, stop, options)
                    _wait_for_ledger(stack.mock_url, trial)
                    if n >= options.warmup:
                        result.trials.append(trial)
        finally:
            for client in clients.values():
                client.close()
    # The relay has exited (its log is complete) once the stack is closed.
    _add_relay_lines(result.trials, stack.relay_log)
    # Rounded, and + 0.0 turns a rounded -0.0 into 0.0.
    slew = round((time.time() - time.monotonic() - slew_start) * 1000, 3) + 0.0
    result.meta["clock_slew_ms"] = slew
    return result


# --- the stack ------------------------------------------------------------------------


@dataclass(slots=True)
class _Stack:
    mock_url: str
    relay_log: Path
    urls: dict[Route, str] = field(default_factory=dict)


@contextmanager
def _stack(options: CancelBenchOptions) -> Iterator[_Stack]:
    out = options.out_dir
    env = {"RELAY_LOG_FORMAT": "json"}
    with ExitStack() as stack:
        mock_port, relay_port = free_port(), free_port()
        mock_url = f"http://127.0.0.1:{mock_port}"
        relay_url = f"http://127.0.0.1:{relay_port}"
        stack.enter_context(
            spawn_service(
                ["mock", "--port", str(mock_port)], env, f"{mock_url}/healthz", out / "mock.log"
            )
        )
        relay_log = out / "relay.log"
        relay_log.unlink(missing_ok=True)
        stack.enter_context(
            spawn_service(
                ["serve", "--port", str(relay_port), "--upstream", mock_url],
                env,
                f"{relay_url}/healthz",
                relay_log,
            )
        )
        nginx = stack.enter_context(
            run_nginx(
                "streaming", relay_port, prefix_root=out / "nginx", configs_dir=options.configs_dir
            )
        )
        yield _Stack(
            mock_url=mock_url, relay_log=relay_log, urls={"direct": relay_url, "nginx": nginx.url}
        )


# --- one trial ------------------------------------------------------------------------


def _body(options: CancelBenchOptions) -> dict[str, Any]:
    return {
        "model": "mock-text",
        "max_tokens": 5000,
        "stream": True,
        "messages": [{"role": "user", "content": "a long answer, to be stopped"}],
        "mock": {"ttft_ms": options.ttft_ms, "tpot_ms": options.tpot_ms},
    }


def _trial(
    client: httpx.Client, route: Route, stop: StopKind, options: CancelBenchOptions
) -> Trial:
    request = client.build_request(
        "POST", "/v1/messages", json=_body(options), headers={"accept-encoding": "identity"}
    )
    response = client.send(request, stream=True)
    try:
        if response.status_code != 200:
            raise RuntimeError(f"{route}: HTTP {response.status_code} for the stream")
        stream_id = response.headers["x-relay-stream-id"]
        chunks = response.iter_raw()
        tokens = _read_deltas(chunks, options.read_tokens)
        stop_wall = time.time()
        if stop == "cancel":
            client.post(f"/v1/streams/{stream_id}/cancel").raise_for_status()
            for _ in chunks:  # the error event and relay_metrics, then the end
                pass
    finally:
        # For "disconnect" this is the stop: an unfinished response closes its connection.
        response.close()
    return Trial(
        route=route, stop=stop, stream_id=stream_id, tokens_read=tokens, stop_wall=stop_wall
    )


def _read_deltas(chunks: Iterator[bytes], count: int) -> int:
    decoder = SSEDecoder()
    seen = 0
    for chunk in chunks:
        seen += sum(e.event == "content_block_delta" for e in decoder.feed(chunk))
        if seen >= count:
            return seen
    raise RuntimeError(f"the stream ended after {seen} content deltas")


def _wait_for_ledger(mock_url: str, trial: Trial) -> None:
    # ended_at is stamped by the mock when it happens; polling only learns it later, so
    # the poll interval does not enter the measurement (the first poll waits a little,
    # to stay off the CPU while the stop propagates).
    time.sleep(_FIRST_POLL)
    deadline = time.monotonic() + _END_TIMEOUT
    while True:
        records = httpx.get(
            f"{mock_url}/mock/generations", params={"relay_stream_id": trial.stream_id}
        ).json()
        record = records[-1] if records else None
        if record is not None and record["state"] != "streaming":
            trial.mock_state = record["state"]
            trial.mock_ended_wall = record["ended_at"]
            trial.mock_tokens = record["tokens"]
            return
        if time.monotonic() > deadline:
            trial.mock_state = None if record is None else record["state"]
            return
        time.sleep(_POLL_EVERY)


def _add_relay_lines(trials: list[Trial], log: Path) -> None:
    lines: dict[str, dict[str, Any]] = {}
    for raw in log.read_text(errors="replace").splitlines():
        if "upstream.aborted" in raw:
            fields = _log_fields(raw)
            if fields.get("event") == "upstream.aborted" and "stream_id" in fields:
                lines[str(fields["stream_id"])] = fields
    for trial in trials:
        line = lines.get(trial.stream_id)
        if line is not None:
            trial.relay_reason = str(line.get("reason"))
            trial.relay_propagation_ms = float(line["propagation_ms"])


def _log_fields(raw: str) -> dict[str, Any]:
    """A structlog line as a dict: JSON lines, or the console renderer's key=value pairs."""
    text = _ANSI.sub("", raw).strip()
    if text.startswith("{"):
        try:
            value: dict[str, Any] = json.loads(text)
        except ValueError:
            return {}
        return value
    fields: dict[str, Any] = dict(_KV.findall(text))
    fields["event"] = "upstream.aborted" if " upstream.aborted " in f" {text} " else None
    return fields


# --- report ---------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": _round(percentile(values, 50)),
        "p90": _round(percentile(values, 90)),
        "p99": _round(percentile(values, 99)),
        "max": _round(max(values, default=None)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _meta(options: CancelBenchOptions) -> dict[str, Any]:
    versions = package_versions()
    return {
        "command": _command(options),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "nginx": nginx_version(),
        "packages": versions,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
    }


def _command(options: CancelBenchOptions) -> str:
    parts = ["relay bench cancel"]
    defaults = CancelBenchOptions()
    for name, flag in (
        ("trials", "--trials"),
        ("read_tokens", "--read-tokens"),
        ("out_dir", "--out"),
    ):
        value = getattr(options, name)
        if value != getattr(defaults, name):
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def render_markdown(result: CancelBenchResult) -> str:
    """The results section: command, machine, versions, date, and the table per arm."""
    m = result.meta
    o = result.options
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    lines = [
        "## Cancel propagation",
        "",
        f"- Command: `{m['command']}`",
        f"- Date: {m['date']}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}",
        f"- Versions: Python {m['python']}, nginx {m['nginx']}, {packages}",
        f"- Trials: {o.trials} per arm after {o.warmup} warm-up rounds, arms interleaved;"
        f" each stream read {o.read_tokens} content deltas (mock TTFT {o.ttft_ms:g} ms,"
        f" TPOT {o.tpot_ms:g} ms) before the stop. Wall/monotonic clock slew over the run:"
        f" {m.get('clock_slew_ms', 'n/a')} ms.",
        "",
        "| route | stop | aborted | end to end p50 | p99 | max | relay-internal p50 | p99 | max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, arm in result.summary().items():
        route, stop = key.split("/")
        e, r = arm["end_to_end_ms"], arm["relay_internal_ms"]
        lines.append(
            f"| {route} | {stop} | {arm['aborted']}/{arm['trials']} | {_ms(e['p50'])}"
            f" | {_ms(e['p99'])} | {_ms(e['max'])} | {_ms(r['p50'])} | {_ms(r['p99'])}"
            f" | {_ms(r['max'])} |"
        )
    lines += [
        "",
        "End to end: the client's `time.time()` just before it closed the connection or sent"
        " the cancel, to the mock ledger's `ended_at` for the generation (the moment the"
        " provider saw its connection close). Relay-internal: `propagation_ms` of the relay's"
        " `upstream.aborted` line (stop requested inside the relay to upstream response"
        " closed). Percentiles are nearest-rank.",
        "",
    ]
    return "\n".join(lines)


def _ms(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


# --- command line ---------------------------------------------------------------------


def add_bench_command(
    bench_subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``cancel`` to the ``relay bench`` group."""
    d = CancelBenchOptions()
    parser = bench_subparsers.add_parser(
        "cancel",
        help="stop -> provider stopped: disconnect and cancel, direct and through nginx",
    )
    parser.add_argument("--trials", type=int, default=d.trials, help="measured trials per arm")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="unmeasured rounds first")
    parser.add_argument(
        "--read-tokens", type=int, default=d.read_tokens, help="deltas read before the stop"
    )
    parser.add_argument("--out", default=str(d.out_dir), help="output directory")
    parser.add_argument(
        "--nginx-dir", default=str(d.configs_dir), help="directory with the nginx configs"
    )
    parser.set_defaults(func=_from_args)


def _from_args(args: argparse.Namespace) -> int:
    options = CancelBenchOptions(
        trials=args.trials,
        warmup=args.warmup,
        read_tokens=args.read_tokens,
        out_dir=Path(args.out),
        configs_dir=Path(args.nginx_dir),
    )
    return run_cancel_bench(options)
