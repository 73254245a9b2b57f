"""A fast SSE provider for benchmarks: raw asyncio, precomputed frames, both wire formats.

The project's mock (:mod:`service.mock`) is a Litestar app built to reproduce failures; at a
thousand concurrent streams its per-token ASGI path would cost as much CPU as the relay under
test. This one is a bare :class:`asyncio.Protocol` HTTP/1.1 server (uvloop when installed) that
writes precomputed chunked frames on a fixed schedule, so it is never the bottleneck:

- ``POST .../v1/messages``: Anthropic Messages SSE (``message_start``, ``ping``,
  ``content_block_start``, one ``text_delta`` per token, ``content_block_stop``,
  ``message_delta``, ``message_stop``);
- ``POST .../chat/completions``: OpenAI Chat Completions chunks (role chunk, one ``content``
  chunk per token, the ``finish_reason`` chunk, a usage chunk when
  ``stream_options.include_usage`` asks for it, ``data: [DONE]``);
- ``GET /bench/ledger?tags=a,b``: per tag, when the generation started, how many tokens were
  written, and when it completed or when the client's socket closed (``time.monotonic()``,
  which is ``CLOCK_MONOTONIC`` and so comparable with other processes on the host);
- ``DELETE /bench/ledger``, ``GET /healthz``.

Gateways rewrite bodies and drop unknown fields, so the stream's shape travels in the last user
message's text (:func:`spec_prompt`): ``bench tokens=20 tpot_ms=50 ttft_ms=0 tag=x``. The text of
token ``i`` is :func:`token_text` ``(i)``: multi-byte characters, quotes, a backslash and a line
break included, so a client can check byte fidelity against :func:`expected_text`.

Run: ``python -m service.bench.fastmock --port 8199``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal, cast
from urllib.parse import parse_qs

import msgspec

from service.sse import encode_event

__all__ = [
    "BenchSpec",
    "FastMockServer",
    "expected_text",
    "install_event_loop",
    "parse_spec",
    "spec_prompt",
    "token_text",
]

Wire = Literal["anthropic", "openai"]

_WORDS: Final = (
    " alpha",
    " beta",
    " gamma",
    " café",
    " naïve",
    " 世界",
    " 🚀",
    ' "quoted"',
    " back\\slash",
    " line\nbreak",
    " delta",
    " ok",
)
_ENC: Final = msgspec.json.Encoder()
_LEDGER_MAX: Final = 200_000
_SPEC: Final = re.compile(r"\bbench((?:\s+\w+=[\w.+\-]+)+)")
_HEAD_LIMIT: Final = 64 * 1024
_OPENAI_ID: Final = "chatcmpl-bench"


def token_text(index: int) -> str:
    """The text of token ``index`` (the same for every wire and every run)."""
    return _WORDS[index % len(_WORDS)]


def expected_text(tokens: int) -> str:
    """The whole answer of a stream of ``tokens`` tokens."""
    return "".join(token_text(i) for i in range(tokens))


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """The shape of one generation, sent in the prompt so every gateway passes it on."""

    tokens: int = 20
    """Content tokens (one delta each)."""
    tpot_ms: float = 50.0
    """Milliseconds between two content deltas (on a fixed schedule, no drift)."""
    ttft_ms: float = 0.0
    """Milliseconds from the response head to the first content delta."""
    head_ms: float = 0.0
    """Milliseconds before the response head is written (a slow provider before headers)."""
    tag: str = "-"
    """Ledger key: the client asks the ledger about its stream by this tag."""


def spec_prompt(spec: BenchSpec) -> str:
    """The user message that asks the fast mock for ``spec``."""
    return (
        f"bench tokens={spec.tokens} tpot_ms={_number(spec.tpot_ms)}"
        f" ttft_ms={_number(spec.ttft_ms)} head_ms={_number(spec.head_ms)} tag={spec.tag}"
    )


def _number(value: float) -> str:
    # Never exponent notation ("3.6e+06"): the prompt is parsed by a simple pattern.
    return str(int(value)) if value == int(value) else f"{value:.6f}".rstrip("0")


def parse_spec(text: str) -> BenchSpec:
    """The spec in ``text`` (defaults for what is missing or unreadable)."""
    match = _SPEC.search(text)
    if match is None:
        return BenchSpec()
    fields = dict(pair.split("=", 1) for pair in match.group(1).split())
    defaults = BenchSpec()
    try:
        return BenchSpec(
            tokens=max(1, int(fields.get("tokens", defaults.tokens))),
            tpot_ms=max(0.0, float(fields.get("tpot_ms", defaults.tpot_ms))),
            ttft_ms=max(0.0, float(fields.get("ttft_ms", defaults.ttft_ms))),
            head_ms=max(0.0, float(fields.get("head_ms", defaults.head_ms))),
            tag=fields.get("tag", defaults.tag),
        )
    except ValueError:
        return defaults


# -- frames (chunked transfer coding included) -------------------------------------------------


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    return encode_event(_ENC.encode(payload).decode(), event=event)


def _anthropic(payload: dict[str, Any]) -> bytes:
    return _sse(payload, event=payload["type"])


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": _OPENAI_ID,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench-mock",
        "choices": [choice],
    }


@lru_cache(maxsize=64)
def _delta_frame(wire: Wire, index: int) -> bytes:
    text = token_text(index)
    if wire == "anthropic":
        delta = {"type": "text_delta", "text": text}
        payload = {"type": "content_block_delta", "index": 0, "delta": delta}
        return _chunk(_anthropic(payload))
    return _chunk(_sse(_openai_chunk({"content": text})))


def _head_frames(wire: Wire, tag: str) -> bytes:
    if wire == "openai":
        return _chunk(_sse(_openai_chunk({"role": "assistant", "content": ""})))
    usage = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    message: dict[str, Any] = {
        "id": f"msg_bench_{tag}",
        "type": "message",
        "role": "assistant",
        "model": "bench-mock",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    block = {"type": "text", "text": ""}
    return _chunk(
        _anthropic({"type": "message_start", "message": message})
        + _anthropic({"type": "ping"})
        + _anthropic({"type": "content_block_start", "index": 0, "content_block": block})
    )


def _tail_frames(wire: Wire, tokens: int, include_usage: bool) -> bytes:
    if wire == "openai":
        body = _sse(_openai_chunk({}, finish="stop"))
        if include_usage:
            usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
            body += _sse({**_openai_chunk({}), "choices": [], "usage": usage})
        return _chunk(body + b"data: [DONE]\n\n") + b"0\r\n\r\n"
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    return (
        _chunk(
            _anthropic({"type": "content_block_stop", "index": 0})
            + _anthropic(
                {"type": "message_delta", "delta": delta, "usage": {"output_tokens": tokens}}
            )
            + _anthropic({"type": "message_stop"})
        )
        + b"0\r\n\r\n"
    )


_STREAM_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
)


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 204: b"No Content", 400: b"Bad Request", 404: b"Not Found"}[status]
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        reason,
        content_type,
        len(body),
        body,
    )


# -- the ledger --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    started_at: float
    tokens: int = 0
    completed_at: float | None = None
    closed_at: float | None = None


class _Ledger:
    """What happened to each tagged generation; bounded, oldest forgotten first."""

    def __init__(self) -> None:
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def start(self, tag: str) -> _Record:
        record = _Record(started_at=time.monotonic())
        self._records[tag] = record
        self._records.move_to_end(tag)
        while len(self._records) > _LEDGER_MAX:
            self._records.popitem(last=False)
        return record

    def lookup(self, tags: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for tag in tags:
            record = self._records.get(tag)
            if record is not None:
                out[tag] = {
                    "started_at": record.started_at,
                    "tokens": record.tokens,
                    "completed_at": record.completed_at,
                    "closed_at": record.closed_at,
                }
        return out

    def reset(self) -> None:
        self._records.clear()


# -- the server --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: str
    body: bytes


class _Connection(asyncio.Protocol):
    """One client connection: parses requests one after another, plays one stream at a time."""

    def __init__(self, ledger: _Ledger, on_close: Callable[[_Connection], None]) -> None:
        self._ledger = ledger
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._record: _Record | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._next_request()

    def eof_received(self) -> bool:
        # The client closed its side: for a streaming client that is a Stop.
        self._close_seen()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_seen()
        self._writable.set()
        if self._task is not None:
            self._task.cancel()
        self._on_close(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _close_seen(self) -> None:
        if not self._closed:
            self._closed = True
            if self._record is not None and self._record.completed_at is None:
                self._record.closed_at = time.monotonic()

    def _next_request(self) -> None:
        request = _parse_request(self._buffer)
        if request is None:
            if len(self._buffer) > _HEAD_LIMIT and b"\r\n\r\n" not in self._buffer:
                self._write(_response(400, b'{"error":"head too large"}'))
                self._abort()
            return
        if request.method == "POST" and request.path.endswith(("/messages", "/completions")):
            wire: Wire = "anthropic" if request.path.endswith("/messages") else "openai"
            self._task = asyncio.get_running_loop().create_task(self._stream(wire, request.body))
            self._task.add_done_callback(self._stream_done)
        else:
            self._write(self._control(request))
            if self._buffer:
                self._next_request()

    def _control(self, request: _Request) -> bytes:
        if request.path == "/healthz":
            return _response(200, b'{"status":"ok"}')
        if request.path == "/bench/ledger" and request.method == "GET":
            raw = parse_qs(request.query).get("tags", [""])[0]
            tags = [t for t in raw.split(",") if t]
            return _response(200, _ENC.encode(self._ledger.lookup(tags)))
        if request.path == "/bench/ledger" and request.method == "DELETE":
            self._ledger.reset()
            return _response(204, b"")
        return _response(404, b'{"error":"not found"}')

    def _stream_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        self._record = None
        if not task.cancelled() and task.exception() is not None:
            self._abort()
        elif not self._closed and self._buffer:
            self._next_request()

    async def _stream(self, wire: Wire, body: bytes) -> None:
        try:
            spec, include_usage = _read_body(body)
        except ValueError as exc:
            self._write(_response(400, _ENC.encode({"error": str(exc)})))
            return
        loop = asyncio.get_running_loop()
        record = self._record = self._ledger.start(spec.tag)
        if spec.head_ms:
            await asyncio.sleep(spec.head_ms / 1000)
        self._write(
            _STREAM_HEAD
            + b"x-bench-tag: %s\r\n\r\n" % spec.tag.encode()
            + _head_frames(wire, spec.tag)
        )
        first = loop.time() + spec.ttft_ms / 1000
        for index in range(spec.tokens):
            delay = first + index * spec.tpot_ms / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not self._writable.is_set():
                await self._writable.wait()
            if self._closed:
                return
            self._write(_delta_frame(wire, index % len(_WORDS)))
            record.tokens = index + 1
        self._write(_tail_frames(wire, spec.tokens, include_usage))
        record.completed_at = time.monotonic()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(data)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _parse_request(buffer: bytearray) -> _Request | None:
    """Take one complete request off ``buffer`` (``None`` while it is incomplete)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    method, target, _ = [*lines[0].split(" "), "", ""][:3]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parsed = _dechunk(buffer, start)
        if parsed is None:
            return None
        body, consumed = parsed
    else:
        length = int(headers.get("content-length", "0") or 0)
        if len(buffer) < start + length:
            return None
        body, consumed = bytes(buffer[start : start + length]), start + length
    del buffer[:consumed]
    path, _, query = target.partition("?")
    return _Request(method=method, path=path, query=query, body=body)


