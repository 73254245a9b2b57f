"""Tests for service/sse.py: the WHATWG decoder under every chunking, and the encoder."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.sse import (
    ServerSentEvent,
    SSEDecodeError,
    SSEDecoder,
    SSEEncodeError,
    SSELimitError,
    encode_comment,
    encode_event,
)

BOM = b"\xef\xbb\xbf"


def ev(
    raw: bytes,
    data: str,
    *,
    event: str = "message",
    id: str | None = None,
    retry: int | None = None,
) -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data, id=id, retry=retry, raw=raw)


def decode(chunks: Iterable[bytes], **bounds: int) -> list[ServerSentEvent]:
    decoder = SSEDecoder(**bounds)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def decode_until_error(chunks: Iterable[bytes], **bounds: int) -> tuple[list[ServerSentEvent], str]:
    """Events delivered before the limit error, and the error's message."""
    decoder = SSEDecoder(**bounds)
    events: list[ServerSentEvent] = []
    try:
        for chunk in chunks:
            events += decoder.feed(chunk)
        decoder.close()
    except SSELimitError as exc:
        return events, str(exc)
    pytest.fail("no SSELimitError raised")


def chunkings(stream: bytes) -> Iterable[list[bytes]]:
    """The stream whole, split once at every byte offset, and byte by byte."""
    yield [stream]
    for cut in range(len(stream) + 1):
        yield [stream[:cut], stream[cut:]]
    yield [stream[i : i + 1] for i in range(len(stream))]


def split_at(stream: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds)]


# -- fixtures: input -> expected events, checked under every chunking ------------------------

_ANTHROPIC_PAYLOADS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hello"},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": ", wörld - ünïcode 🌍\n"},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"location": "Par'},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": 'is"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
]


def _anthropic_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)  # raw UTF-8, like the API


ANTHROPIC_FRAMES = [
    (encode_event(_anthropic_json(p), event=p["type"]), p) for p in _ANTHROPIC_PAYLOADS
]
ANTHROPIC_STREAM = b"".join(frame for frame, _ in ANTHROPIC_FRAMES)
ANTHROPIC_EVENTS = [ev(frame, _anthropic_json(p), event=p["type"]) for frame, p in ANTHROPIC_FRAMES]


