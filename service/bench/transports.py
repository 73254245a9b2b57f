"""``relay bench transports``: httpx's own transport against httpx over aiohttp, measured.

The relay talks to its provider through one :class:`httpx.AsyncClient`. Its transport can be
swapped without touching the httpx API the relay is written against: the default
(``httpcore``) or :class:`httpx_aiohttp.AiohttpTransport` (PyPI ``httpx-aiohttp``), which runs
the same requests on aiohttp's C-accelerated HTTP parser. This module

- builds either transport as the relay does (:func:`service.upstream.transport.make_transport`);
- measures both in-process against the fast mock (:func:`measure_throughput`): client CPU per
  1,000 content events and time to first content delta, arms interleaved per round;
- verifies the cancellation semantics the relay depends on (:func:`check_semantics`), each
  against the fast mock's ledger, which records when the provider saw its socket close:
  a cancelled streaming read plus a shielded ``aclose()`` closes the upstream socket; so does
  ``aclose()`` without a cancel; a request cancelled before its headers arrive closes its socket;
  a read timeout raises :class:`httpx.ReadTimeout`; a refused connection raises
  :class:`httpx.ConnectError`; an upstream that drops mid-body raises an
  :class:`httpx.TransportError` (the relay's ``upstream_dropped``).

The sweep (:mod:`service.bench.sweep`) also runs the whole relay on each transport (arms
``relay``, on the default aiohttp transport, and ``relay-httpx``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import anyio
import httpx

from service.bench.fastmock import BenchSpec, install_event_loop, spec_prompt
from service.bench.response import content_text
from service.measure import percentile
from service.sse import SSEDecoder
from service.upstream.transport import TRANSPORTS, TransportName, make_transport

__all__ = [
    "TRANSPORTS",
    "SemanticsCheck",
    "TransportReport",
    "add_bench_command",
    "check_semantics",
    "measure_throughput",
    "run_transports_bench",
]


_CLOSE_WAIT: Final = 2.0
_POLL: Final = 0.005


def _client(name: TransportName, read_timeout: float = 30.0) -> httpx.AsyncClient:
    timeout = httpx.Timeout(connect=5.0, read=read_timeout, write=5.0, pool=5.0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    return httpx.AsyncClient(transport=make_transport(name), timeout=timeout, limits=limits)


def _body(spec: BenchSpec) -> dict[str, Any]:
    return {
        "model": "bench",
        "stream": True,
        "max_tokens": spec.tokens,
        "messages": [{"role": "user", "content": spec_prompt(spec)}],
    }


# -- throughput --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Figures:
    streams: int = 0
    failed: int = 0
    events: int = 0
    cpu: float = 0.0
    ttfts: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        p50, p99 = percentile(self.ttfts, 50), percentile(self.ttfts, 99)
        return {
            "streams": self.streams,
            "failed": self.failed,
            "events": self.events,
            "cpu_ms_per_1000_events": round(self.cpu * 1e6 / self.events, 2)
            if self.events
            else None,
            "ttft_p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "ttft_p99_ms": None if p99 is None else round(p99 * 1000, 3),
        }


async def _stream_once(client: httpx.AsyncClient, url: str, spec: BenchSpec) -> tuple[float, int]:
    decoder = SSEDecoder()
    start = time.perf_counter()
    first: float | None = None
    events = 0
    async with client.stream("POST", url, json=_body(spec)) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            for event in decoder.feed(chunk):
                if content_text("anthropic", event) is not None:
                    events += 1
                    first = first if first is not None else time.perf_counter()
    if first is None or events != spec.tokens:
        raise httpx.ReadError(f"stream ended after {events} of {spec.tokens} content deltas")
    return first - start, events


async def _round(
    client: httpx.AsyncClient,
    url: str,
    spec: BenchSpec,
    streams: int,
    concurrency: int,
    figures: _Figures,
) -> None:
    limiter = anyio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            try:
                ttft, events = await _stream_once(client, url, spec)
            except httpx.HTTPError:
                figures.failed += 1
                return
            figures.ttfts.append(ttft)
            figures.events += events

    cpu = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(streams):
            tg.start_soon(one)
    figures.cpu += time.process_time() - cpu
    figures.streams += streams


async def measure_throughput(
    url: str, *, rounds: int = 3, streams: int = 200, concurrency: int = 50, tokens: int = 200
) -> dict[str, dict[str, Any]]:
    """Client CPU per 1,000 content events and TTFT per transport (fast mock at ``url``).

    Both clients stay open for the whole run; rounds alternate which transport goes first.
    The mock sends ``tokens`` deltas with no pause, so the client side is what costs.
    """
    spec = BenchSpec(tokens=tokens, tpot_ms=0.0, ttft_ms=0.0)
    figures = {name: _Figures() for name in TRANSPORTS}
    clients = {name: _client(name) for name in TRANSPORTS}
    try:
        for client in clients.values():  # warm-up: imports, pools
            await _round(client, url, spec, 5, 5, _Figures())
        for number in range(rounds):
            order = TRANSPORTS if number % 2 == 0 else TRANSPORTS[::-1]
            for name in order:
                await _round(clients[name], url, spec, streams, concurrency, figures[name])
    finally:
        for client in clients.values():
            await client.aclose()
    return {name: fig.summary() for name, fig in figures.items()}


# -- cancellation semantics --------------------------------------------------------------------


@dataclass(slots=True)
class SemanticsCheck:
    """One property of one transport."""

    transport: str
    check: str
    passed: bool
    detail: str
    close_ms: float | None = None
    """Stop (cancel or aclose) to the provider seeing its socket close, where that applies."""


class _Ledger:
    """Reads the fast mock's ledger over plain httpx (the transport under test stays out).

    Its client is made once, up front: making an httpx client loads the CA bundle, which
    blocks the event loop for tens of milliseconds, long enough to delay the very socket
    close being measured (a transport closes its socket in the loop's next iteration).
    """

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self._url = url
        self._client = client

    async def closed_at(self, tag: str, wait: float = _CLOSE_WAIT) -> float | None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            response = await self._client.get(f"{self._url}/bench/ledger", params={"tags": tag})
            closed = response.json().get(tag, {}).get("closed_at")
            if closed is not None:
                return float(closed)
            await anyio.sleep(_POLL)
        return None


async def _cancel_after(delay: float, scope: anyio.CancelScope, stamp: list[float]) -> None:
    """Cancel ``scope`` after ``delay``, noting the moment (the stop being measured)."""
    await anyio.sleep(delay)
    stamp.append(time.monotonic())
    scope.cancel()


async def _cancelled_read(name: TransportName, url: str, ledger: _Ledger) -> SemanticsCheck:
    spec = BenchSpec(tokens=100_000, tpot_ms=5, tag=f"cancel-read-{name}-{time.monotonic_ns()}")
    stamp: list[float] = []
    async with _client(name) as client:
        response = await client.send(
            client.build_request("POST", url, json=_body(spec)), stream=True
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_after, 0.05, tg.cancel_scope, stamp)
            try:
                async for _ in response.aiter_raw():
                    pass
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
        closed = await ledger.closed_at(spec.tag)
    return _verdict(
        name,
        "cancelled read + shielded aclose closes the socket",
        bool(stamp) and closed is not None,
        stamp[0] if stamp else 0.0,
        closed,
    )


async def _plain_aclose(name: TransportName, url: str, ledger: _Ledger) -> SemanticsCheck:
    spec = BenchSpec(tokens=100_000, tpot_ms=5, tag=f"aclose-{name}-{time.monotonic_ns()}")
    async with _client(name) as client:
        response = await client.send(
            client.build_request("POST", url, json=_body(spec)), stream=True
        )
        async for _ in response.aiter_raw():
            break
        stop = time.monotonic()
        await response.aclose()
        closed = await ledger.closed_at(spec.tag)
    return _verdict(name, "aclose mid-body closes the socket", closed is not None, stop, closed)


async def _cancel_before_headers(name: TransportName, url: str, ledger: _Ledger) -> SemanticsCheck:
    spec = BenchSpec(
        tokens=5, tpot_ms=5, head_ms=5_000, tag=f"headers-{name}-{time.monotonic_ns()}"
    )
    stamp: list[float] = []
    async with _client(name) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_after, 0.2, tg.cancel_scope, stamp)
            await client.send(client.build_request("POST", url, json=_body(spec)), stream=True)
        closed = await ledger.closed_at(spec.tag)
    return _verdict(
        name,
        "cancel before headers closes the socket",
        bool(stamp) and closed is not None,
        stamp[0] if stamp else 0.0,
        closed,
    )


def _verdict(
    name: str, check: str, passed: bool, stop: float, closed: float | None
) -> SemanticsCheck:
    close_ms = None if closed is None else round((closed - stop) * 1000, 3)
    detail = "provider saw no close within 2 s" if closed is None else f"closed after {close_ms} ms"
    return SemanticsCheck(name, check, passed, detail, close_ms)


async def _read_timeout(name: TransportName, url: str, _: _Ledger) -> SemanticsCheck:
    spec = BenchSpec(tokens=2, tpot_ms=2_000, tag=f"timeout-{name}")
    return await _expect(
        name,
        "read timeout raises httpx.ReadTimeout",
        httpx.ReadTimeout,
        url,
        spec,
        read_timeout=0.3,
    )


async def _refused(name: TransportName, _url: str, _: _Ledger) -> SemanticsCheck:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/messages"
        return await _expect(
            name,
            "refused connection raises httpx.ConnectError",
            httpx.ConnectError,
            url,
            BenchSpec(tokens=1),
        )


async def _dropped(name: TransportName, _url: str, _: _Ledger) -> SemanticsCheck:
    async with _dropping_server() as url:
        return await _expect(
            name,
            "drop mid-body raises httpx.TransportError",
            httpx.TransportError,
            url,
            BenchSpec(tokens=1),
        )


async def _expect(
    name: TransportName,
    check: str,
    expected: type[Exception],
    url: str,
    spec: BenchSpec,
    read_timeout: float = 5.0,
) -> SemanticsCheck:
    async with _client(name, read_timeout=read_timeout) as client:
        try:
            async with client.stream("POST", url, json=_body(spec)) as response:
                async for _ in response.aiter_raw():
                    pass
        except httpx.HTTPError as exc:
            raised = type(exc).__name__
            return SemanticsCheck(name, check, isinstance(exc, expected), f"raised {raised}")
    return SemanticsCheck(name, check, False, "no exception")


async def _hangup(name: TransportName, _url: str, _: _Ledger) -> SemanticsCheck:
    # httpcore says RemoteProtocolError or ReadError (a reset), both TransportErrors that the
    # relay reports as upstream_connect; a TimeoutException would be reported as a timeout.
    async with _dropping_server(head=False) as url:
        check = await _expect(
            name,
            "hang-up before headers raises a TransportError, not a timeout",
            httpx.TransportError,
            url,
            BenchSpec(tokens=1),
        )
    if "Timeout" in check.detail:
        check.passed = False
    return check


@asynccontextmanager
async def _dropping_server(*, head: bool = True) -> AsyncIterator[str]:
    """A server that sends a chunked head and half a chunk (or nothing), then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if not head:
            writer.close()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
            b"content-type: text/event-stream\r\n\r\n20\r\nevent: ping\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/messages"
    finally:
        server.close()
        await server.wait_closed()


_CHECKS: Final[tuple[Callable[[TransportName, str, _Ledger], Awaitable[SemanticsCheck]], ...]] = (
    _cancelled_read,
    _plain_aclose,
    _cancel_before_headers,
    _read_timeout,
    _refused,
    _dropped,
    _hangup,
)


async def check_semantics(base_url: str, repeats: int = 3) -> list[SemanticsCheck]:
    """Every check on every transport, ``repeats`` times, against the fast mock at
    ``base_url``; one row per check and transport (failed if any repeat failed, the slowest
    close reported)."""
    url = f"{base_url}/v1/messages"
    rows: list[SemanticsCheck] = []
    async with httpx.AsyncClient() as client:
        ledger = _Ledger(base_url, client)
        for name in TRANSPORTS:
            for check in _CHECKS:
                runs = [await check(name, url, ledger) for _ in range(repeats)]
                failed = [r for r in runs if not r.passed]
                closes = [r.close_ms for r in runs if r.close_ms is not None]
                worst = failed[0] if failed else max(runs, key=lambda r: r.close_ms or 0.0)
                detail = worst.detail + (f" (slowest of {repeats})" if closes else "")
                rows.append(replace(worst, detail=detail, close_ms=max(closes, default=None)))
    return rows


# -- the command -------------------------------------------------------------------------------


@dataclass(slots=True)
class TransportReport:
    """What ``relay bench transports`` measured."""

    throughput: dict[str, dict[str, Any]]
    semantics: list[SemanticsCheck]
    options: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "throughput": self.throughput,
            "semantics": [asdict(c) for c in self.semantics],
            "options": self.options,
        }

    def markdown(self) -> str:
        """Two tables: throughput per transport, and every semantics check."""
        lines = [
            "| transport | streams | failed | client CPU ms / 1,000 events | TTFT p50 | TTFT p99 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in self.throughput.items():
            lines.append(
                f"| {name} | {row['streams']} | {row['failed']} |"
                f" {row['cpu_ms_per_1000_events']} | {row['ttft_p50_ms']} ms |"
                f" {row['ttft_p99_ms']} ms |"
            )
        lines += ["", "| transport | check | result | detail |", "| --- | --- | --- | --- |"]
        for check in self.semantics:
            verdict = "pass" if check.passed else "FAIL"
            lines.append(f"| {check.transport} | {check.check} | {verdict} | {check.detail} |")
        return "\n".join(lines) + "\n"


async def _run(url: str, options: dict[str, Any]) -> TransportReport:
    semantics = await check_semantics(url)
    throughput = await measure_throughput(
        f"{url}/v1/messages",
        rounds=options["rounds"],
        streams=options["streams"],
        concurrency=options["concurrency"],
        tokens=options["tokens"],
    )
    return TransportReport(throughput, semantics, options)


def run_transports_bench(options: dict[str, Any], out: Path | None = None) -> int:
    """Run, print the tables, write ``transports.json`` / ``transports.md`` into ``out``.

    Returns 1 when any semantics check failed.
    """
    from service.bench.arms import fast_mock

    install_event_loop()
    # The mock runs in its own process: the client CPU measured here must be the client's.
    log = (out or Path("artifacts/bench/transports")) / "fastmock.log"
    with fast_mock(log) as (url, _):
        report = asyncio.run(_run(url, options))
    text = report.markdown()
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "transports.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        (out / "transports.md").write_text(text)
        print(f"written: {out / 'transports.md'}, {out / 'transports.json'}")
    return 0 if all(c.passed for c in report.semantics) else 1


def _command(args: argparse.Namespace) -> int:
    options = {
        "rounds": args.rounds,
        "streams": args.streams,
        "concurrency": args.concurrency,
        "tokens": args.tokens,
    }
    return run_transports_bench(options, Path(args.out))


def add_bench_command(
    bench_subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``transports`` to the ``relay bench`` group."""
    p = bench_subparsers.add_parser(
        "transports", help="httpx's transport vs httpx-aiohttp: CPU, TTFT, cancel semantics"
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per transport (interleaved)")
    p.add_argument("--streams", type=int, default=200, help="streams per round")
    p.add_argument("--concurrency", type=int, default=50, help="streams in flight")
    p.add_argument("--tokens", type=int, default=200, help="content deltas per stream")
    p.add_argument("--out", default="artifacts/bench/transports", help="output directory")
    p.set_defaults(func=_command)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m service.bench.transports")
    add_bench_command(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["transports", *sys.argv[1:]])
    sys.exit(parsed.func(parsed))
