"""The message accumulator: text, thinking, tool input parsed once, ordering errors."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import service.accumulate as accumulate_module
from service.accumulate import (
    AccumulationError,
    MessageAccumulator,
    ToolInputError,
    ToolInputParsed,
    accumulate,
    parse_tool_input,
)
from service.events import (
    CitationsDelta,
    ContentBlock,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    Delta,
    ErrorBody,
    ErrorEvent,
    InputJsonDelta,
    Message,
    MessageDelta,
    MessageDeltaBody,
    MessageDeltaUsage,
    MessageStart,
    MessageStop,
    OtherBlock,
    OtherDelta,
    Ping,
    RedactedThinkingBlock,
    ServerToolUseBlock,
    SignatureDelta,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    UnknownEvent,
    Usage,
    decode_event,
    encode_message_json,
)

# --- event builders --------------------------------------------------------------------


def start(input_tokens: int = 25, output_tokens: int = 1) -> MessageStart:
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return MessageStart(message=Message(id="msg_1", model="claude-opus-4-6", usage=usage))


def block(index: int, content: ContentBlock) -> ContentBlockStart:
    return ContentBlockStart(index=index, content_block=content)


def text_block(index: int) -> ContentBlockStart:
    return block(index, TextBlock(text=""))


def tool_block(
    index: int, name: str = "get_weather", tool_id: str = "toolu_01"
) -> ContentBlockStart:
    return block(index, ToolUseBlock(id=tool_id, name=name, input={}))


def delta(index: int, value: Delta) -> ContentBlockDelta:
    return ContentBlockDelta(index=index, delta=value)


def text(index: int, value: str) -> ContentBlockDelta:
    return delta(index, TextDelta(text=value))


def fragment(index: int, value: str) -> ContentBlockDelta:
    return delta(index, InputJsonDelta(partial_json=value))


def stop(index: int) -> ContentBlockStop:
    return ContentBlockStop(index=index)


def message_delta(stop_reason: str | None = "end_turn", **usage: int) -> MessageDelta:
    return MessageDelta(
        delta=MessageDeltaBody(stop_reason=stop_reason), usage=MessageDeltaUsage(**usage)
    )


def tool_stream(fragments: Sequence[str], index: int = 0) -> list[StreamEvent]:
    """A whole tool-call turn; with ``index`` > 0 a text block comes first."""
    lead: list[StreamEvent] = [text_block(0), text(0, "Let me check."), stop(0)] if index else []
    return [
        start(),
        *lead,
        tool_block(index),
        *(fragment(index, f) for f in fragments),
        stop(index),
        message_delta("tool_use", output_tokens=40),
        MessageStop(),
    ]


def feed_all(events: Sequence[StreamEvent], **kwargs: Any) -> MessageAccumulator:
    acc = MessageAccumulator(**kwargs)
    for event in events:
        acc.feed(event)
    return acc


@pytest.fixture
def parse_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Spy on the module-level parse: every call's fragments, in order."""
    calls: list[list[str]] = []
    real = accumulate_module.parse_tool_input

    def spy(fragments: Sequence[str]) -> dict[str, Any]:
        calls.append(list(fragments))
        return real(fragments)

    monkeypatch.setattr(accumulate_module, "parse_tool_input", spy)
    return calls


# --- text and thinking -----------------------------------------------------------------


def test_text_stream_accumulates_message() -> None:
    events: list[StreamEvent] = [
        start(),
        text_block(0),
        Ping(),
        text(0, "Hello"),
        text(0, ", "),
        text(0, "world"),
        stop(0),
        message_delta("end_turn", output_tokens=15),
        MessageStop(),
    ]
    acc = feed_all(events)
    assert acc.finished
    assert acc.message == Message(
        id="msg_1",
        model="claude-opus-4-6",
        content=[TextBlock(text="Hello, world")],
        stop_reason="end_turn",
        usage=Usage(input_tokens=25, output_tokens=15),
    )