FIXTURES: dict[str, tuple[bytes, list[ServerSentEvent]]] = {
    "lf": (b"data: a\n\n", [ev(b"data: a\n\n", "a")]),
    "cr": (
        b"event: x\rdata: a\r\rdata: b\r\r",
        [ev(b"event: x\rdata: a\r\r", "a", event="x"), ev(b"data: b\r\r", "b")],
    ),
    "crlf": (
        b"event: x\r\ndata: a\r\n\r\ndata: b\r\n\r\n",
        [ev(b"event: x\r\ndata: a\r\n\r\n", "a", event="x"), ev(b"data: b\r\n\r\n", "b")],
    ),
    "mixed line ends": (
        b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r\ndata: e\n\r",
        [
            ev(b"data: a\r\ndata: b\rdata: c\n\r\n", "a\nb\nc"),
            ev(b"data: d\r\r\n", "d"),
            ev(b"data: e\n\r", "e"),
        ],
    ),
    "cr then lf is one line end": (
        b"data: a\r\n\r\ndata: b\n\n",
        [ev(b"data: a\r\n\r\n", "a"), ev(b"data: b\n\n", "b")],
    ),
    "bom stripped once": (BOM + b"data: a\n\n", [ev(b"data: a\n\n", "a")]),
    "second bom is part of the field name": (
        BOM + BOM + b"data: a\n\ndata: b\n\n",
        [ev(b"data: b\n\n", "b")],
    ),
    "bom after stream start is not stripped": (
        b"data: a\n\n" + BOM + b"data: b\n\n",
        [ev(b"data: a\n\n", "a")],
    ),
    "bom prefix is data": (b"\xef\xbbdata: a\n\n", []),
    "comments": (
        b": hello\ndata: a\n: mid\n\n: only a comment\n\n:\n\ndata: b\n\n",
        [ev(b": hello\ndata: a\n: mid\n\n", "a"), ev(b"data: b\n\n", "b")],
    ),
    "multi-line data": (
        b"data: a\ndata:\ndata: b\ndata\n\n",
        [ev(b"data: a\ndata:\ndata: b\ndata\n\n", "a\n\nb\n")],
    ),
    "id persists and resets": (
        b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\n\ndata: d\n\n",
        [
            ev(b"id: 1\ndata: a\n\n", "a", id="1"),
            ev(b"data: b\n\n", "b", id="1"),
            ev(b"id\ndata: c\n\n", "c", id=""),
            ev(b"data: d\n\n", "d", id="2"),
        ],
    ),
    "id with nul is ignored": (
        b"id: 1\ndata: a\n\nid: x\0y\ndata: b\n\n",
        [ev(b"id: 1\ndata: a\n\n", "a", id="1"), ev(b"id: x\0y\ndata: b\n\n", "b", id="1")],
    ),
    "retry digits only": (
        b"retry: 10x\ndata: a\n\nretry: 20\ndata: b\n\nretry: -5\nretry: 1.5\nretry:\n"
        b"retry: \xd9\xa1\ndata: c\n\nretry: 007\nretry: 30\ndata: d\n\ndata: e\n\n",
        [
            ev(b"retry: 10x\ndata: a\n\n", "a"),
            ev(b"retry: 20\ndata: b\n\n", "b", retry=20),
            ev(b"retry: -5\nretry: 1.5\nretry:\nretry: \xd9\xa1\ndata: c\n\n", "c"),
            ev(b"retry: 007\nretry: 30\ndata: d\n\n", "d", retry=30),
            ev(b"data: e\n\n", "e"),
        ],
    ),
    "unterminated last event is not dispatched": (
        b"data: a\n\ndata: b\n",
        [ev(b"data: a\n\n", "a")],
    ),
    "unterminated last line is not dispatched": (
        b"data: a\n\ndata: b",
        [ev(b"data: a\n\n", "a")],
    ),
    "empty data buffer dispatches nothing but keeps the id": (
        b"id: 5\nevent: x\nretry: 9\n\n\n\ndata: a\n\n",
        [ev(b"data: a\n\n", "a", id="5")],
    ),
    "empty data value still dispatches": (
        b"data\n\ndata:\n\ndata: \n\n",
        [ev(b"data\n\n", ""), ev(b"data:\n\n", ""), ev(b"data: \n\n", "")],
    ),
    "event type resets after dispatch": (
        b"event: ping\ndata: {}\n\ndata: a\n\nevent:\ndata: b\n\nevent\ndata: c\n\n",
        [
            ev(b"event: ping\ndata: {}\n\n", "{}", event="ping"),
            ev(b"data: a\n\n", "a"),
            ev(b"event:\ndata: b\n\n", "b"),
            ev(b"event\ndata: c\n\n", "c"),
        ],
    ),
    "field without colon": (
        b"data\ndata\n\n",
        [ev(b"data\ndata\n\n", "\n")],
    ),
    "one leading space removed": (
        b"data:a\n\ndata:  a \n\nevent:  x\ndata: \tb\n\ndata :c\ndata: d\n\n",
        [
            ev(b"data:a\n\n", "a"),
            ev(b"data:  a \n\n", " a "),
            ev(b"event:  x\ndata: \tb\n\n", "\tb", event=" x"),
            ev(b"data :c\ndata: d\n\n", "d"),
        ],
    ),
    "unknown fields ignored": (
        b"foo: bar\nDATA: x\nData: y\ndata: a\n\n",
        [ev(b"foo: bar\nDATA: x\nData: y\ndata: a\n\n", "a")],
    ),
    "colon in value": (
        b'data: {"a": "b:c"}\n\n',
        [ev(b'data: {"a": "b:c"}\n\n', '{"a": "b:c"}')],
    ),
    "unicode split across chunks": (
        "event: é\ndata: héllo €𝄞 中文\n\n".encode(),
        [ev("event: é\ndata: héllo €𝄞 中文\n\n".encode(), "héllo €𝄞 中文", event="é")],
    ),
    "invalid utf-8 becomes replacement characters": (
        b"data: \xff\xfe a\xe2\x82\n\n",
        [ev(b"data: \xff\xfe a\xe2\x82\n\n", "\ufffd\ufffd a\ufffd")],
    ),
    "nul in data is kept": (b"data: a\0b\n\n", [ev(b"data: a\0b\n\n", "a\0b")]),
    "blank lines between events": (
        b"\n\n\r\n\rdata: a\n\n\n",
        [ev(b"data: a\n\n", "a")],
    ),
    "anthropic stream": (ANTHROPIC_STREAM, ANTHROPIC_EVENTS),
}