def _dechunk(buffer: bytearray, pos: int) -> tuple[bytes, int] | None:
    parts: list[bytes] = []
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        if len(buffer) < line_end + 2 + size + 2:
            return None
        parts.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
        pos = line_end + 2 + size + 2


def _read_body(body: bytes) -> tuple[BenchSpec, bool]:
    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(request, dict) or not request.get("messages"):
        raise ValueError("body has no messages")
    content = request["messages"][-1].get("content", "")
    if isinstance(content, list):
        content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    options = request.get("stream_options") or {}
    return parse_spec(str(content)), bool(options.get("include_usage"))


class FastMockServer:
    """The listening server; :meth:`start` in a running loop, :meth:`close` when done."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._ledger = _Ledger()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; :attr:`port` is the bound port afterwards."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    def _protocol(self) -> _Connection:
        connection = _Connection(self._ledger, self._connections.discard)
        self._connections.add(connection)
        return connection

    def lookup(self, tags: list[str]) -> dict[str, dict[str, Any]]:
        """The ledger records of ``tags`` (what ``GET /bench/ledger`` answers)."""
        return self._ledger.lookup(tags)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection._abort()
            await self._server.wait_closed()


def install_event_loop() -> str:
    """Use uvloop when it is installed (it is a relay dependency); returns the loop's name."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep stdlib working
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def _serve(host: str, port: int) -> None:
    server = FastMockServer(host, port)
    await server.start()
    print(f"fastmock listening on {server.host}:{server.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m service.bench.fastmock --port N``: serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m service.bench.fastmock")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8199)
    args = parser.parse_args(argv)
    install_event_loop()
    try:
        asyncio.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
