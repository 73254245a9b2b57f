"""The load generator: raw asyncio HTTP/1.1 SSE clients that timestamp every socket read.

It runs as its own process (``python -m service.bench.loadgen``, pinned away from the system
under test) and takes jobs as JSON lines on stdin, answering each with one JSON line on stdout,
so one warm process serves a whole sweep. :class:`LoadGenProcess` is the harness's handle on it.

Jobs:

- ``batch``: fixed concurrency ``c``. ``c`` keep-alive connections are opened first (not
  timed); worker ``i`` starts after ``i / c`` of one stream's duration, so token phases are
  spread evenly instead of arriving in lockstep; each worker runs one unmeasured stream (the
  ramp), ``per_worker`` measured ones, then unmeasured filler streams until every worker has
  finished its measured ones, so concurrency stays at ``c`` for every measured stream.
- ``idle_open`` / ``idle_close``: hold ``count`` streams open with no tokens flowing (the fast
  mock's first token is an hour away) for the memory figure, then close them.
- ``cancel``: streams read until ``read_tokens`` content deltas arrived, then the client closes
  its socket (a browser's Stop) and notes ``time.monotonic()``; the harness asks the fast mock's
  ledger when it saw its own socket close.

Hot path per read: one ``perf_counter()``, the chunked decoding, one list append
(:mod:`service.bench.response`). SSE and JSON decoding happen after the stream ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, cast

from service.bench.fastmock import BenchSpec, install_event_loop, spec_prompt
from service.bench.response import ResponseParser, StreamSample, Wire, analyse

__all__ = ["BatchResult", "LoadGenProcess", "Target", "run_job"]

_CONNECT_PARALLEL: Final = 64
_HOLD_MS: Final = 3_600_000.0
_ROUND: Final = 6  # microsecond resolution in the JSON
_CANCEL_TOKENS: Final = 300


@dataclass(frozen=True, slots=True)
class Target:
    """Where one arm is reached and which wire its client speaks."""

    host: str
    port: int
    path: str
    """``/v1/messages`` (Anthropic) or ``/v1/chat/completions`` (OpenAI)."""
    wire: Wire
    model: str = "mock-text"
    headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers (gateway routing, keys)."""

    def request(self, spec: BenchSpec) -> bytes:
        """The whole HTTP/1.1 request for a stream of ``spec``."""
        message = {"role": "user", "content": spec_prompt(spec)}
        body_obj: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "messages": [message],
            "max_tokens": spec.tokens + 16,
        }
        body = json.dumps(body_obj).encode()
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"host: {self.host}:{self.port}",
            "content-type: application/json",
            "accept: text/event-stream",
            f"content-length: {len(body)}",
        ]
        if self.wire == "anthropic":
            lines.append("anthropic-version: 2023-06-01")
        lines += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Target:
        """The inverse of :func:`dataclasses.asdict` (headers come back as lists)."""
        headers = tuple((str(k), str(v)) for k, v in raw.get("headers", ()))
        return cls(**{**raw, "headers": headers})


# -- one connection ----------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """A client connection carrying one stream at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.stop_after: int | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        parser = self.parser
        if parser is None:
            return
        parser.feed(now, data)
        if (
            parser.done
            or parser.error
            or (self.stop_after is not None and parser.content_seen >= self.stop_after)
        ):
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.parser is not None:
            self.parser.eof(time.perf_counter())
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        """Open, and the last response left it usable for the next request."""
        return not self.lost and (
            self.parser is None or (self.parser.done and self.parser.keep_alive)
        )

    def close(self) -> None:
        """Close the socket (FIN): what a browser's Stop does to a fetch."""
        if self.transport is not None:
            self.transport.close()


async def _connect(target: Target) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Connection, target.host, target.port)
    return protocol


async def _send(
    conn: _Connection, target: Target, spec: BenchSpec, stop_after: int | None = None
) -> tuple[ResponseParser, float]:
    """Send one request and wait for the response's end (or ``stop_after`` content deltas)."""
    assert conn.transport is not None
    conn.parser = ResponseParser(target.wire, live=stop_after is not None)
    conn.stop_after = stop_after
    conn.waiter = asyncio.get_running_loop().create_future()
    sent_at = time.perf_counter()
    conn.transport.write(target.request(spec))
    if conn.lost:
        conn.parser.eof(sent_at)
    else:
        await conn.waiter
    return conn.parser, sent_at


# -- batch -------------------------------------------------------------------------------------