@pytest.mark.parametrize(("stream", "expected"), FIXTURES.values(), ids=FIXTURES.keys())
def test_fixture_under_every_chunking(stream: bytes, expected: list[ServerSentEvent]) -> None:
    for chunks in chunkings(stream):
        assert decode(chunks) == expected, chunks


def test_anthropic_fixture_is_realistic() -> None:
    names = [e.event for e in FIXTURES["anthropic stream"][1]]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert {"ping", "content_block_start", "content_block_delta", "content_block_stop"} <= set(
        names
    )
    assert json.loads(FIXTURES["anthropic stream"][1][4].data)["delta"]["text"].endswith("🌍\n")


# -- limits ----------------------------------------------------------------------------------

LIMIT_FIXTURES: dict[str, tuple[bytes, dict[str, int], list[ServerSentEvent], str]] = {
    "long line": (
        b"data: a\n\ndata: " + b"x" * 20 + b"\n\n",
        {"max_line_bytes": 16},
        [ev(b"data: a\n\n", "a")],
        "max_line_bytes=16",
    ),
    "long unterminated line": (
        b"data: a\n\n: " + b"x" * 40,
        {"max_line_bytes": 16},
        [ev(b"data: a\n\n", "a")],
        "max_line_bytes=16",
    ),
    "long event of short lines": (
        b"data: a\n\n" + b"data: 0123456789\n" * 3 + b"\n",
        {"max_event_bytes": 32},
        [ev(b"data: a\n\n", "a")],
        "max_event_bytes=32",
    ),
    "long event of comments": (
        b"data: a\n\n" + b":\n" * 40,
        {"max_event_bytes": 32},
        [ev(b"data: a\n\n", "a")],
        "max_event_bytes=32",
    ),
    "long event crossed by its blank line": (
        b"data: a\n\ndata: 0123456789\r\n\r\n",
        {"max_event_bytes": 19},
        [ev(b"data: a\n\n", "a")],
        "max_event_bytes=19",
    ),
    "line and event bound crossed by the same byte: the line bound is reported": (
        b"data: a\n\ndata: a\ndata: " + b"y" * 10 + b"\n\n",
        {"max_line_bytes": 10, "max_event_bytes": 18},
        [ev(b"data: a\n\n", "a")],
        "max_line_bytes=10",
    ),
    "line and event bound both crossed": (
        b"data: a\n\ndata: b\ndata: " + b"y" * 30 + b"\n\n",
        {"max_line_bytes": 20, "max_event_bytes": 24},
        [ev(b"data: a\n\n", "a")],
        "max_event_bytes=24",
    ),
}


@pytest.mark.parametrize(
    ("stream", "bounds", "expected", "bound"), LIMIT_FIXTURES.values(), ids=LIMIT_FIXTURES.keys()
)
def test_limit_under_every_chunking(
    stream: bytes, bounds: dict[str, int], expected: list[ServerSentEvent], bound: str
) -> None:
    for chunks in chunkings(stream):
        events, message = decode_until_error(chunks, **bounds)
        assert events == expected, chunks
        assert bound in message, chunks


def test_bounds_are_inclusive() -> None:
    line = b"data: " + b"x" * 10 + b"\r\n\r\n"
    assert decode([line], max_line_bytes=16, max_event_bytes=len(line))[0].raw == line
    with pytest.raises(SSELimitError, match="max_line_bytes=15"):
        decode([line], max_line_bytes=15)
    with pytest.raises(SSELimitError, match=f"max_event_bytes={len(line) - 1}"):
        decode([line], max_event_bytes=len(line) - 1)


