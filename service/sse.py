"""Server-Sent Events: an incremental WHATWG decoder and a safe encoder."""

from __future__ import annotations

__all__ = ["SSEEncodeError", "encode_comment", "encode_event"]


class SSEEncodeError(ValueError):
    """A field cannot be encoded without changing the event's meaning."""


def _check_single_line(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise SSEEncodeError(f"SSE {name} must not contain CR or LF: {value!r}")


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,  # noqa: A002 - the SSE field is called id
    retry: int | None = None,
) -> bytes:
    """Encode one event. Multi-line ``data`` becomes several ``data:`` lines.

    Raises :class:`SSEEncodeError` for CR/LF in ``event`` or ``id``, NUL in ``id`` (a decoder
    would ignore it), or a negative ``retry``.
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
    return "".join(parts).encode()


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line (ignored by every SSE client), e.g. a heartbeat."""
    _check_single_line("comment", text)
    return f": {text}\n\n".encode() if text else b":\n\n"