def test_snapshot_mid_stream_and_after_more_deltas() -> None:
    acc = feed_all([start(), text_block(0), text(0, "ab")])
    assert acc.message.content == [TextBlock(text="ab")]
    assert acc.message is acc.message  # cached until the next event
    acc.feed(text(0, "c"))
    acc.feed(text(0, "d"))
    assert acc.message.content == [TextBlock(text="abcd")]
    assert not acc.finished


def test_interleaved_snapshot_reads_keep_every_fragment() -> None:
    acc = feed_all([start(), text_block(0)])
    pieces = [f"<{i}>" for i in range(500)]
    for i, piece in enumerate(pieces):
        acc.feed(text(0, piece))
        if i % 7 == 0:
            block0 = acc.message.content[0]
            assert isinstance(block0, TextBlock)
            assert block0.text == "".join(pieces[: i + 1])
    assert acc.message.content == [TextBlock(text="".join(pieces))]


def test_thinking_with_signature_then_text() -> None:
    events: list[StreamEvent] = [
        start(),
        block(0, ThinkingBlock(thinking="")),
        delta(0, ThinkingDelta(thinking="I need to find the GCD of 1071 and 462.")),
        delta(0, ThinkingDelta(thinking="\n1071 = 2 * 462 + 147")),
        delta(0, SignatureDelta(signature="EqQBCgIYAhIM")),
        delta(0, SignatureDelta(signature="1gbcDa9GJwZA")),
        stop(0),
        text_block(1),
        text(1, "The GCD is **21**."),
        stop(1),
        message_delta("end_turn", output_tokens=120),
        MessageStop(),
    ]
    assert accumulate(events).content == [
        ThinkingBlock(
            thinking="I need to find the GCD of 1071 and 462.\n1071 = 2 * 462 + 147",
            signature="EqQBCgIYAhIM1gbcDa9GJwZA",
        ),
        TextBlock(text="The GCD is **21**."),
    ]


def test_citations_are_appended_to_the_text_block() -> None:
    first = {"type": "char_location", "cited_text": "green", "document_index": 0}
    second = {"type": "char_location", "cited_text": "blue", "document_index": 1}
    acc = feed_all([start(), text_block(0), text(0, "The grass is green")])
    assert acc.message.content == [TextBlock(text="The grass is green")]
    acc.feed(delta(0, CitationsDelta(citation=first)))
    acc.feed(delta(0, CitationsDelta(citation=second)))
    assert acc.message.content == [TextBlock(text="The grass is green", citations=[first, second])]


def test_redacted_thinking_is_kept_as_started() -> None:
    redacted = RedactedThinkingBlock(data="EmwKAhgBEgy3va3pzix")
    assert accumulate([start(), block(0, redacted), stop(0), MessageStop()]).content == [redacted]


# --- tool input ------------------------------------------------------------------------

WEATHER_FRAGMENTS = [
    "",
    '{"location":',
    ' "San',
    " Francisc",
    "o,",
    ' CA"',
    ", ",
    '"unit": "fah',
    'renheit"}',
]