def test_limit_triggers_while_buffering_not_at_line_end() -> None:
    decoder = SSEDecoder(max_line_bytes=100, max_event_bytes=1000)
    for _ in range(100):
        decoder.feed(b"x")
    assert decoder.pending_bytes == 100
    with pytest.raises(SSELimitError, match="max_line_bytes=100"):
        decoder.feed(b"x")
    assert decoder.pending_bytes == 0

    decoder = SSEDecoder(max_line_bytes=100, max_event_bytes=1000)
    for _ in range(66):  # 15 bytes a line, never a blank line: 990 bytes buffered
        decoder.feed(b"data: 12345678\n")
    assert decoder.pending_bytes == 990
    with pytest.raises(SSELimitError, match="max_event_bytes=1000"):
        decoder.feed(b"data: 12345678\n")
    assert decoder.pending_bytes == 0


def test_events_before_a_limit_error_in_the_same_chunk_come_first() -> None:
    decoder = SSEDecoder(max_line_bytes=8)
    assert decoder.feed(b"data: a\n\ndata: too long\n") == [ev(b"data: a\n\n", "a")]
    with pytest.raises(SSELimitError, match="max_line_bytes=8"):
        decoder.feed(b"data: b\n\n")
    with pytest.raises(SSEDecodeError, match="failed earlier"):
        decoder.feed(b"data: b\n\n")
    assert decoder.close() == []

    decoder = SSEDecoder(max_line_bytes=8)
    assert len(decoder.feed(b"data: a\n\ndata: too long\n")) == 1
    with pytest.raises(SSELimitError):
        decoder.close()  # the held-back error is not lost at end of stream
    assert decoder.close() == []


def test_invalid_bounds_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        SSEDecoder(max_line_bytes=0)
    with pytest.raises(ValueError, match="positive"):
        SSEDecoder(max_event_bytes=-1)


# -- stream state and lifecycle --------------------------------------------------------------


def test_bom_split_across_chunks() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(BOM[:1]) == []
    assert decoder.feed(BOM[1:2]) == []
    assert decoder.pending_bytes == 2
    assert decoder.feed(BOM[2:] + b"data: a\n\n") == [ev(b"data: a\n\n", "a")]
    assert decoder.pending_bytes == 0


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []  # the blank line's CR could still grow into CRLF
    assert decoder.feed(b"\n") == [ev(b"data: a\r\n\r\n", "a")]
    assert decoder.feed(b"data: b\n\n") == [ev(b"data: b\n\n", "b")]


def test_blank_cr_dispatches_on_next_byte_or_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []
    assert decoder.pending_bytes == 9
    assert decoder.feed(b"d") == [ev(b"data: a\r\r", "a")]
    assert decoder.pending_bytes == 1

    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []
    assert decoder.close() == [ev(b"data: a\r\r", "a")]


def test_close_discards_unterminated_event_and_ends_the_decoder() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [ev(b"data: a\n\n", "a")]
    assert decoder.pending_bytes == 8
    assert decoder.close() == []
    assert decoder.pending_bytes == 0
    assert decoder.close() == []
    with pytest.raises(SSEDecodeError, match="after close"):
        decoder.feed(b"\n")


def test_last_event_id_and_reconnection_time() -> None:
    decoder = SSEDecoder()
    assert (decoder.last_event_id, decoder.reconnection_time) == (None, None)
    decoder.feed(b": opening frame\nretry: 1500\nid: s:0\n\n")
    assert decoder.last_event_id == "s:0"
    assert decoder.reconnection_time == 1500
    (event,) = decoder.feed(b"id: s:1\ndata: x\n\n")
    assert event.id == decoder.last_event_id == "s:1"
    assert event.retry is None
    decoder.feed(b"id: bad\0\nretry: soon\n\n")
    assert decoder.last_event_id == "s:1"
    assert decoder.reconnection_time == 1500


def test_huge_retry_is_ignored_not_a_crash() -> None:
    (event,) = decode([b"retry: " + b"9" * 5000 + b"\nretry: " + b"0" * 5000 + b"7\ndata: a\n\n"])
    assert event.retry == 7


def test_pending_bytes_tracks_undispatched_bytes() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"event: x\ndata: a")
    assert decoder.pending_bytes == 16
    decoder.feed(b"\n: comment only block follows\n")
    assert decoder.pending_bytes == 46
    assert len(decoder.feed(b"\n: c\n")) == 1
    assert decoder.pending_bytes == 4
    decoder.feed(b"\n")  # comment-only block dispatches nothing and is dropped
    assert decoder.pending_bytes == 0