@dataclass(slots=True)
class BatchResult:
    """A batch's measured streams, pooled."""

    ok: int = 0
    failed: int = 0
    count_mismatch: int = 0
    """Complete streams that did not carry exactly ``tokens`` content deltas."""
    bytes_mismatch: int = 0
    """Complete streams whose text differed from the mock's by any byte."""
    events: int = 0
    """Content deltas received in the whole batch (ramp and filler streams too)."""
    wall: float = 0.0
    timed_out: bool = False
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, sample: StreamSample, tokens: int) -> None:
        """Count one measured stream."""
        if not sample.ok:
            self.failed += 1
            key = (sample.error or "failed")[:120]
            self.errors[key] = self.errors.get(key, 0) + 1
            return
        self.ok += 1
        self.count_mismatch += sample.count != tokens
        self.bytes_mismatch += not sample.text_ok
        if sample.ttft is not None:
            self.ttfts.append(round(sample.ttft, _ROUND))
        self.gaps.extend(round(g, _ROUND) for g in sample.gaps)


@dataclass(frozen=True, slots=True)
class _BatchPlan:
    target: Target
    concurrency: int
    per_worker: int
    spec: BenchSpec
    deadline: float
    tag: str


async def _batch(plan: _BatchPlan) -> BatchResult:
    result = BatchResult()
    conns = await _open_many(plan.target, plan.concurrency)
    remaining = [plan.concurrency * plan.per_worker]
    measured_done = asyncio.Event()
    duration = (plan.spec.ttft_ms + plan.spec.tokens * plan.spec.tpot_ms) / 1000
    started = time.perf_counter()

    finished: list[tuple[ResponseParser, float, bool]] = []

    async def worker(index: int) -> None:
        await asyncio.sleep(duration * index / plan.concurrency)
        stream = 0
        while stream <= plan.per_worker or not measured_done.is_set():
            measured = 1 <= stream <= plan.per_worker
            spec = _tagged(plan.spec, f"{plan.tag}-{index}-{stream}")
            parser, sent_at = await _stream_on(conns, index, plan.target, spec)
            # Decoding waits for the end of the batch: it would delay other streams' reads.
            finished.append((parser, sent_at, measured))
            if measured:
                remaining[0] -= 1
                if remaining[0] == 0:
                    measured_done.set()
            elif parser.status != 200 or parser.error:
                await asyncio.sleep(max(duration, 0.05))  # a failing filler must not spin
            stream += 1

    tasks = [asyncio.ensure_future(worker(i)) for i in range(len(conns))]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=plan.deadline)
    except TimeoutError:
        result.timed_out = True
        result.failed += remaining[0]
        result.errors["batch deadline"] = remaining[0]
    finally:
        result.wall = time.perf_counter() - started
        for conn in conns:
            conn.close()
    for parser, sent_at, measured in finished:
        sample = analyse(parser, plan.target.wire, sent_at, plan.spec.tokens)
        result.events += sample.count
        if measured:
            result.add(sample, plan.spec.tokens)
    return result


async def _stream_on(
    conns: list[_Connection], index: int, target: Target, spec: BenchSpec
) -> tuple[ResponseParser, float]:
    """One stream on worker ``index``'s connection, reconnecting when it cannot be reused."""
    now = time.perf_counter()
    try:
        if not conns[index].reusable:
            conns[index].close()
            conns[index] = await _connect(target)
        return await _send(conns[index], target, spec)
    except OSError as exc:
        parser = ResponseParser(target.wire)
        parser.error = f"{type(exc).__name__}: {exc}"
        return parser, now


async def _open_many(target: Target, count: int) -> list[_Connection]:
    limiter = asyncio.Semaphore(_CONNECT_PARALLEL)

    async def one() -> _Connection:
        async with limiter:
            return await _connect(target)

    return list(await asyncio.gather(*(one() for _ in range(count))))


def _tagged(spec: BenchSpec, tag: str) -> BenchSpec:
    return BenchSpec(
        tokens=spec.tokens,
        tpot_ms=spec.tpot_ms,
        ttft_ms=spec.ttft_ms,
        head_ms=spec.head_ms,
        tag=tag,
    )


# -- idle streams and cancels ------------------------------------------------------------------


_IDLE: list[_Connection] = []


async def _idle_open(target: Target, count: int, tag: str, wait: float) -> dict[str, Any]:
    conns = await _open_many(target, count)
    _IDLE.extend(conns)
    spec = BenchSpec(tokens=1, tpot_ms=0, ttft_ms=_HOLD_MS)
    waits: list[asyncio.Future[bool]] = []
    for index, conn in enumerate(conns):
        assert conn.transport is not None
        conn.parser = ResponseParser(target.wire)
        conn.waiter = asyncio.get_running_loop().create_future()
        # Wake on every read: _stream_open decides when the stream is open and idle.
        conn.stop_after = 0
        conn.transport.write(target.request(_tagged(spec, f"{tag}-{index}")))
        waits.append(asyncio.ensure_future(_stream_open(conn)))
    done, pending = await asyncio.wait(waits, timeout=wait)
    for task in pending:
        task.cancel()
    opened = sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())
    return {"opened": opened, "failed": count - opened}