def test_tool_use_from_documented_fragments(parse_calls: list[list[str]]) -> None:
    evidence: list[ToolInputParsed] = []
    acc = feed_all(tool_stream(WEATHER_FRAGMENTS, index=1), on_tool_input=evidence.append)
    expected_input = {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert acc.message.content == [
        TextBlock(text="Let me check."),
        ToolUseBlock(id="toolu_01", name="get_weather", input=expected_input),
    ]
    assert acc.stop_reason == "tool_use"
    assert parse_calls == [WEATHER_FRAGMENTS]
    assert evidence == [
        ToolInputParsed(
            index=1,
            tool_name="get_weather",
            tool_id="toolu_01",
            fragments=9,
            bytes=len("".join(WEATHER_FRAGMENTS)),
            parse_attempts=1,
            input=expected_input,
        )
    ]
    assert acc.tool_inputs == evidence


def test_tool_input_is_empty_until_the_block_stops(parse_calls: list[list[str]]) -> None:
    acc = feed_all([start(), tool_block(0), fragment(0, '{"city": '), fragment(0, '"Paris"}')])
    assert acc.message.content == [ToolUseBlock(id="toolu_01", name="get_weather", input={})]
    assert parse_calls == []  # never a partial parse
    acc.feed(stop(0))
    assert acc.message.content == [
        ToolUseBlock(id="toolu_01", name="get_weather", input={"city": "Paris"})
    ]
    assert len(parse_calls) == 1


AWKWARD = {
    "quote": 'say "hi"\\now',
    "emoji": "snow ☃ and 😀",
    "nested": {"list": [1, -2.5, True, None, "é"]},
}


@pytest.mark.parametrize(
    "serialized",
    [json.dumps(AWKWARD), json.dumps(AWKWARD, ensure_ascii=False)],
    ids=["ascii-escapes", "raw-unicode"],
)
def test_tool_input_split_at_every_offset(serialized: str) -> None:
    # Every two-way and a three-way split: inside strings, escapes (\", \\, \uXXXX) and code
    # points; the first fragment is often "".
    for cut in range(len(serialized) + 1):
        second = min(len(serialized), cut + 3)
        fragments = ["", serialized[:cut], serialized[cut:second], serialized[second:]]
        acc = feed_all(tool_stream(fragments))
        assert acc.message.content[0] == ToolUseBlock(
            id="toolu_01", name="get_weather", input=AWKWARD
        )


def test_tool_input_bytes_are_utf8_bytes() -> None:
    serialized = json.dumps({"city": "Zürich ☃"}, ensure_ascii=False)
    evidence: list[ToolInputParsed] = []
    feed_all(tool_stream([serialized[:10], serialized[10:]]), on_tool_input=evidence.append)
    assert evidence[0].bytes == len(serialized.encode("utf-8"))
    assert evidence[0].bytes > len(serialized)
    assert evidence[0].fragments == 2


@pytest.mark.parametrize(
    "fragments", [[], [""], ["", "", ""]], ids=["none", "one-empty", "empties"]
)
def test_zero_argument_tool_gets_empty_object(
    fragments: list[str], parse_calls: list[list[str]]
) -> None:
    evidence: list[ToolInputParsed] = []
    acc = feed_all(tool_stream(fragments), on_tool_input=evidence.append)
    block0 = acc.message.content[0]
    assert isinstance(block0, ToolUseBlock)
    assert block0.input == {}
    assert len(parse_calls) == 1
    assert evidence[0].fragments == len(fragments)
    assert evidence[0].bytes == 0
    assert evidence[0].parse_attempts == 1
    assert b'"input":{}' in encode_message_json(acc.message)


def test_parallel_tool_blocks_parse_once_each(parse_calls: list[list[str]]) -> None:
    evidence: list[ToolInputParsed] = []
    events: list[StreamEvent] = [
        start(),
        text_block(0),
        text(0, "Checking both."),
        stop(0),
        tool_block(1, "get_weather", "toolu_a"),
        tool_block(2, "get_time", "toolu_b"),
        # Interleaved deltas of two open blocks (an OpenAI translation can produce this).
        fragment(1, '{"city": "Pa'),
        fragment(2, '{"tz": "Europe/'),
        fragment(1, 'ris"}'),
        fragment(2, 'Paris"}'),
        stop(2),
        stop(1),
        block(3, ToolUseBlock(id="toolu_c", name="ping_server", input={})),
        stop(3),
        message_delta("tool_use", output_tokens=70),
        MessageStop(),
    ]
    acc = feed_all(events, on_tool_input=evidence.append)
    assert acc.message.content[1:] == [
        ToolUseBlock(id="toolu_a", name="get_weather", input={"city": "Paris"}),
        ToolUseBlock(id="toolu_b", name="get_time", input={"tz": "Europe/Paris"}),
        ToolUseBlock(id="toolu_c", name="ping_server", input={}),
    ]
    assert len(parse_calls) == 3
    assert [(e.index, e.tool_name, e.parse_attempts) for e in evidence] == [
        (2, "get_time", 1),
        (1, "get_weather", 1),
        (3, "ping_server", 1),
    ]


def test_server_tool_use_is_accumulated_like_tool_use(parse_calls: list[list[str]]) -> None:
    result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
    evidence: list[ToolInputParsed] = []
    events: list[StreamEvent] = [
        start(),
        block(0, ServerToolUseBlock(id="srvtoolu_1", name="web_search", input={})),
        fragment(0, '{"query": "weather'),
        fragment(0, ' Paris"}'),
        stop(0),
        block(1, OtherBlock(raw=result)),
        stop(1),
        MessageStop(),
    ]
    acc = feed_all(events, on_tool_input=evidence.append)
    assert acc.message.content == [
        ServerToolUseBlock(id="srvtoolu_1", name="web_search", input={"query": "weather Paris"}),
        OtherBlock(raw=result),
    ]
    assert len(parse_calls) == 1
    assert evidence[0].tool_name == "web_search"
    assert evidence[0].tool_id == "srvtoolu_1"


def test_input_in_start_block_without_deltas_is_kept(parse_calls: list[list[str]]) -> None:
    events: list[StreamEvent] = [
        start(),
        block(0, ToolUseBlock(id="t", name="f", input={"a": 1})),
        stop(0),
    ]
    acc = feed_all(events)
    assert acc.message.content == [ToolUseBlock(id="t", name="f", input={"a": 1})]
    assert len(parse_calls) == 1
    assert acc.tool_inputs[0].input == {"a": 1}


@pytest.mark.parametrize(
    ("fragments", "pattern"),
    [
        (['{"city": "Pa'], r"index 0 \(tool_use 'get_weather'\).*not valid JSON"),
        (["[1, 2]"], r"index 0 \(tool_use 'get_weather'\).*must be a JSON object, got list"),
        (["  "], "not valid JSON"),
        (['{"a": 1}', '{"b": 2}'], "not valid JSON"),
    ],
)
def test_bad_tool_input_raises_at_stop(fragments: list[str], pattern: str) -> None:
    acc = feed_all([start(), tool_block(0), *(fragment(0, f) for f in fragments)])
    with pytest.raises(ToolInputError, match=pattern):
        acc.feed(stop(0))


def test_parse_tool_input_contract() -> None:
    assert parse_tool_input([]) == {}
    assert parse_tool_input(["", ""]) == {}
    assert parse_tool_input(['{"a"', ': [1, {"b": null}]}']) == {"a": [1, {"b": None}]}
    with pytest.raises(ToolInputError, match="got str"):
        parse_tool_input(['"text"'])
    assert issubclass(ToolInputError, AccumulationError)
    assert issubclass(AccumulationError, ValueError)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    value=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    ensure_ascii=st.booleans(),
    data=st.data(),
)
def test_any_json_object_split_anywhere_accumulates_to_itself(
    value: dict[str, Any], ensure_ascii: bool, data: st.DataObject
) -> None:
    serialized = json.dumps(value, ensure_ascii=ensure_ascii)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(serialized)), max_size=12), label="cuts"))
    bounds = [0, *cuts, len(serialized)]
    fragments = [serialized[a:b] for a, b in itertools.pairwise(bounds)]
    evidence: list[ToolInputParsed] = []
    acc = feed_all(tool_stream(fragments), on_tool_input=evidence.append)
    assert acc.message.content[0] == ToolUseBlock(id="toolu_01", name="get_weather", input=value)
    assert evidence[0].fragments == len(fragments)
    assert evidence[0].bytes == len(serialized.encode())