def test_bytes_like_chunks_accepted() -> None:
    decoder = SSEDecoder()
    # The API takes bytes; other buffers are tolerated at run time and copied once.
    assert decoder.feed(bytearray(b"data: a\n")) == []  # type: ignore[arg-type]
    assert decoder.feed(memoryview(b"\n")) == [ev(b"data: a\n\n", "a")]  # type: ignore[arg-type]
    (event,) = decoder.feed(bytearray(b"data: b\n\n"))  # type: ignore[arg-type]
    assert type(event.raw) is bytes


def test_one_byte_feeds_of_a_large_event() -> None:
    payload = b"data: " + b"x" * 200_000 + b"\n\n"
    decoder = SSEDecoder()
    events = []
    for i in range(len(payload)):
        events += decoder.feed(payload[i : i + 1])
    assert len(events) == 1
    assert events[0].raw == payload


# -- encoder ---------------------------------------------------------------------------------


def test_encode_event_shape() -> None:
    assert encode_event("a\nb", event="x", id="7", retry=10) == (
        b"event: x\nid: 7\nretry: 10\ndata: a\ndata: b\n\n"
    )
    assert encode_event("") == b"data: \n\n"
    assert encode_comment() == b":\n\n"
    assert encode_comment("ping") == b": ping\n\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event": "a\nb"},
        {"event": "a\rb"},
        {"id": "1\n"},
        {"id": "\r1"},
        {"id": "a\0b"},
        {"retry": -1},
    ],
)
def test_encode_event_refuses_ambiguous_fields(kwargs: dict[str, str | int]) -> None:
    with pytest.raises(SSEEncodeError):
        encode_event("data", **kwargs)  # type: ignore[arg-type]


def test_encode_refuses_text_without_utf8_form() -> None:
    with pytest.raises(SSEEncodeError, match="UTF-8"):
        encode_event("\ud800")
    with pytest.raises(SSEEncodeError, match="UTF-8"):
        encode_comment("\udfff")
    with pytest.raises(SSEEncodeError, match="CR or LF"):
        encode_comment("a\nb")


def test_multi_line_data_round_trips() -> None:
    (event,) = decode([encode_event("line 1\nline 2\r\nline 3\r\n\n", event="e", id=" i")])
    assert (event.event, event.data, event.id) == ("e", "line 1\nline 2\nline 3\n\n", " i")


# -- properties ------------------------------------------------------------------------------

_line_text = st.text(st.characters(exclude_characters="\r\n\0", exclude_categories=["Cs"]))
_data_text = st.text(st.characters(exclude_categories=["Cs"]))
_LINE_ENDS = (b"\n", b"\r", b"\r\n")


@dataclass(frozen=True)
class _Spec:
    data: str
    event: str | None
    id: str | None
    retry: int | None
    comments: list[str]

    def encode(self) -> bytes:
        comments = b"".join(b": " + c.encode() + b"\n" for c in self.comments)
        return comments + encode_event(self.data, event=self.event, id=self.id, retry=self.retry)


_specs = st.builds(
    _Spec,
    data=_data_text,
    event=st.none() | _line_text,
    id=st.none() | _line_text,
    retry=st.none() | st.integers(0, 10**12),
    comments=st.lists(_line_text, max_size=2),
)


@st.composite
def _with_line_ends(draw: st.DrawFn, block: bytes) -> bytes:
    """Replace each LF line end with a random CR, LF or CRLF, keeping the line structure."""
    lines = block.split(b"\n")[:-1]
    out, previous = [], b""
    for line in lines:
        choice = draw(st.sampled_from(_LINE_ENDS))
        if previous == b"\r" and not line and choice == b"\n":
            choice = b"\r"  # CR + LF would merge into one CRLF line end and lose a line
        out.append(line + choice)
        previous = choice
    return b"".join(out)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[_Spec], list[bytes], bytes]:
    """(stream, specs, the raw block of each spec, trailing undispatched bytes)."""
    specs = draw(st.lists(_specs, max_size=6))
    blocks = [draw(_with_line_ends(spec.encode())) for spec in specs]
    trailing = b""
    if draw(st.booleans()):
        # Everything of one more event but its blank line, cut anywhere.
        unterminated = draw(_with_line_ends(draw(_specs).encode()[:-1]))
        trailing = unterminated[: draw(st.integers(0, len(unterminated)))]
    bom = BOM if draw(st.booleans()) else b""
    return bom + b"".join(blocks) + trailing, specs, blocks, trailing