async def _stream_open(conn: _Connection) -> bool:
    while True:
        parser = conn.parser
        assert parser is not None
        assert conn.waiter is not None
        # The first event with data: the provider's stream is relayed (a relay's own opening
        # comment comes before it asked the provider anything).
        if parser.status == 200 and any(b"data:" in piece for _, piece in parser.pieces):
            return True
        if conn.lost or parser.error or parser.done:
            return False
        await conn.waiter
        conn.waiter = asyncio.get_running_loop().create_future()


async def _idle_close() -> dict[str, Any]:
    closed = len(_IDLE)
    for conn in _IDLE:
        conn.close()
    _IDLE.clear()
    await asyncio.sleep(0)
    return {"closed": closed}


async def _cancel(
    target: Target, trials: int, read_tokens: int, tpot_ms: float, tag: str
) -> dict[str, Any]:
    stops: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()
    for trial in range(trials):
        # Long enough to be stopped mid-way, short enough that a gateway which does not
        # propagate the stop is not left relaying it through the rest of the run.
        spec = BenchSpec(tokens=_CANCEL_TOKENS, tpot_ms=tpot_ms, ttft_ms=0, tag=f"{tag}-{trial}")
        conn = await _connect(target)
        try:
            parser, _ = await asyncio.wait_for(_send(conn, target, spec, read_tokens), 30)
        except TimeoutError:
            conn.close()
            errors["no tokens within 30 s"] += 1
            continue
        stop = time.monotonic()
        conn.close()
        if parser.content_seen < read_tokens:
            errors[parser.error or f"HTTP {parser.status}"] += 1
            continue
        stops.append({"tag": spec.tag, "stop": stop, "read": parser.content_seen})
        await asyncio.sleep(tpot_ms / 1000)
    return {"stops": stops, "errors": dict(errors)}


# -- the job loop ------------------------------------------------------------------------------


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (see the module docstring) and return its JSON-ready result."""
    kind = job["kind"]
    if kind == "ping":
        return {"pong": True}
    target = Target.from_dict(job["target"])
    if kind == "batch":
        spec = BenchSpec(tokens=job["tokens"], tpot_ms=job["tpot_ms"], ttft_ms=job["ttft_ms"])
        plan = _BatchPlan(
            target, job["concurrency"], job["per_worker"], spec, job["deadline"], job["tag"]
        )
        return asdict(await _batch(plan))
    if kind == "idle_open":
        return await _idle_open(target, job["count"], job["tag"], job["wait"])
    if kind == "idle_close":
        return await _idle_close()
    if kind == "cancel":
        return await _cancel(target, job["trials"], job["read_tokens"], job["tpot_ms"], job["tag"])
    raise ValueError(f"unknown job kind {kind!r}")


async def _serve_jobs() -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            await _idle_close()
            return
        job = json.loads(line)
        if job.get("kind") == "quit":
            await _idle_close()
            return
        try:
            answer = await run_job(job)
        except (OSError, ValueError, KeyError, TimeoutError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def main() -> int:
    """``python -m service.bench.loadgen``: serve jobs from stdin until EOF or ``quit``."""
    install_event_loop()
    asyncio.run(_serve_jobs())
    return 0


# -- the harness's handle ----------------------------------------------------------------------


class LoadGenProcess:
    """The load generator as a child process (pinned with ``taskset`` when ``cpus`` is set)."""

    def __init__(self, log: Path, cpus: Sequence[int] | None = None) -> None:
        argv = [sys.executable, "-m", "service.bench.loadgen"]
        if cpus and shutil.which("taskset"):
            argv = ["taskset", "-c", ",".join(map(str, cpus)), *argv]
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("wb")
        self._proc = subprocess.Popen(  # noqa: S603 - our own module, no shell
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.pid = self._proc.pid

    def call(self, job: dict[str, Any]) -> dict[str, Any]:
        """Send one job, wait for its answer (the job enforces its own deadline)."""
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write((json.dumps(job) + "\n").encode())
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the load generator exited ({self._proc.poll()}); see {self._log.name}"
            )
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"load generator: {answer['error']}")
        return answer

    def close(self) -> None:
        """Ask it to quit; kill it if it does not."""
        try:
            if self._proc.poll() is None and self._proc.stdin is not None:
                self._proc.stdin.write(b'{"kind": "quit"}\n')
                self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            self._log.close()


if __name__ == "__main__":
    sys.exit(main())