@given(pieces=st.lists(st.text(), max_size=30))
def test_any_text_split_accumulates_to_its_concatenation(pieces: list[str]) -> None:
    events: list[StreamEvent] = [
        start(),
        text_block(0),
        *(text(0, p) for p in pieces),
        stop(0),
        MessageStop(),
    ]
    assert accumulate(events).content == [TextBlock(text="".join(pieces))]


# --- ordering errors -------------------------------------------------------------------

OTHER = OtherBlock(raw={"type": "future_block"})
REDACTED = RedactedThinkingBlock(data="x")
THINKING = ThinkingBlock(thinking="")

ORDERING_CASES: list[tuple[str, list[StreamEvent], str]] = [
    ("delta-before-message-start", [text(0, "a")], r"content_block_delta before message_start"),
    ("start-before-message-start", [text_block(0)], r"content_block_start before message_start"),
    ("stop-before-message-start", [stop(0)], r"content_block_stop before message_start"),
    ("message-delta-first", [message_delta()], r"message_delta before message_start"),
    ("message-stop-first", [MessageStop()], r"message_stop before message_start"),
    (
        "delta-before-block-start",
        [start(), text(0, "a")],
        r"content_block_delta for index 0 before its content_block_start",
    ),
    (
        "delta-for-unknown-index",
        [start(), text_block(0), text(5, "a")],
        r"content_block_delta for index 5 before its content_block_start",
    ),
    (
        "block-started-twice",
        [start(), text_block(0), text_block(0)],
        r"content_block_start for index 0: block 0 was already started",
    ),
    (
        "block-restarted-after-stop",
        [start(), text_block(0), stop(0), tool_block(0)],
        r"content_block_start for index 0: block 0 was already started",
    ),
    (
        "block-skips-index",
        [start(), text_block(1)],
        r"content_block_start for index 1 skips index 0",
    ),
    (
        "delta-after-block-stop",
        [start(), text_block(0), stop(0), text(0, "a")],
        r"content_block_delta for index 0 after its content_block_stop",
    ),
    (
        "stop-twice",
        [start(), text_block(0), stop(0), stop(0)],
        r"content_block_stop for index 0 after its content_block_stop",
    ),
    (
        "stop-before-start",
        [start(), stop(0)],
        r"content_block_stop for index 0 before its content_block_start",
    ),
    (
        "text-delta-on-tool",
        [start(), tool_block(0), text(0, "a")],
        r"index 0: text_delta does not apply to a tool_use block",
    ),
    (
        "json-delta-on-text",
        [start(), text_block(0), fragment(0, "{")],
        r"index 0: input_json_delta does not apply to a text block",
    ),
    (
        "thinking-delta-on-text",
        [start(), text_block(0), delta(0, ThinkingDelta(thinking="a"))],
        r"index 0: thinking_delta does not apply to a text block",
    ),
    (
        "signature-delta-on-text",
        [start(), text_block(0), delta(0, SignatureDelta(signature="s"))],
        r"index 0: signature_delta does not apply to a text block",
    ),
    (
        "text-delta-on-thinking",
        [start(), block(0, THINKING), text(0, "a")],
        r"index 0: text_delta does not apply to a thinking block",
    ),
    (
        "citation-on-thinking",
        [start(), block(0, THINKING), delta(0, CitationsDelta(citation={}))],
        r"index 0: citations_delta does not apply to a thinking block",
    ),
    (
        "delta-on-redacted-thinking",
        [start(), block(0, REDACTED), delta(0, ThinkingDelta(thinking="a"))],
        r"index 0: thinking_delta does not apply to a redacted_thinking block",
    ),
    (
        "json-delta-on-second-block",
        [start(), text_block(0), stop(0), text_block(1), fragment(1, "{")],
        r"index 1: input_json_delta does not apply to a text block",
    ),
    (
        "second-message-start",
        [start(), text_block(0), start()],
        r"message_start after message_start",
    ),
    (
        "delta-after-message-stop",
        [start(), text_block(0), stop(0), MessageStop(), text(0, "a")],
        r"content_block_delta after message_stop",
    ),
    (
        "message-delta-after-message-stop",
        [start(), MessageStop(), message_delta()],
        r"message_delta after message_stop",
    ),
    (
        "message-start-after-message-stop",
        [start(), MessageStop(), start()],
        r"message_start after message_stop",
    ),
]


