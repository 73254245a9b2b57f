"""The OpenAI adapter: recorded Chat Completions streams -> Anthropic-shaped frames, request
translation, error mapping. Recordings: tests/fixtures/openai/ (hand-made, see its README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from service.accumulate import MessageAccumulator, accumulate
from service.config import Settings
from service.errors import RequestError, UpstreamProtocolError, UpstreamStatusError
from service.events import (
    ContentBlockDelta,
    ErrorEvent,
    MessageStop,
    StreamEvent,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    decode_event,
)
from service.sse import SSEDecoder
from service.upstream.base import UpstreamFrame
from service.upstream.factory import make_adapter
from service.upstream.openai import OpenAIDecoder, OpenAIUpstream, chat_completions_url
from service.upstream.openai_request import translate_request

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.sse"))


def decode_all(data: bytes, chunk_size: int | None = None) -> list[UpstreamFrame]:
    decoder = OpenAIDecoder(max_event_bytes=1 << 20)
    frames: list[UpstreamFrame] = []
    size = chunk_size or len(data) or 1
    for start in range(0, len(data), size):
        frames.extend(decoder.feed(data[start : start + size]))
    frames.extend(decoder.close())
    return frames


def fixture_frames(name: str) -> list[UpstreamFrame]:
    return decode_all((FIXTURES / name).read_bytes())


def events_of(frames: list[UpstreamFrame]) -> list[StreamEvent]:
    return [f.event for f in frames]


def message_of(name: str) -> Any:
    return accumulate(events_of(fixture_frames(name)))


# -- recorded streams --------------------------------------------------------------------


def test_parallel_tool_calls_become_two_tool_use_blocks() -> None:
    message = message_of("openai_parallel_tools.sse")
    assert [type(b) for b in message.content] == [ToolUseBlock, ToolUseBlock]
    first, second = message.content
    assert (first.id, first.name) == ("call_q8DKmBd0xT4mNRJ2sPz7hVwE", "get_weather")
    assert first.input == {"location": "Paris, France"}
    assert (second.id, second.name) == ("call_Zr3LxYb9eQ1uTcA6nK0dFpGs", "get_weather")
    assert second.input == {"location": "東京, Japan", "unit": "celsius"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (82, 52)
    assert message.model == "gpt-4o-2024-08-06"


def test_parallel_tool_fragments_stream_one_delta_per_chunk() -> None:
    events = events_of(fixture_frames("openai_parallel_tools.sse"))
    fragments = [
        (e.index, e.delta.partial_json)
        for e in events
        if isinstance(e, ContentBlockDelta) and hasattr(e.delta, "partial_json")
    ]
    # Every argument fragment is forwarded as it came, the opening "" included, in order.
    assert fragments[:5] == [
        (0, ""),
        (0, '{"lo'),
        (0, "cation"),
        (0, '": "Par'),
        (0, 'is, France"}'),
    ]
    assert [i for i, _ in fragments] == [0] * 5 + [1] * 6
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    # Block 0 stops before block 1 starts: Anthropic blocks never interleave.
    assert kinds.index("content_block_stop") < kinds.index("content_block_start", 2)


def test_usage_chunk_with_cached_tokens_maps_to_anthropic_usage() -> None:
    message = message_of("openai_text_usage.sse")
    assert message.content == [TextBlock(text="Server-sent events stream text \u2013 café ☕.")]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 1203 - 1024
    assert message.usage.cache_read_input_tokens == 1024
    assert message.usage.output_tokens == 8


def test_empty_first_content_opens_no_block() -> None:
    events = events_of(fixture_frames("openai_text_usage.sse"))
    deltas = [e for e in events if isinstance(e, ContentBlockDelta)]
    assert len(deltas) == 7  # the role chunk's "" is not a token


def test_vllm_reasoning_then_text_then_tool_call() -> None:
    message = message_of("vllm_reasoning_tools.sse")
    thinking, text, tool = message.content
    assert isinstance(thinking, ThinkingBlock)
    assert thinking.thinking.startswith("Okay, the user wants the weather in Dallas.")
    assert thinking.signature == ""
    assert text == TextBlock(text="\n\n")
    assert isinstance(tool, ToolUseBlock)
    assert tool.name == "get_current_weather"
    assert tool.input == {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (211, 57)


def test_vllm_matched_stop_string_is_a_stop_sequence() -> None:
    message = message_of("vllm_stop_sequence.sse")
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == ", 4"
    assert message.content == [TextBlock(text="1, 2, 3")]


def test_llamacpp_null_content_and_length_finish() -> None:
    message = message_of("llamacpp_text_timings.sse")
    assert message.content == [TextBlock(text="Hello! How can I help?")]
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (31, 7)
    assert message.model == "SmolLM2-135M-Instruct"


def test_captured_llama_cpp_python_stream_without_usage_chunk() -> None:
    # A real capture: this server ignores stream_options, so no usage chunk ever comes.
    events = events_of(fixture_frames("llamacpp_python_captured.sse"))
    message = accumulate(events)
    (block,) = message.content
    assert isinstance(block, TextBlock)
    assert block.text.startswith("The three rivers")
    assert message.stop_reason == "max_tokens"
    deltas = [e for e in events if isinstance(e, ContentBlockDelta)]
    # Output tokens fall back to the delta count (one chunk per token here); input stays 0.
    assert message.usage.output_tokens == len(deltas) == 12
    assert message.usage.input_tokens == 0
    assert message.model == "SmolLM2-135M-Instruct"


def test_ollama_reasoning_and_whole_tool_calls_in_one_chunk() -> None:
    message = message_of("ollama_reasoning_tools.sse")
    thinking, paris, berlin = message.content
    assert isinstance(thinking, ThinkingBlock)
    assert thinking.thinking == "The user asks for two cities."
    assert (paris.id, paris.input) == ("call_k3h1xq7v", {"city": "Paris"})
    assert (berlin.id, berlin.input) == ("call_p0w9zt2m", {"city": "Berlin"})
    assert message.stop_reason == "tool_use"


def test_gateway_quirks_usage_on_finish_chunk_choices_null_and_no_done() -> None:
    events = events_of(fixture_frames("gateway_choices_null_no_done.sse"))
    assert isinstance(events[-1], MessageStop)  # completed by the end of the body
    message = accumulate(events)
    assert message.content == [TextBlock(text="Bonjour !")]
    # Usage counts are totals: the last report wins.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 2)


def test_error_chunk_becomes_an_anthropic_error_event() -> None:
    events = events_of(fixture_frames("openai_error_midstream.sse"))
    error = events[-1]
    assert isinstance(error, ErrorEvent)
    assert error.error.type == "api_error"
    assert error.error.message.startswith("The server had an error")
    assert not any(isinstance(e, MessageStop) for e in events)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_frames_are_valid_anthropic_sse(name: str) -> None:
    for frame in fixture_frames(name):
        assert not frame.raw.endswith(b"\n\n")
        (sse,) = SSEDecoder().feed(frame.raw + b"\n\n")
        assert sse.event == frame.event.type
        assert decode_event(sse.data) == frame.event


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_chunk_boundaries_do_not_change_frames(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    whole = [f.raw for f in decode_all(data)]
    for size in (1, 7, 64):
        assert [f.raw for f in decode_all(data, size)] == whole


def test_accumulator_accepts_every_complete_fixture() -> None:
    for name in ALL_FIXTURES:
        accumulator = MessageAccumulator()
        for event in events_of(fixture_frames(name)):
            if not isinstance(event, ErrorEvent):
                accumulator.feed(event)
        assert accumulator.started, name


# -- protocol edge cases -----------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "c1",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + msgspec.json.encode({**body, **extra}) + b"\n\n"


def test_stream_without_finish_reason_has_no_message_stop() -> None:
    frames = decode_all(chunk({"content": "half"}) + b"data: [DONE]\n\n")
    assert [f.event.type for f in frames] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
    ]


def test_interleaved_tool_fragments_are_a_protocol_error() -> None:
    data = (
        chunk(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}
        )
        + chunk(
            {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]}
        )
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]})
    )
    with pytest.raises(UpstreamProtocolError, match="interleaved"):
        decode_all(data)


def test_repeated_id_on_every_delta_continues_the_same_call() -> None:
    call = {"index": 0, "id": "call_1", "type": "function"}
    data = (
        chunk({"tool_calls": [{**call, "function": {"name": "f", "arguments": '{"a"'}}]})
        + chunk({"tool_calls": [{**call, "function": {"arguments": ": 1}"}}]})
        + chunk({}, "tool_calls")
        + b"data: [DONE]\n\n"
    )
    message = accumulate(events_of(decode_all(data)))
    assert message.content == [ToolUseBlock(id="call_1", name="f", input={"a": 1})]


def test_stop_after_tool_calls_means_tool_use() -> None:
    data = (
        chunk(
            {"tool_calls": [{"index": 0, "id": "x", "function": {"name": "f", "arguments": "{}"}}]}
        )
        + chunk({}, "stop")
        + b"data: [DONE]\n\n"
    )
    assert accumulate(events_of(decode_all(data))).stop_reason == "tool_use"


def test_missing_usage_falls_back_to_delta_count() -> None:
    data = (
        chunk({"content": "a"}) + chunk({"content": "b"}) + chunk({}, "stop") + b"data: [DONE]\n\n"
    )
    message = accumulate(events_of(decode_all(data)))
    assert message.usage.output_tokens == 2


def test_content_filter_is_a_refusal() -> None:
    data = chunk({"content": "I can"}) + chunk({}, "content_filter") + b"data: [DONE]\n\n"
    assert accumulate(events_of(decode_all(data))).stop_reason == "refusal"


@pytest.mark.parametrize(
    "data",
    [b'data: {"choices": [\n\n', b"data: [1, 2]\n\n"],
    ids=["truncated-json", "not-an-object"],
)
def test_undecodable_chunk_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        decode_all(data)


def test_tool_call_without_a_name_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError, match="function name"):
        decode_all(chunk({"tool_calls": [{"index": 0, "id": "x", "function": {"arguments": "{"}}]}))


def test_flat_vllm_error_chunk() -> None:
    data = (
        chunk({"content": "x"})
        + b'data: {"object": "error", "message": "boom", "type": "BadRequestError", '
        + b'"param": null, "code": 400}\n\n'
    )
    error = decode_all(data)[-1].event
    assert isinstance(error, ErrorEvent)
    assert (error.error.type, error.error.message) == ("invalid_request_error", "boom")


def test_event_error_with_bare_error_object() -> None:
    data = b'event: error\ndata: {"message": "busy", "code": 503}\n\n'
    (frame,) = decode_all(data)
    assert isinstance(frame.event, ErrorEvent)
    assert (frame.event.error.type, frame.event.error.message) == ("overloaded_error", "busy")


# -- request translation -----------------------------------------------------------------


def test_translation_of_a_full_tool_turn() -> None:
    body = {
        "model": "gpt-4o",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "stop_sequences": ["\n\nHuman:"],
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_1",
                        "content": [{"type": "text", "text": "18C"}],
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        "seed": 7,
    }
    out = translate_request(body)
    assert out["messages"] == [
        {"role": "system", "content": "Be brief.\n\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "Weather for a city",
            },
        }
    ]
    assert out["tool_choice"] == "required"
    assert out["parallel_tool_calls"] is False
    assert (out["max_tokens"], out["temperature"], out["top_p"]) == (100, 0.2, 0.9)
    assert out["stop"] == ["\n\nHuman:"]
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert out["seed"] == 7  # unknown fields pass through (an SDK's extra_body)
    for dropped in ("top_k", "metadata", "thinking", "system", "stop_sequences", "tool_use"):
        assert dropped not in out


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice_mapping(choice: dict[str, Any], expected: Any) -> None:
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    assert translate_request({**body, "tool_choice": choice})["tool_choice"] == expected


def test_images_become_image_url_parts() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    body = {
        "model": "m",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}],
    }
    (message,) = translate_request(body)["messages"]
    assert message["content"] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "document", "source": {"type": "text", "data": "x", "media_type": "text/plain"}}],
        [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
    ],
    ids=["document", "file-image"],
)
def test_unrepresentable_content_is_refused(content: list[Any]) -> None:
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": content}]}
    with pytest.raises(RequestError) as info:
        translate_request(body)
    assert info.value.status == 400


def test_server_tools_are_refused() -> None:
    body = {
        "model": "m",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    }
    with pytest.raises(RequestError, match="server tools"):
        translate_request(body)


# -- the adapter -------------------------------------------------------------------------

BODY = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/chat/completions"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/v1/chat/completions"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
        ("http://localhost:11434/v1/", "http://localhost:11434/v1/chat/completions"),
    ],
)
def test_chat_completions_url(base: str, expected: str) -> None:
    assert chat_completions_url(base) == expected


@pytest.mark.anyio
async def test_build_request_sends_bearer_key_and_translated_body() -> None:
    settings = Settings(
        upstream_url="http://127.0.0.1:9",
        upstream_provider="openai",
        upstream_api_key="sk-test-123",
    )
    adapter = make_adapter(settings)
    assert isinstance(adapter, OpenAIUpstream)
    async with httpx.AsyncClient() as client:
        request = adapter.build_request(
            client, BODY, b'{"raw": "ignored"}', {"anthropic-version": "2023-06-01"}, "rs_1"
        )
    assert str(request.url) == "http://127.0.0.1:9/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-123"
    assert request.headers["x-relay-stream-id"] == "rs_1"
    assert "anthropic-version" not in request.headers
    assert "x-api-key" not in request.headers
    sent = msgspec.json.decode(request.content)
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert sent["max_tokens"] == 16
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
async def test_hosted_openai_gets_max_completion_tokens_and_no_key_means_no_header() -> None:
    hosted = OpenAIUpstream(Settings(upstream_url="https://api.openai.com"))
    local = OpenAIUpstream(Settings(upstream_url="http://127.0.0.1:11434"))
    async with httpx.AsyncClient() as client:
        hosted_body = msgspec.json.decode(hosted.build_request(client, BODY, None, {}, "s").content)
        local_request = local.build_request(client, BODY, None, {}, "s")
    assert hosted_body["max_completion_tokens"] == 16
    assert "max_tokens" not in hosted_body
    assert msgspec.json.decode(local_request.content)["max_tokens"] == 16
    assert "authorization" not in local_request.headers


@pytest.mark.anyio
async def test_untranslatable_body_fails_the_attempt_without_retry() -> None:
    adapter = OpenAIUpstream(Settings())
    body = {**BODY, "messages": [{"role": "user", "content": [{"type": "document"}]}]}
    async with httpx.AsyncClient() as client:
        with pytest.raises(UpstreamStatusError) as info:
            adapter.build_request(client, body, None, {}, "s")
    assert (info.value.status, info.value.error_type, info.value.retryable) == (
        400,
        "invalid_request_error",
        False,
    )


def status_error(
    status: int, body: Any, headers: dict[str, str] | None = None, key: str | None = None
) -> UpstreamStatusError:
    adapter = OpenAIUpstream(Settings(upstream_api_key=key))
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return adapter.status_error(httpx.Response(status, headers=headers or {}), raw)


def test_rate_limit_is_retryable_with_retry_after() -> None:
    error = status_error(
        429,
        {
            "error": {
                "message": "Rate limit reached for gpt-4o",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
        {"retry-after": "2"},
    )
    assert (error.error_type, error.retryable, error.retry_after) == ("rate_limit_error", True, 2.0)
    assert error.message == "Rate limit reached for gpt-4o"


def test_exhausted_quota_is_not_retryable() -> None:
    error = status_error(
        429,
        {
            "error": {
                "message": "You exceeded your current quota",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        },
    )
    assert (error.error_type, error.retryable) == ("billing_error", False)


def test_503_is_overloaded_and_retryable() -> None:
    error = status_error(
        503,
        {
            "error": {
                "message": "The server is overloaded or not ready yet.",
                "type": "server_error",
            }
        },
    )
    assert (error.error_type, error.retryable, error.status) == ("overloaded_error", True, 503)


def test_rejected_key_never_reaches_the_message() -> None:
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    error = status_error(
        401,
        {
            "error": {
                "message": f"Incorrect API key provided: {key}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        },
        key=key,
    )
    assert error.error_type == "authentication_error"
    assert key not in error.message
    assert not error.retryable


@pytest.mark.parametrize(
    ("status", "body", "error_type", "message"),
    [
        (
            400,
            {
                "object": "error",
                "message": "max_tokens too large",
                "type": "BadRequestError",
                "code": 400,
            },
            "invalid_request_error",
            "max_tokens too large",
        ),
        (
            404,
            {"error": 'model "llama9" not found, try pulling it first'},
            "not_found_error",
            'model "llama9" not found, try pulling it first',
        ),
        (
            422,
            {"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]},
            "invalid_request_error",
            None,
        ),
        (502, b"<html>Bad Gateway</html>", "api_error", "<html>Bad Gateway</html>"),
    ],
    ids=["vllm-flat", "ollama-string", "fastapi-detail", "proxy-html"],
)
def test_error_body_shapes(status: int, body: Any, error_type: str, message: str | None) -> None:
    error = status_error(status, body)
    assert error.error_type == error_type
    assert error.retryable is (status == 502)
    if message is not None:
        assert error.message == message
    else:
        assert "Field required" in error.message
