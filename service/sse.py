"""Server-Sent Events: an incremental WHATWG decoder and a safe encoder.

The decoder follows the WHATWG HTML "event stream interpretation" rules and is built for the
relay's hot path: every upstream chunk is split into lines once with ``bytes.splitlines`` (C
speed, CR / LF / CRLF aware), only the unterminated tail of a line is carried between chunks,
and nothing already scanned is scanned again. Each dispatched event keeps the exact bytes of
its block (``raw``) so the relay can forward what the provider sent without re-encoding it.

Chunk boundaries never change the result: the same bytes fed in any chunking give the same
events, ``raw`` included. The one place this costs latency is a blank line ending in a CR that
is the last byte of a chunk: an LF in the next chunk would belong to the same line end (and
to ``raw``), so that event is dispatched by the next ``feed()`` (or by ``close()``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "SSEDecodeError",
    "SSEDecoder",
    "SSEEncodeError",
    "SSELimitError",
    "ServerSentEvent",
    "encode_comment",
    "encode_event",
]

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A
_SPACE = 0x20
# int() refuses longer digit strings (CPython's guard against quadratic parsing). A retry
# that long is not a usable delay anyway, so it is ignored like any other unusable value.
_MAX_RETRY_DIGITS = 4000


# -- encoder -----------------------------------------------------------------------------


class SSEEncodeError(ValueError):
    """A field cannot be encoded without changing the event's meaning."""


def _check_single_line(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise SSEEncodeError(f"SSE {name} must not contain CR or LF: {value!r}")


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form
        raise SSEEncodeError(f"SSE text is not encodable as UTF-8: {exc.reason}") from exc


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,  # the SSE field is called id
    retry: int | None = None,
) -> bytes:
    """Encode one event. Multi-line ``data`` becomes several ``data:`` lines.

    CR, LF and CRLF inside ``data`` all become line breaks, so the decoder returns them as
    ``"\\n"``. Raises :class:`SSEEncodeError` for CR/LF in ``event`` or ``id``, NUL in ``id``
    (a decoder would ignore it), a negative ``retry``, or text with no UTF-8 form.
    """
    parts: list[str] = []
    if event is not None:
        _check_single_line("event name", event)
        parts.append(f"event: {event}\n")
    if id is not None:
        _check_single_line("id", id)
        if "\0" in id:
            raise SSEEncodeError("SSE id must not contain NUL")
        parts.append(f"id: {id}\n")
    if retry is not None:
        if retry < 0:
            raise SSEEncodeError("SSE retry must be >= 0")
        parts.append(f"retry: {retry}\n")
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return _utf8("".join(parts))


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line (ignored by every SSE client), e.g. a heartbeat."""
    _check_single_line("comment", text)
    return _utf8(f": {text}\n\n") if text else b":\n\n"


# -- decoder -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event."""

    event: str
    """Event type; ``"message"`` when the block had no (or an empty) ``event`` field."""
    data: str
    """The block's ``data`` values joined with ``"\\n"``."""
    id: str | None
    """The last-event-id buffer at dispatch: persists across events; ``None`` if never set."""
    retry: int | None
    """A valid ``retry`` value carried in this block (the last one), else ``None``."""
    raw: bytes
    """The block's bytes as received, from its first line up to and including its blank line
    (a leading BOM excluded)."""


class SSEDecodeError(ValueError):
    """The event stream cannot be decoded (or the decoder can no longer be used)."""


class SSELimitError(SSEDecodeError):
    """A line or an event block exceeded its configured bound."""