@pytest.mark.parametrize(
    ("events", "pattern"),
    [pytest.param(events, pattern, id=name) for name, events, pattern in ORDERING_CASES],
)
def test_out_of_order_events_raise(events: list[StreamEvent], pattern: str) -> None:
    acc = feed_all(events[:-1])  # everything before the culprit is fine
    with pytest.raises(AccumulationError, match=pattern):
        acc.feed(events[-1])


def test_message_stop_with_open_blocks_raises() -> None:
    acc = feed_all([start(), text_block(0), stop(0), tool_block(1), text_block(2)])
    with pytest.raises(AccumulationError, match=r"message_stop while blocks \[1, 2\] are still"):
        acc.feed(MessageStop())


def test_message_before_message_start_raises() -> None:
    acc = MessageAccumulator()
    assert not acc.started
    with pytest.raises(AccumulationError, match="message_start has not arrived"):
        _ = acc.message
    with pytest.raises(AccumulationError, match="message_start has not arrived"):
        accumulate([])


# --- ignored and recorded events -------------------------------------------------------


def test_ping_and_unknown_events_are_ignored_anywhere() -> None:
    progress = UnknownEvent(type="relay_progress", raw={"type": "relay_progress", "phase": "x"})
    metrics = UnknownEvent(type="relay_metrics", raw={"type": "relay_metrics"})
    events: list[StreamEvent] = [
        Ping(),
        progress,
        start(),
        progress,
        text_block(0),
        Ping(),
        text(0, "Hi"),
        progress,
        stop(0),
        MessageStop(),
        Ping(),
        metrics,
    ]
    acc = feed_all(events)
    assert acc.finished
    assert acc.message.content == [TextBlock(text="Hi")]