def _expected(specs: list[_Spec], blocks: list[bytes]) -> list[ServerSentEvent]:
    out, last_id = [], None
    for spec, block in zip(specs, blocks, strict=True):
        last_id = spec.id if spec.id is not None else last_id
        data = spec.data.replace("\r\n", "\n").replace("\r", "\n")
        out.append(ev(block, data, event=spec.event or "message", id=last_id, retry=spec.retry))
    return out


@settings(max_examples=300, deadline=None)
@given(stream=_streams(), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_encoded_events_round_trip_under_random_chunking(
    stream: tuple[bytes, list[_Spec], list[bytes], bytes], cuts: list[int]
) -> None:
    data, specs, blocks, trailing = stream
    chunks = split_at(data, [c % (len(data) + 1) for c in cuts])
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    fed = 0
    for chunk in chunks:
        events += decoder.feed(chunk)
        fed += len(chunk)
        bom_stripped = len(BOM) if data.startswith(BOM) and fed >= len(BOM) else 0
        assert decoder.pending_bytes == fed - bom_stripped - sum(len(e.raw) for e in events)
    events += decoder.close()
    assert events == _expected(specs, blocks)
    assert data.removeprefix(BOM) == b"".join(e.raw for e in events) + trailing


# A deliberately naive whole-input WHATWG decoder: the oracle for arbitrary byte soup.
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")


def _reference(stream: bytes) -> list[ServerSentEvent]:
    stream = stream.removeprefix(BOM)
    events, data, etype, retry, last_id, start = [], None, "", None, None, 0
    for match in _LINE.finditer(stream):
        line = match.group(1).decode("utf-8", "replace")
        if not line:
            if data is not None:
                raw = stream[start : match.end()]
                events.append(ev(raw, data[:-1], event=etype or "message", id=last_id, retry=retry))
            data, etype, retry, start = None, "", None, match.end()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if line.startswith(":"):
            continue
        if name == "data":
            data = (data or "") + value + "\n"
        elif name == "event":
            etype = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events


_soup = st.lists(
    st.sampled_from(
        [
            *(b"data", b"event", b"id", b"retry", b":", b" ", b"\r", b"\n", b"\r\n", b"x"),
            *(b"5", b"\0", BOM, b"\xe2\x82\xac", b"\xe2", b"\xff", b"ping", b"e\xcc\x81"),
        ]
    ),
    max_size=60,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(stream=_soup, cuts=st.lists(st.integers(0, 1000), max_size=10))
def test_arbitrary_bytes_match_reference_under_random_chunking(
    stream: bytes, cuts: list[int]
) -> None:
    chunks = split_at(stream, [c % (len(stream) + 1) for c in cuts])
    assert decode(chunks) == _reference(stream)


def _outcome(chunks: Iterable[bytes], **bounds: int) -> tuple[list[ServerSentEvent], str | None]:
    decoder = SSEDecoder(**bounds)
    events: list[ServerSentEvent] = []
    try:
        for chunk in chunks:
            events += decoder.feed(chunk)
        events += decoder.close()
    except SSELimitError as exc:
        return events, str(exc)
    return events, None


@settings(max_examples=300, deadline=None)
@given(
    stream=_soup,
    cuts=st.lists(st.integers(0, 1000), max_size=10),
    max_line=st.integers(1, 24),
    max_event=st.integers(1, 64),
)
def test_limit_outcome_is_independent_of_chunking(
    stream: bytes, cuts: list[int], max_line: int, max_event: int
) -> None:
    bounds = {"max_line_bytes": max_line, "max_event_bytes": max_event}
    whole = _outcome([stream], **bounds)
    assert _outcome(split_at(stream, [c % (len(stream) + 1) for c in cuts]), **bounds) == whole
    assert _outcome([stream[i : i + 1] for i in range(len(stream))], **bounds) == whole
    if whole[1] is None:
        assert whole[0] == _reference(stream)
