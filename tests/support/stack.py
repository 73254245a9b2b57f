"""The relay in front of the mock provider, both served by real uvicorn servers on loopback.

Usage::

    with relay_stack({"max_request_bytes": 4096}, MockSettings(ttft_ms=150, tpot_ms=10)) as s:
        recording = record_stream(f"{s.relay_url}/v1/messages", body)
        s.upstream.exchanges()  # what reached the mock: request headers/body, response bytes
        s.ledger.records()      # the mock's generation ledger

The mock is wrapped in an :class:`UpstreamTap`, an ASGI middleware that records every request
the mock received (headers included: the mock itself keeps no headers, so this is the only way
to see which key reached the provider) and the exact bytes it answered. ``record_stream`` reads
an SSE response block by block with the arrival time of each block, for timing orderings and
byte-level comparisons.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from litestar import Litestar

from service.app import create_app
from service.config import Settings
from service.mock import GenerationLedger, MockSettings, create_mock_app
from tests.support.servers import run_uvicorn

__all__ = [
    "FAST_MOCK",
    "Block",
    "Exchange",
    "Recording",
    "Stack",
    "UpstreamTap",
    "record_stream",
    "relay_stack",
    "split_blocks",
]

FAST_MOCK = MockSettings(ttft_ms=150.0, tpot_ms=10.0)
"""Mock timing for tests: a visible TTFT, then tokens fast enough to keep suites short."""

_BODY_LIMIT = 1 << 20

# Plain ASGI shapes: the tap only reads a few keys and passes everything else on untouched.
_Message = MutableMapping[str, Any]
_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[..., Awaitable[None]]


@dataclass(slots=True)
class Exchange:
    """One HTTP request the mock received, and what it answered (recorded by the tap)."""

    method: str
    path: str
    headers: dict[str, str]
    """Request headers, names lower-cased (a repeated header keeps its last value)."""
    body: bytes = b""
    """Request body as received."""
    status: int | None = None
    """Response status, once the mock started answering."""
    response_headers: dict[str, str] = field(default_factory=dict)
    """Response headers, names lower-cased."""
    response_body: bytearray = field(default_factory=bytearray)
    """Response body bytes in order (the first MiB; see ``truncated``)."""
    truncated: bool = False
    """The response body was longer than the tap keeps."""
    complete: bool = False
    """The mock finished the response (``more_body`` false); False for a dropped connection."""


class UpstreamTap:
    """ASGI middleware around the mock: records each HTTP exchange, passes everything through.

    Written from the mock server's thread, read from the test's thread: the lock guards the
    list, and readers get the exchanges only through :meth:`exchanges`.
    """

    def __init__(self, app: _ASGIApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        exchange = Exchange(
            method=scope["method"],
            path=scope["path"],
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
        )
        with self._lock:
            self._exchanges.append(exchange)

        async def tapped_receive() -> _Message:
            message = await receive()
            if message["type"] == "http.request":
                exchange.body += message.get("body", b"")
            return message

        async def tapped_send(message: _Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.response_headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1")
                    for k, v in message.get("headers", [])
                }
            elif message["type"] == "http.response.body":
                self._keep(exchange, message.get("body", b""))
                exchange.complete = not message.get("more_body", False)
            await send(message)

        await self._app(scope, tapped_receive, tapped_send)

    @staticmethod
    def _keep(exchange: Exchange, chunk: bytes) -> None:
        room = _BODY_LIMIT - len(exchange.response_body)
        if len(chunk) > room:
            exchange.truncated = True
            chunk = chunk[:room]
        exchange.response_body += chunk

    def exchanges(self, path: str | None = "/v1/messages") -> list[Exchange]:
        """Recorded exchanges, oldest first; ``path=None`` includes every route."""
        with self._lock:
            return [e for e in self._exchanges if path is None or e.path == path]

    def for_stream(self, stream_id: str) -> list[Exchange]:
        """The upstream attempts of one relay stream (matched on ``x-relay-stream-id``)."""
        return [e for e in self.exchanges() if e.headers.get("x-relay-stream-id") == stream_id]

    def clear(self) -> None:
        """Forget what was recorded so far."""
        with self._lock:
            self._exchanges.clear()


@dataclass(frozen=True, slots=True)
class Stack:
    """A running mock + relay pair."""

    relay_url: str
    """Base URL of the relay, ``http://127.0.0.1:<port>``."""
    mock_url: str
    """Base URL of the mock provider (the relay's upstream)."""
    ledger: GenerationLedger
    """The mock's generation ledger (live: read it with ``records()`` / ``get()``)."""
    upstream: UpstreamTap
    """What reached the mock, and the bytes it answered."""
    settings: Settings
    """The relay's settings."""
    app: Litestar
    """The relay app (``app.state["relay"]`` is its :class:`~service.app.RelayState`)."""