def test_unknown_deltas_and_blocks_are_tolerated() -> None:
    future_delta = OtherDelta(raw={"type": "future_delta", "x": 1})
    events: list[StreamEvent] = [
        start(),
        text_block(0),
        text(0, "a"),
        delta(0, future_delta),  # unknown delta on a tracked block: ignored
        text(0, "b"),
        stop(0),
        block(1, OTHER),
        delta(1, future_delta),  # any delta on an unknown block: ignored
        text(1, "not ours to fold"),
        stop(1),
        MessageStop(),
    ]
    assert accumulate(events).content == [TextBlock(text="ab"), OTHER]


def test_unknown_delta_still_needs_an_open_block() -> None:
    acc = feed_all([start()])
    with pytest.raises(AccumulationError, match="index 0 before its content_block_start"):
        acc.feed(delta(0, OtherDelta(raw={"type": "future_delta"})))


def test_error_event_is_recorded_not_raised() -> None:
    overloaded = ErrorEvent(error=ErrorBody(type="overloaded_error", message="Overloaded"))
    acc = feed_all([overloaded])
    assert acc.error == overloaded
    assert not acc.started
    acc = feed_all([start(), text_block(0), text(0, "partial"), overloaded])
    assert acc.error == overloaded
    assert acc.message.content == [TextBlock(text="partial")]
    assert not acc.finished


# --- usage -----------------------------------------------------------------------------


def test_usage_is_cumulative_not_summed() -> None:
    acc = MessageAccumulator()
    assert (acc.output_tokens, acc.input_tokens, acc.stop_reason) == (None, None, None)
    acc.feed(start(input_tokens=472, output_tokens=2))
    assert (acc.output_tokens, acc.input_tokens) == (2, 472)
    acc.feed(text_block(0))
    acc.feed(stop(0))
    acc.feed(message_delta(None, output_tokens=40))
    acc.feed(message_delta("end_turn", output_tokens=89))
    assert acc.output_tokens == 89  # the latest total, not 2 + 40 + 89
    assert acc.input_tokens == 472  # kept when the delta omits it
    assert acc.stop_reason == "end_turn"
    acc.feed(
        message_delta("end_turn", output_tokens=90, input_tokens=500, cache_read_input_tokens=7)
    )
    assert acc.input_tokens == 500
    assert acc.message.usage == Usage(input_tokens=500, output_tokens=90, cache_read_input_tokens=7)


def test_message_delta_without_usage_keeps_start_usage() -> None:
    acc = feed_all([start(input_tokens=10, output_tokens=1), message_delta("end_turn")])
    assert (acc.input_tokens, acc.output_tokens) == (10, 1)