class SSEDecoder:
    """Incremental WHATWG event-stream decoder: bytes in any chunking, events out.

    A line longer than ``max_line_bytes`` (line end excluded) or a block longer than
    ``max_event_bytes`` (``raw`` length) raises :class:`SSELimitError` as soon as the bytes
    that cross the bound arrive, so buffering stays bounded. If that chunk also completed
    events, they are returned first and the error is raised by the next ``feed()`` or
    ``close()``. Once failed or closed, ``feed()`` raises :class:`SSEDecodeError`.
    """

    def __init__(self, *, max_line_bytes: int = 1 << 20, max_event_bytes: int = 4 << 20) -> None:
        if max_line_bytes < 1 or max_event_bytes < 1:
            raise ValueError("SSE decoder bounds must be positive")
        self._max_line = max_line_bytes
        self._max_event = max_event_bytes
        self._bom_head: bytes | None = b""  # bytes seen while a BOM is still possible
        self._partial = bytearray()  # unterminated tail of the current line
        self._block: list[bytes] = []  # complete lines of the current block, as received
        self._block_len = 0
        self._after_cr = False  # the last byte seen ended a line with CR; an LF may follow
        self._deferred = False  # that CR ended a blank line: dispatch once the LF is settled
        self._data: list[str] = []
        self._type = ""
        self._retry: int | None = None
        self._last_id: str | None = None
        self._reconnection_time: int | None = None
        self._closed = False
        self._error: SSELimitError | None = None
        self._error_raised = False

    @property
    def last_event_id(self) -> str | None:
        """The last-event-id buffer: the latest valid ``id`` value, ``None`` if never set."""
        return self._last_id

    @property
    def reconnection_time(self) -> int | None:
        """The latest valid ``retry`` value anywhere in the stream, even in a block that
        dispatched nothing (e.g. an opening frame of a comment and ``retry:``)."""
        return self._reconnection_time

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered and not yet part of a dispatched event (for memory accounting)."""
        return len(self._bom_head or b"") + self._block_len + len(self._partial)

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk`` (any size, any split) and return the events it completed."""
        self._check_usable()
        data = chunk if type(chunk) is bytes else bytes(chunk)
        if self._bom_head is not None:
            data = self._strip_bom(data)
        events: list[ServerSentEvent] = []
        if not data:
            return events
        try:
            self._consume(data, events)
        except SSELimitError as exc:
            self._fail(exc)
            if not events:
                raise
            self._error_raised = False  # hand out the finished events first, raise next call
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream. An unterminated last block is discarded, never dispatched.

        Returns ``[]``, except for a stream whose very last byte is a CR ending a blank line:
        that block is complete, and its event is returned here (see the module docstring).
        Raises a limit error that ``feed()`` held back while returning finished events.
        """
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error
        events: list[ServerSentEvent] = []
        if not self._closed and self._error is None and self._deferred:
            self._dispatch(events)
        self._closed = True
        self._clear_buffers()
        return events

    # -- internals -----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            if not self._error_raised:
                self._error_raised = True
                raise self._error
            raise SSEDecodeError(f"SSE decoder failed earlier: {self._error}")
        if self._closed:
            raise SSEDecodeError("SSE decoder fed after close()")

    def _fail(self, exc: SSELimitError) -> None:
        self._error = exc
        self._error_raised = True
        self._clear_buffers()

    def _clear_buffers(self) -> None:
        self._bom_head = None
        self._partial = bytearray()
        self._block.clear()
        self._block_len = 0
        self._data = []
        self._after_cr = self._deferred = False

    def _strip_bom(self, data: bytes) -> bytes:
        # Only the stream's first three bytes can be the BOM, and they may arrive split.
        head = self._bom_head + data if self._bom_head else data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._bom_head = head
            return b""
        self._bom_head = None
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _consume(self, data: bytes, events: list[ServerSentEvent]) -> None:
        if self._after_cr:
            self._settle_cr(data[0] == _LF, events)
            if data[0] == _LF:
                data = data[1:]
        lines = data.splitlines(keepends=True)
        if not lines:
            return
        tail = lines[-1]
        if tail[-1] == _LF or tail[-1] == _CR:
            tail = b""
        else:
            lines.pop()
        if lines:
            if self._partial:
                lines[0] = bytes(self._partial) + lines[0]
                self._partial = bytearray()
            # A chunk ending in CR may end inside a CRLF. If that CR ends a blank line, the
            # dispatch waits for the next byte so that raw gets the whole line end.
            after_cr = not tail and lines[-1][-1] == _CR
            deferred = after_cr and lines[-1] == b"\r"
            if deferred:
                lines.pop()
            self._take_lines(lines, events)
            if deferred:
                self._append(b"\r", 0)
                self._deferred = True
            self._after_cr = after_cr
        if tail:
            self._partial += tail
            size = len(self._partial)
            if size > self._max_line or self._block_len + size > self._max_event:
                raise self._limit_error(size, size)

    def _settle_cr(self, lf_follows: bool, events: list[ServerSentEvent]) -> None:
        """The byte after a CR line end arrived: an LF joins that line end (and ``raw``)."""
        self._after_cr = False
        if lf_follows:
            self._append(b"\n", 0)
        if self._deferred:
            self._deferred = False
            self._dispatch(events)

    def _take_lines(self, lines: list[bytes], events: list[ServerSentEvent]) -> None:
        """Account and interpret complete lines: the per-line hot path, kept in one loop."""
        max_line, max_event, block = self._max_line, self._max_event, self._block
        for line in lines:
            size = len(line)
            end = size - 1  # content length: the line end is CR, LF or CRLF
            if end and line[end] == _LF and line[end - 1] == _CR:
                end -= 1
            if end > max_line or self._block_len + size > max_event:
                raise self._limit_error(end, size)
            block.append(line)
            self._block_len += size
            if end == 0:
                self._dispatch(events)
            elif line.startswith(b"data:"):  # most lines of a real stream
                start = 6 if end > 5 and line[5] == _SPACE else 5
                self._data.append(line[start:end].decode("utf-8", "replace"))
            else:
                self._field(line, end)

    def _append(self, line: bytes, content_len: int) -> None:
        size = len(line)
        if content_len > self._max_line or self._block_len + size > self._max_event:
            raise self._limit_error(content_len, size)
        self._block.append(line)
        self._block_len += size

    def _limit_error(self, content_len: int, size: int) -> SSELimitError:
        # Report the bound crossed by the earliest byte, so every chunking of the same input
        # reports the same bound (a tie goes to the line bound, checked first byte by byte).
        line_at = self._block_len + self._max_line + 1 if content_len > self._max_line else None
        event_at = self._max_event + 1 if self._block_len + size > self._max_event else None
        if line_at is not None and (event_at is None or line_at <= event_at):
            return SSELimitError(f"SSE line longer than max_line_bytes={self._max_line}")
        return SSELimitError(f"SSE event block longer than max_event_bytes={self._max_event}")

    def _field(self, line: bytes, end: int) -> None:
        colon = line.find(b":", 0, end)
        if colon == 0:
            return  # comment: its bytes stay in the block's raw, nothing else
        if colon < 0:
            name, value = line[:end], b""
        else:
            name, start = line[:colon], colon + 1
            if start < end and line[start] == _SPACE:
                start += 1
            value = line[start:end]
        # Comparing undecoded names is exact: replacement characters never equal ASCII.
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._type = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():  # bytes.isdigit: ASCII digits only
            digits = value.lstrip(b"0") or b"0"
            if len(digits) <= _MAX_RETRY_DIGITS:
                self._retry = self._reconnection_time = int(digits)

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        if self._data:
            events.append(
                ServerSentEvent(
                    event=self._type or "message",
                    data="\n".join(self._data),
                    id=self._last_id,
                    retry=self._retry,
                    raw=b"".join(self._block),
                )
            )
            self._data = []
        self._type = ""
        self._retry = None
        self._block.clear()
        self._block_len = 0
