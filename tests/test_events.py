"""Typed stream events: decoding realistic API JSON, fallbacks, errors, exact encoding."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.events import (
    CitationsDelta,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    ErrorBody,
    ErrorEvent,
    EventDecodeError,
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
    RelayErrorInfo,
    ServerToolUseBlock,
    SignatureDelta,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    UnknownEvent,
    Usage,
    decode_event,
    decode_message,
    encode_event_json,
    encode_message_json,
    event_to_dict,
    message_to_dict,
)

# Shapes as in Anthropic's streaming documentation (ids shortened where irrelevant).
MESSAGE_START = (
    '{"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", '
    '"type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-6", '
    '"stop_reason": null, "stop_sequence": null, '
    '"usage": {"input_tokens": 25, "output_tokens": 1}}}'
)
TEXT_START = (
    '{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}'
)
TEXT_DELTA = (
    '{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}'
)
TOOL_START = (
    '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
    '"id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}'
)
INPUT_JSON_DELTA = (
    '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    '"partial_json":"{\\"location\\": \\"San Fra"}}'
)
SERVER_TOOL_START = (
    '{"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use",'
    '"id":"srvtoolu_014hJH82Qum7Td6UV8gDXThB","name":"web_search","input":{}}}'
)
THINKING_START = (
    '{"type": "content_block_start", "index": 0, '
    '"content_block": {"type": "thinking", "thinking": ""}}'
)
THINKING_DELTA = (
    '{"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", '
    '"thinking": "I need to find the GCD of 1071 and 462 using the Euclidean algorithm."}}'
)
SIGNATURE_DELTA = (
    '{"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", '
    '"signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}'
)
REDACTED_START = (
    '{"type":"content_block_start","index":0,"content_block":{"type":"redacted_thinking",'
    '"data":"EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"}}'
)
CITATIONS_DELTA = (
    '{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":'
    '{"type":"char_location","cited_text":"The grass is green.","document_index":0,'
    '"document_title":"Example","start_char_index":0,"end_char_index":20}}}'
)
BLOCK_STOP = '{"type": "content_block_stop", "index": 0}'
MESSAGE_DELTA = (
    '{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, '
    '"usage": {"output_tokens": 15}}'
)
MESSAGE_STOP = '{"type": "message_stop"}'
PING = '{"type": "ping"}'
ERROR = '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'

DOC_EVENTS = [
    MESSAGE_START,
    TEXT_START,
    TEXT_DELTA,
    TOOL_START,
    INPUT_JSON_DELTA,
    SERVER_TOOL_START,
    THINKING_START,
    THINKING_DELTA,
    SIGNATURE_DELTA,
    REDACTED_START,
    CITATIONS_DELTA,
    BLOCK_STOP,
    MESSAGE_DELTA,
    MESSAGE_STOP,
    PING,
    ERROR,
]


def test_message_start_decodes_to_typed_message() -> None:
    event = decode_event(MESSAGE_START)
    assert event == MessageStart(
        message=Message(
            id="msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
            model="claude-opus-4-6",
            content=[],
            usage=Usage(input_tokens=25, output_tokens=1),
        )
    )
    assert event.type == "message_start"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (TEXT_START, ContentBlockStart(index=0, content_block=TextBlock(text=""))),
        (
            TOOL_START,
            ContentBlockStart(
                index=1,
                content_block=ToolUseBlock(
                    id="toolu_01T1x1fJ34qAmk2tNTrN7Up6", name="get_weather", input={}
                ),
            ),
        ),
        (
            SERVER_TOOL_START,
            ContentBlockStart(
                index=1,
                content_block=ServerToolUseBlock(
                    id="srvtoolu_014hJH82Qum7Td6UV8gDXThB", name="web_search", input={}
                ),
            ),
        ),
        (
            THINKING_START,
            ContentBlockStart(index=0, content_block=ThinkingBlock(thinking="", signature="")),
        ),
        (
            REDACTED_START,
            ContentBlockStart(
                index=0,
                content_block=RedactedThinkingBlock(
                    data="EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"
                ),
            ),
        ),
    ],
)
def test_content_block_start_variants(data: str, expected: ContentBlockStart) -> None:
    assert decode_event(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (TEXT_DELTA, TextDelta(text="Hello")),
        (INPUT_JSON_DELTA, InputJsonDelta(partial_json='{"location": "San Fra')),
        (
            THINKING_DELTA,
            ThinkingDelta(
                thinking="I need to find the GCD of 1071 and 462 using the Euclidean algorithm."
            ),
        ),
        (
            SIGNATURE_DELTA,
            SignatureDelta(signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."),
        ),
        (
            CITATIONS_DELTA,
            CitationsDelta(
                citation={
                    "type": "char_location",
                    "cited_text": "The grass is green.",
                    "document_index": 0,
                    "document_title": "Example",
                    "start_char_index": 0,
                    "end_char_index": 20,
                }
            ),
        ),
    ],
)
def test_content_block_delta_variants(data: str, expected: Any) -> None:
    event = decode_event(data)
    assert isinstance(event, ContentBlockDelta)
    assert event.delta == expected
    assert event.delta.type == json.loads(data)["delta"]["type"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (BLOCK_STOP, ContentBlockStop(index=0)),
        (
            MESSAGE_DELTA,
            MessageDelta(
                delta=MessageDeltaBody(stop_reason="end_turn", stop_sequence=None),
                usage=MessageDeltaUsage(output_tokens=15),
            ),
        ),
        (MESSAGE_STOP, MessageStop()),
        (PING, Ping()),
        (ERROR, ErrorEvent(error=ErrorBody(type="overloaded_error", message="Overloaded"))),
    ],
)
def test_other_event_variants(data: str, expected: Any) -> None:
    event = decode_event(data)
    assert event == expected
    assert event.type == json.loads(data)["type"]


def test_bytes_and_str_decode_alike() -> None:
    assert decode_event(TEXT_DELTA.encode()) == decode_event(TEXT_DELTA)


def test_message_delta_with_cumulative_usage_fields() -> None:
    event = decode_event(
        '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
        '"usage":{"input_tokens":472,"cache_creation_input_tokens":0,'
        '"cache_read_input_tokens":100,"output_tokens":89}}'
    )
    assert isinstance(event, MessageDelta)
    assert event.usage == MessageDeltaUsage(
        output_tokens=89,
        input_tokens=472,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=100,
    )


def test_abbreviated_documentation_shapes_still_decode() -> None:
    # The docs' thinking example omits usage in message_start and message_delta.
    start = decode_event(
        '{"type": "message_start", "message": {"id": "msg_01", "type": "message", '
        '"role": "assistant", "content": [], "model": "claude-opus-4-6", '
        '"stop_reason": null, "stop_sequence": null}}'
    )
    assert isinstance(start, MessageStart)
    assert start.message.usage == Usage()
    delta = decode_event(
        '{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}}'
    )
    assert isinstance(delta, MessageDelta)
    assert delta.usage.output_tokens is None


def test_extra_fields_are_ignored() -> None:
    event = decode_event(
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a",'
        '"new_field":1},"another":true}'
    )
    assert event == ContentBlockDelta(index=0, delta=TextDelta(text="a"))


def test_relay_error_info_is_decoded() -> None:
    event = decode_event(
        '{"type":"error","error":{"type":"api_error","message":"upstream dropped"},'
        '"relay":{"retryable":true,"partial":true,"reason":"upstream_dropped"}}'
    )
    assert isinstance(event, ErrorEvent)
    assert event.relay == RelayErrorInfo(retryable=True, partial=True, reason="upstream_dropped")


def test_every_struct_type_constant_matches_its_wire_tag() -> None:
    tagged: list[Any] = [
        TextBlock,
        ToolUseBlock,
        ServerToolUseBlock,
        ThinkingBlock,
        RedactedThinkingBlock,
        TextDelta,
        InputJsonDelta,
        ThinkingDelta,
        SignatureDelta,
        CitationsDelta,
        MessageStart,
        ContentBlockStart,
        ContentBlockDelta,
        ContentBlockStop,
        MessageDelta,
        MessageStop,
        Ping,
        ErrorEvent,
    ]
    for cls in tagged:
        assert cls.type == cls.__struct_config__.tag, cls


# --- fallbacks for unknown types -------------------------------------------------------


def test_unknown_event_type_keeps_raw_object() -> None:
    raw = {"type": "relay_metrics", "ttft_ms": 812.5, "outcome": "completed"}
    event = decode_event(json.dumps(raw))
    assert event == UnknownEvent(type="relay_metrics", raw=raw)
    assert json.loads(encode_event_json(event)) == raw


def test_unknown_block_type_keeps_raw_object() -> None:
    block = {
        "type": "web_search_tool_result",
        "tool_use_id": "srvtoolu_014hJH82Qum7Td6UV8gDXThB",
        "content": [{"type": "web_search_result", "title": "Weather", "url": "https://x.test"}],
    }
    data = json.dumps({"type": "content_block_start", "index": 2, "content_block": block})
    event = decode_event(data)
    assert isinstance(event, ContentBlockStart)
    assert event.index == 2
    assert isinstance(event.content_block, OtherBlock)
    assert event.content_block.type == "web_search_tool_result"
    assert event.content_block.raw == block
    assert json.loads(encode_event_json(event)) == json.loads(data)


def test_unknown_delta_type_keeps_raw_object() -> None:
    delta = {"type": "compaction_delta", "content": "summary so far"}
    data = json.dumps({"type": "content_block_delta", "index": 3, "delta": delta})
    event = decode_event(data)
    assert event == ContentBlockDelta(index=3, delta=OtherDelta(raw=delta))
    assert isinstance(event, ContentBlockDelta)
    assert event.delta.type == "compaction_delta"
    assert json.loads(encode_event_json(event)) == json.loads(data)


def test_unknown_block_inside_message_start() -> None:
    data = json.loads(MESSAGE_START)
    data["message"]["content"] = [{"type": "text", "text": "Hi"}, {"type": "future", "x": [1]}]
    event = decode_event(json.dumps(data))
    assert isinstance(event, MessageStart)
    assert event.message.content == [
        TextBlock(text="Hi"),
        OtherBlock(raw={"type": "future", "x": [1]}),
    ]
    assert json.loads(encode_event_json(event)) == data


def test_known_type_with_unknown_part_still_validates_the_rest() -> None:
    data = '{"type":"content_block_start","index":"one","content_block":{"type":"future"}}'
    with pytest.raises(EventDecodeError, match=r"content_block_start.*\$\.index"):
        decode_event(data)


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b'{"type": "ping"', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"message_stop"', "must be a JSON object"),
        (b'{"index": 0}', "no string 'type'"),
        (b'{"type": 7}', "no string 'type'"),
    ],
)
def test_invalid_payloads_raise(data: bytes, pattern: str) -> None:
    with pytest.raises(EventDecodeError, match=pattern):
        decode_event(data)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (
            '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}',
            r"invalid content_block_delta event: .*`text`.*\$\.delta",
        ),
        (
            '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":5}}',
            r"invalid content_block_delta event: Expected `str`.*\$\.delta\.text",
        ),
        ('{"type":"content_block_stop","index":-1}', r"content_block_stop.*>= 0.*\$\.index"),
        ('{"type":"content_block_stop"}', r"content_block_stop.*missing required field `index`"),
        (
            '{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t"}}',
            r"content_block_start.*`name`",
        ),
        ('{"type":"message_start","message":{"id":"m"}}', r"message_start.*`model`"),
        ('{"type":"error","error":"boom"}', r"invalid error event.*\$\.error"),
        (
            '{"type":"content_block_delta","index":0,"delta":"text"}',
            r"content_block_delta.*\$\.delta",
        ),
    ],
)
def test_known_type_with_wrong_shape_raises_clear_error(data: str, pattern: str) -> None:
    with pytest.raises(EventDecodeError, match=pattern):
        decode_event(data)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(EventDecodeError, ValueError)


def test_long_invalid_payload_is_excerpted() -> None:
    with pytest.raises(EventDecodeError) as info:
        decode_event("{" + "x" * 10_000)
    assert len(str(info.value)) < 400


# --- encoding --------------------------------------------------------------------------


@pytest.mark.parametrize("data", DOC_EVENTS)
def test_documented_events_round_trip_to_the_same_json(data: str) -> None:
    event = decode_event(data)
    assert json.loads(encode_event_json(event)) == json.loads(data)
    assert event_to_dict(event) == json.loads(data)
    assert decode_event(encode_event_json(event)) == event


def test_encoding_is_compact_and_tag_first() -> None:
    event = ContentBlockDelta(index=0, delta=TextDelta(text="Hi"))
    assert encode_event_json(event) == (
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}'
    )


def test_message_delta_keeps_null_stop_fields_on_the_wire() -> None:
    event = MessageDelta(delta=MessageDeltaBody(), usage=MessageDeltaUsage(output_tokens=3))
    assert json.loads(encode_event_json(event)) == {
        "type": "message_delta",
        "delta": {"stop_reason": None, "stop_sequence": None},
        "usage": {"output_tokens": 3},
    }


def test_error_event_without_relay_info_is_plain_anthropic_shape() -> None:
    event = ErrorEvent(error=ErrorBody(type="overloaded_error", message="Overloaded"))
    assert json.loads(encode_event_json(event)) == json.loads(ERROR)
    relayed = ErrorEvent(
        error=ErrorBody(type="api_error", message="x"),
        relay=RelayErrorInfo(retryable=True, partial=False, reason="upstream_error"),
    )
    assert json.loads(encode_event_json(relayed))["relay"] == {
        "retryable": True,
        "reason": "upstream_error",
    }


def _full_message() -> Message:
    return Message(
        id="msg_014p7gG3wDgGV9EUtLvnow3U",
        model="claude-opus-4-6",
        content=[
            ThinkingBlock(thinking="Let me check.", signature="EqQBCgIYAhIM"),
            TextBlock(text="Okay, let's check the weather for San Francisco, CA:"),
            ToolUseBlock(
                id="toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                name="get_weather",
                input={"location": "San Francisco, CA", "unit": "fahrenheit"},
            ),
            ToolUseBlock(id="toolu_02", name="get_time", input={}),
        ],
        stop_reason="tool_use",
        stop_sequence=None,
        usage=Usage(input_tokens=472, output_tokens=89),
    )


def test_message_encodes_to_the_exact_api_shape() -> None:
    expected = {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-4-6",
        "content": [
            {"type": "thinking", "thinking": "Let me check.", "signature": "EqQBCgIYAhIM"},
            {"type": "text", "text": "Okay, let's check the weather for San Francisco, CA:"},
            {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {"location": "San Francisco, CA", "unit": "fahrenheit"},
            },
            {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 472, "output_tokens": 89},
    }
    message = _full_message()
    body = encode_message_json(message)
    assert json.loads(body) == expected
    # Key order as the API documents it, and None-valued usage counters left out.
    assert list(json.loads(body)) == list(expected)
    assert b"cache_creation_input_tokens" not in body
    assert b"citations" not in body
    assert message_to_dict(message) == expected


def test_message_round_trips_through_json() -> None:
    message = _full_message()
    assert decode_message(encode_message_json(message)) == message


def test_message_with_citations_and_unknown_block_round_trips() -> None:
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0}
    unknown = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
    message = Message(
        id="msg_1",
        model="m",
        content=[TextBlock(text="x", citations=[citation]), OtherBlock(raw=unknown)],
        usage=Usage(input_tokens=1, output_tokens=2, cache_read_input_tokens=0),
    )
    body = json.loads(encode_message_json(message))
    assert body["content"] == [{"type": "text", "text": "x", "citations": [citation]}, unknown]
    assert body["usage"] == {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 0}
    assert decode_message(encode_message_json(message)) == message


def test_decode_message_errors() -> None:
    with pytest.raises(EventDecodeError, match="not valid JSON"):
        decode_message(b"{")
    with pytest.raises(EventDecodeError, match=r"invalid message.*`id`"):
        decode_message(b'{"model": "m", "content": []}')


@given(st.text())
def test_any_text_delta_round_trips(text: str) -> None:
    event = ContentBlockDelta(index=0, delta=TextDelta(text=text))
    assert decode_event(encode_event_json(event)) == event


def test_structs_are_immutable() -> None:
    event = ContentBlockStop(index=0)
    with pytest.raises(AttributeError):
        event.index = 1  # type: ignore[misc]
    assert isinstance(event, msgspec.Struct)