def test_message_start_content_takes_the_first_indexes() -> None:
    envelope = Message(id="m", model="x", content=[TextBlock(text="pre")], usage=Usage())
    events: list[StreamEvent] = [MessageStart(message=envelope), text_block(1), text(1, "post")]
    acc = feed_all(events)
    assert acc.message.content == [TextBlock(text="pre"), TextBlock(text="post")]
    with pytest.raises(AccumulationError, match="index 0 after its content_block_stop"):
        acc.feed(text(0, "more"))


# --- from the wire ---------------------------------------------------------------------

DOC_TOOL_STREAM = """\
{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-6","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}
{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}
{"type":"ping"}
{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}
{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":","}}
{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" let's check the weather for San Francisco, CA:"}}
{"type":"content_block_stop","index":0}
{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San"}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" Francisc"}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"o,"}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" CA\\""}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":", "}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\\"unit\\": \\"fah"}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"renheit\\"}"}}
{"type":"content_block_stop","index":1}
{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}
{"type":"message_stop"}
"""  # noqa: E501 - verbatim wire lines from the documentation


def test_documented_tool_stream_becomes_the_non_streaming_body() -> None:
    logged: list[str] = []

    def log(parsed: ToolInputParsed) -> None:
        logged.append(
            f"tool_input.parsed tool={parsed.tool_name} fragments={parsed.fragments} "
            f"bytes={parsed.bytes} parse_attempts={parsed.parse_attempts}"
        )

    acc = MessageAccumulator(on_tool_input=log)
    for line in DOC_TOOL_STREAM.splitlines():
        acc.feed(decode_event(line))
    assert json.loads(encode_message_json(acc.message)) == {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-4-6",
        "content": [
            {"type": "text", "text": "Okay, let's check the weather for San Francisco, CA:"},
            {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {"location": "San Francisco, CA", "unit": "fahrenheit"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 472, "output_tokens": 89},
    }
    assert logged == ["tool_input.parsed tool=get_weather fragments=9 bytes=55 parse_attempts=1"]


def test_callback_runs_at_stop_time() -> None:
    seen_at: list[int] = []

    def record(parsed: ToolInputParsed) -> None:
        seen_at.append(parsed.index)

    acc = MessageAccumulator(on_tool_input=record)
    steps: list[tuple[StreamEvent, list[int]]] = [
        (start(), []),
        (tool_block(0), []),
        (fragment(0, "{}"), []),
        (stop(0), [0]),
        (MessageStop(), [0]),
    ]
    for event, expected in steps:
        acc.feed(event)
        assert seen_at == expected


def test_keep_text_false_validates_without_keeping_text() -> None:
    """The streaming relay's mode: order is still checked, tool input still parsed once,
    usage still tracked, but text and thinking are not kept (memory must not grow)."""
    events = [
        MessageStart(message=Message(id="m", model="x", usage=Usage(input_tokens=3))),
        ContentBlockStart(index=0, content_block=ThinkingBlock(thinking="")),
        ContentBlockDelta(index=0, delta=ThinkingDelta(thinking="hmm")),
        ContentBlockStop(index=0),
        ContentBlockStart(index=1, content_block=TextBlock(text="")),
        ContentBlockDelta(index=1, delta=TextDelta(text="a" * 10_000)),
        ContentBlockStop(index=1),
        ContentBlockStart(index=2, content_block=ToolUseBlock(id="t", name="f", input={})),
        ContentBlockDelta(index=2, delta=InputJsonDelta(partial_json='{"k": 1}')),
        ContentBlockStop(index=2),
        MessageDelta(
            delta=MessageDeltaBody(stop_reason="tool_use"), usage=MessageDeltaUsage(output_tokens=9)
        ),
        MessageStop(),
    ]
    accumulator = MessageAccumulator(keep_text=False)
    for event in events:
        accumulator.feed(event)
    thinking, text, tool = accumulator.message.content
    assert isinstance(thinking, ThinkingBlock)
    assert thinking.thinking == ""
    assert isinstance(text, TextBlock)
    assert text.text == ""
    assert isinstance(tool, ToolUseBlock)
    assert tool.input == {"k": 1}
    assert accumulator.output_tokens == 9
    late = MessageAccumulator(keep_text=False)
    with pytest.raises(AccumulationError):
        late.feed(events[2])  # a delta before message_start is still refused
