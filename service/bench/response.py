"""The load generator's HTTP/1.1 response parser and the per-stream analysis it feeds.

The hot path (:meth:`ResponseParser.feed`, once per socket read) only undoes the chunked
transfer coding and keeps each body piece with the time it was read. Everything else (SSE
decoding, JSON, text comparison) happens after the stream ended, in :func:`analyse`, so the
timestamps are taken before any parsing work queues up behind them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from service.bench.fastmock import expected_text
from service.sse import ServerSentEvent, SSEDecodeError, SSEDecoder

__all__ = ["ResponseParser", "StreamSample", "Wire", "analyse", "content_text"]

Wire = Literal["anthropic", "openai"]

_SIZE, _DATA, _CRLF, _TRAILER, _LENGTH, _UNTIL_CLOSE = range(6)
_HEAD_LIMIT: Final = 64 * 1024
_DECODE: Final = msgspec.json.Decoder()


class ResponseParser:
    """One response, fed socket reads as they arrive (``live``: decode SSE as it comes)."""

    __slots__ = (
        "_buffer",
        "_decoder",
        "_remaining",
        "_state",
        "_wire",
        "content_seen",
        "done",
        "error",
        "headers",
        "keep_alive",
        "pieces",
        "status",
    )

    def __init__(self, wire: Wire, *, live: bool = False) -> None:
        self._buffer = bytearray()
        self._state = -1  # reading the head
        self._remaining = 0
        self._wire = wire
        self._decoder = SSEDecoder() if live else None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.pieces: list[tuple[float, bytes]] = []
        """Body bytes (transfer coding removed) with the ``perf_counter()`` of their read."""
        self.done = False
        self.keep_alive = True
        self.error: str | None = None
        self.content_seen = 0
        """Content deltas seen so far (``live`` parsers only)."""

    def feed(self, now: float, data: bytes) -> None:
        """One socket read, read at ``now``."""
        self._buffer += data
        if self._state < 0 and not self._head():
            return
        self._body(now)

    def eof(self, now: float) -> None:
        """The connection closed."""
        self.keep_alive = False
        if self._state == _UNTIL_CLOSE:
            self.done = True
        elif not self.done and self.error is None:
            self.error = "connection closed mid-response" if self.status else "no response"

    def _head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _HEAD_LIMIT:
                self.error = "response head too large"
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        self.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.keep_alive = self.headers.get("connection", "").lower() != "close"
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._state = _SIZE
        elif "content-length" in self.headers:
            self._state = _LENGTH
            self._remaining = int(self.headers["content-length"])
            self.done = self._remaining == 0
        else:
            self._state = _UNTIL_CLOSE
            self.keep_alive = False
        return True

    def _body(self, now: float) -> None:
        buffer, pos = self._buffer, 0
        while not self.done:
            state = self._state
            if state in (_DATA, _LENGTH, _UNTIL_CLOSE):
                available = len(buffer) - pos
                take = available if state == _UNTIL_CLOSE else min(self._remaining, available)
                if take <= 0:
                    break
                self._piece(now, bytes(buffer[pos : pos + take]))
                pos += take
                self._remaining -= take
                if self._remaining == 0 and state != _UNTIL_CLOSE:
                    self._state = _CRLF if state == _DATA else _SIZE
                    self.done = state == _LENGTH
            elif state == _CRLF:
                if len(buffer) - pos < 2:
                    break
                pos += 2
                self._state = _SIZE
            else:  # _SIZE or _TRAILER: a line
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    break
                line = bytes(buffer[pos:end])
                pos = end + 2
                if state == _TRAILER:
                    self.done = line == b""
                else:
                    self._remaining = int(line.split(b";")[0], 16)
                    self._state = _DATA if self._remaining else _TRAILER
        del buffer[:pos]

    def _piece(self, now: float, data: bytes) -> None:
        self.pieces.append((now, data))
        if self._decoder is not None:
            for event in self._decoder.feed(data):
                if content_text(self._wire, event):
                    self.content_seen += 1


def content_text(wire: Wire, event: ServerSentEvent) -> str | None:
    """The content text an event carries (``None`` for events that carry none)."""
    if wire == "anthropic":
        if event.event != "content_block_delta":
            return None
        delta = _DECODE.decode(event.data).get("delta", {})
        return delta.get("text") if delta.get("type") == "text_delta" else None
    data = event.data
    if not data.startswith("{"):
        return None
    payload: dict[str, Any] = _DECODE.decode(data)
    choices = payload.get("choices") or []
    content = choices[0].get("delta", {}).get("content") if choices else None
    return content if isinstance(content, str) and content else None


@dataclass(slots=True)
class StreamSample:
    """One stream as the client saw it."""

    ok: bool
    """HTTP 200 and a complete body."""
    error: str | None = None
    ttft: float | None = None
    """Seconds from the request write to the first content delta."""
    gaps: list[float] = field(default_factory=list)
    """Seconds between consecutive content deltas (0 where two came in one read)."""
    count: int = 0
    """Content deltas received."""
    text_ok: bool = False
    """The concatenated content is byte for byte the fast mock's answer."""


def analyse(parser: ResponseParser, wire: Wire, sent_at: float, tokens: int) -> StreamSample:
    """Decode a finished response and measure it against the stream the mock sent."""
    if parser.status != 200:
        detail = b"".join(p for _, p in parser.pieces)[:200].decode("utf-8", "replace")
        return StreamSample(ok=False, error=f"HTTP {parser.status or '-'} {detail}".strip())
    decoder = SSEDecoder()
    arrivals: list[float] = []
    texts: list[str] = []
    try:
        for now, piece in parser.pieces:
            for event in decoder.feed(piece):
                text = content_text(wire, event)
                if text is not None:
                    arrivals.append(now)
                    texts.append(text)
    except (SSEDecodeError, msgspec.DecodeError) as exc:
        return StreamSample(ok=False, error=f"undecodable stream: {exc}")
    ok = parser.done and parser.error is None
    return StreamSample(
        ok=ok,
        error=None if ok else (parser.error or "incomplete"),
        ttft=arrivals[0] - sent_at if arrivals else None,
        gaps=[b - a for a, b in itertools.pairwise(arrivals)],
        count=len(arrivals),
        text_ok="".join(texts) == expected_text(tokens),
    )