@contextmanager
def relay_stack(
    settings_overrides: Mapping[str, Any] | None = None,
    mock_settings: MockSettings | None = None,
    *,
    ledger: GenerationLedger | None = None,
    http: str = "auto",
    shutdown_timeout: float = 3.0,
    **app_kwargs: Any,
) -> Iterator[Stack]:
    """Serve the mock, then the relay pointed at it; yield the :class:`Stack`.

    ``settings_overrides`` are :class:`~service.config.Settings` fields (``upstream_url`` is
    set to the mock unless given). ``mock_settings`` defaults to :data:`FAST_MOCK`.
    ``app_kwargs`` go to :func:`service.app.create_app` (``observer_factory``, ``plugins``,
    ...). ``http`` picks uvicorn's HTTP implementation and ``shutdown_timeout`` the grace
    in-flight requests get on exit, for both servers. Both servers are stopped when the
    block ends, the relay first.
    """
    ledger = GenerationLedger() if ledger is None else ledger
    tap = UpstreamTap(create_mock_app(mock_settings or FAST_MOCK, ledger=ledger))
    with ExitStack() as servers:
        mock_url = servers.enter_context(
            run_uvicorn(tap, http=http, shutdown_timeout=shutdown_timeout)
        )
        values = {"upstream_url": mock_url, **(settings_overrides or {})}
        settings = Settings.from_environ({}, **values)  # validated like the real thing
        app = create_app(settings, **app_kwargs)
        relay_url = servers.enter_context(
            run_uvicorn(app, http=http, shutdown_timeout=shutdown_timeout)
        )
        yield Stack(
            relay_url=relay_url,
            mock_url=mock_url,
            ledger=ledger,
            upstream=tap,
            settings=settings,
            app=app,
        )


# -- reading an SSE response with arrival times --------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """One SSE block (the lines up to a blank line), as it arrived."""

    raw: bytes
    """The block's bytes without its terminating blank line."""
    at: float
    """Arrival: seconds from just before the request was sent to the chunk that completed it."""

    @property
    def fields(self) -> list[tuple[str, str]]:
        """``(name, value)`` per field line, comments as ``("", text)``, in order."""
        out = []
        for line in self.raw.decode().split("\n"):
            name, _, value = line.partition(":")
            out.append((name, value.removeprefix(" ")))
        return out

    def first(self, name: str) -> str | None:
        """The value of the block's first ``name`` field."""
        return next((v for k, v in self.fields if k == name), None)

    @property
    def event(self) -> str | None:
        """The ``event:`` name, or None for a block without one (comment, bare ``retry:``)."""
        return self.first("event")

    @property
    def data(self) -> str | None:
        """The ``data:`` lines joined with LF, or None when there are none."""
        values = [v for k, v in self.fields if k == "data"]
        return "\n".join(values) if values else None

    @property
    def id(self) -> str | None:
        """The ``id:`` value, if the block has one."""
        return self.first("id")

    @property
    def is_comment_only(self) -> bool:
        """Every line is a comment or a ``retry:`` field: nothing an SSE client dispatches."""
        return all(k in ("", "retry") for k, _ in self.fields)


@dataclass(frozen=True, slots=True)
class Recording:
    """A whole response read with :func:`record_stream`."""

    status: int
    headers: httpx.Headers
    body: bytes
    """The body exactly as received (no decompression)."""
    blocks: list[Block]
    """The body split into SSE blocks, in order."""
    first_byte_at: float | None
    """Arrival of the first body byte (seconds from the request)."""
    end_at: float
    """When the body ended."""

    def events(self) -> list[Block]:
        """Blocks that carry an ``event:`` name (what an SSE client dispatches)."""
        return [b for b in self.blocks if b.event is not None]

    def first_event(self, name: str) -> Block:
        """The first block named ``name``; raises LookupError when there is none."""
        for block in self.blocks:
            if block.event == name:
                return block
        raise LookupError(f"no {name!r} event in the recording")


def split_blocks(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete LF-delimited SSE blocks in ``buffer`` and the incomplete rest.

    The relay and the mock write LF line ends only, so a blank line is exactly ``\\n\\n``.
    """
    parts = buffer.split(b"\n\n")
    return parts[:-1], parts[-1]


def record_stream(
    url: str,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Recording:
    """POST ``body`` as JSON and read the whole response, timing each SSE block's arrival.

    The raw byte stream is read (``iter_raw``): nothing is decompressed or re-chunked.
    """
    with httpx.Client(timeout=timeout) as client:
        request = client.build_request("POST", url, json=dict(body), headers=dict(headers or {}))
        start = time.perf_counter()
        response = client.send(request, stream=True)
        blocks: list[Block] = []
        chunks: list[bytes] = []
        pending = b""
        first_byte_at: float | None = None
        try:
            for chunk in response.iter_raw():
                now = time.perf_counter() - start
                if first_byte_at is None and chunk:
                    first_byte_at = now
                chunks.append(chunk)
                complete, pending = split_blocks(pending + chunk)
                blocks.extend(Block(raw, now) for raw in complete)
            end_at = time.perf_counter() - start
        finally:
            response.close()
    return Recording(
        status=response.status_code,
        headers=response.headers,
        body=b"".join(chunks),
        blocks=blocks,
        first_byte_at=first_byte_at,
        end_at=end_at,
    )
