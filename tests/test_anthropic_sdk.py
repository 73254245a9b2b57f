"""The official Anthropic Python SDK, pointed at the relay with ``base_url``, just works.

Every mock scenario that ends normally (seen from the relay's client) is played through the
SDK's three entry points, sync and async: ``messages.create(stream=True)`` (raw events),
``messages.stream()`` (``text_stream`` then ``get_final_message()``) and the non-streaming
``messages.create()``. The expected message is what the mock generates for the same request,
asked directly (same seed and prompt give the same words and tool ids).

The rate-limited and overloaded scenarios end normally only because the relay retries them
before the first byte; the SDK's own retries are off (``max_retries=0``) so they cannot help.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import msgspec
import pytest

from service.mock import MockSettings
from service.mock.scenarios import TOOL_INPUT
from tests.support.stack import Stack, relay_stack

# Scenario -> its mock options. Failure scenarios (error_mid_stream, drop, stall, malformed)
# end in an error by design and belong to the failure suites.
SCENARIOS: dict[str, dict[str, Any]] = {
    "text": {"tokens": 12},
    "tool_use": {},
    "thinking": {"tokens": 8, "think_ms": 300},
    "large": {"tokens": 40, "token_bytes": 2048},
    "rate_limited": {"tokens": 8, "retry_after_ms": 0},
    "overloaded": {"tokens": 8},
}
STREAMED_TOKENS = 30


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    overrides = {"retry_base_delay": 0.02, "retry_max_delay": 0.1}
    with relay_stack(overrides, MockSettings(ttft_ms=100, tpot_ms=5)) as running:
        yield running


@pytest.fixture(scope="module")
def expected(stack: Stack) -> dict[str, dict[str, Any]]:
    """The final message of each scenario, asked from the mock directly (no relay)."""
    messages = {}
    for scenario, options in SCENARIOS.items():
        # fail_times=0: the mock plays the scenario's clean ending at once.
        body = _request(scenario) | {"mock": {**options, "fail_times": 0}}
        response = httpx.post(f"{stack.mock_url}/v1/messages", json=body, timeout=30)
        assert response.status_code == 200, response.text
        messages[scenario] = response.json()
    return messages


def _request(scenario: str) -> dict[str, Any]:
    return {
        "model": f"mock-{scenario}",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"Play the {scenario} scenario."}],
    }


def _kwargs(scenario: str) -> dict[str, Any]:
    """SDK call arguments: mock options travel in ``extra_body``, as an SDK user passes them."""
    # A fresh attempt key per call: every call meets the scenario's failing first attempts.
    mock = {**SCENARIOS[scenario], "key": secrets.token_hex(8)}
    return {**_request(scenario), "extra_body": {"mock": mock}}


def _client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.relay_url, api_key="test-key", max_retries=0)


def _async_client(stack: Stack) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=stack.relay_url, api_key="test-key", max_retries=0)


def _view(message: dict[str, Any]) -> dict[str, Any]:
    """What must match: role, model, stop reason, output tokens and each block's content."""
    keys = {
        "text": ("type", "text"),
        "thinking": ("type", "thinking", "signature"),
        "tool_use": ("type", "id", "name", "input"),
    }
    return {
        "role": message["role"],
        "model": message["model"],
        "stop_reason": message["stop_reason"],
        "output_tokens": message["usage"]["output_tokens"],
        "content": [{k: block[k] for k in keys[block["type"]]} for block in message["content"]],
    }


def _check_final(message: anthropic.types.Message, expected: dict[str, Any]) -> None:
    assert _view(message.model_dump()) == _view(expected)
    tools = [block for block in message.content if block.type == "tool_use"]
    if message.model == "mock-tool_use":
        # The complete input dict, not a prefix parsed from partial JSON.
        assert [(t.name, t.input) for t in tools] == [("get_weather", TOOL_INPUT), ("get_time", {})]


def _expected_text(expected: dict[str, Any]) -> str:
    return "".join(b["text"] for b in expected["content"] if b["type"] == "text")


# Upstream answers per relay stream: the failing first attempts the relay retried.
_ATTEMPTS = {"rate_limited": [429, 200], "overloaded": [529, 529, 200]}


def _assert_relayed(stack: Stack, headers: httpx.Headers | Any, scenario: str) -> None:
    stream_id = headers.get("x-relay-stream-id")
    assert stream_id, "the response did not come through the relay"
    attempts = [exchange.status for exchange in stack.upstream.for_stream(stream_id)]
    assert attempts == _ATTEMPTS.get(scenario, [200])


def _fold_events(events: list[Any]) -> tuple[list[str], str, dict[int, str]]:
    """Event types, streamed text and each tool block's concatenated input JSON."""
    types: list[str] = []
    text: list[str] = []
    tool_json: dict[int, str] = {}
    for event in events:
        types.append(event.type)
        if event.type == "content_block_delta":
            if event.delta.type == "text_delta":
                text.append(event.delta.text)
            elif event.delta.type == "input_json_delta":
                tool_json[event.index] = tool_json.get(event.index, "") + event.delta.partial_json
    return types, "".join(text), tool_json


def _check_events(events: list[Any], expected: dict[str, Any]) -> None:
    types, text, tool_json = _fold_events(events)
    assert types[0] == "message_start"
    # The relay's closing relay_metrics event reaches raw-event consumers after message_stop.
    assert types[types.index("message_stop") :] in (
        ["message_stop"],
        ["message_stop", "relay_metrics"],
    )
    assert text == _expected_text(expected)
    inputs = [msgspec.json.decode(j) if j else {} for _, j in sorted(tool_json.items())]
    assert inputs == [b["input"] for b in expected["content"] if b["type"] == "tool_use"]


# -- sync client -----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sync_create_stream_true_streams_every_event(
    stack: Stack, expected: dict[str, dict[str, Any]], scenario: str
) -> None:
    with _client(stack) as client:
        stream = client.messages.create(stream=True, **_kwargs(scenario))
        with stream:
            events = list(stream)
        _assert_relayed(stack, stream.response.headers, scenario)
    _check_events(events, expected[scenario])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sync_messages_stream_text_then_final_message(
    stack: Stack, expected: dict[str, dict[str, Any]], scenario: str
) -> None:
    with _client(stack) as client, client.messages.stream(**_kwargs(scenario)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        _assert_relayed(stack, stream.response.headers, scenario)
    assert text == _expected_text(expected[scenario])
    _check_final(final, expected[scenario])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sync_non_streaming_create_returns_the_same_message(
    stack: Stack, expected: dict[str, dict[str, Any]], scenario: str
) -> None:
    with _client(stack) as client:
        raw = client.messages.with_raw_response.create(**_kwargs(scenario))
        message = raw.parse()
    _assert_relayed(stack, raw.headers, scenario)
    _check_final(message, expected[scenario])


def test_sync_text_stream_delivers_text_while_it_is_generated(stack: Stack) -> None:
    kwargs = _kwargs("text") | {"extra_body": {"mock": {"tokens": STREAMED_TOKENS}}}
    arrivals = []
    with _client(stack) as client:
        start = time.perf_counter()
        with client.messages.stream(**kwargs) as stream:
            for _ in stream.text_stream:
                arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == STREAMED_TOKENS
    assert arrivals[0] < 0.5 * arrivals[-1], (arrivals[0], arrivals[-1])


# -- async client ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_async_create_stream_true_streams_every_event(
    stack: Stack, expected: dict[str, dict[str, Any]], scenario: str
) -> None:
    async with _async_client(stack) as client:
        stream = await client.messages.create(stream=True, **_kwargs(scenario))
        async with stream:
            events = [event async for event in stream]
        _assert_relayed(stack, stream.response.headers, scenario)
    _check_events(events, expected[scenario])


@pytest.mark.anyio
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_async_messages_stream_text_then_final_message(
    stack: Stack, expected: dict[str, dict[str, Any]], scenario: str
) -> None:
    async with (
        _async_client(stack) as client,
        client.messages.stream(**_kwargs(scenario)) as stream,
    ):
        text = "".join([chunk async for chunk in stream.text_stream])
        final = await stream.get_final_message()
        _assert_relayed(stack, stream.response.headers, scenario)
    assert text == _expected_text(expected[scenario])
    _check_final(final, expected[scenario])


@pytest.mark.anyio
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_async_non_streaming_create_returns_the_same_message(
    stack: Stack, expected: dict[str, dict[str, Any]], scenario: str
) -> None:
    async with _async_client(stack) as client:
        raw = await client.messages.with_raw_response.create(**_kwargs(scenario))
        message = await raw.parse()
    _assert_relayed(stack, raw.headers, scenario)
    _check_final(message, expected[scenario])


@pytest.mark.anyio
async def test_async_text_stream_delivers_text_while_it_is_generated(stack: Stack) -> None:
    kwargs = _kwargs("text") | {"extra_body": {"mock": {"tokens": STREAMED_TOKENS}}}
    arrivals = []
    async with _async_client(stack) as client:
        start = time.perf_counter()
        async with client.messages.stream(**kwargs) as stream:
            async for _ in stream.text_stream:
                arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == STREAMED_TOKENS
    assert arrivals[0] < 0.5 * arrivals[-1], (arrivals[0], arrivals[-1])


# -- errors reach the SDK as its own exception types --------------------------------------------


def test_sdk_raises_bad_request_for_an_upstream_400(stack: Stack) -> None:
    # The mock refuses unknown "mock" options with 400 invalid_request_error; not retryable.
    kwargs = _request("text") | {"extra_body": {"mock": {"no_such_option": 1}}}
    with _client(stack) as client:
        with pytest.raises(anthropic.BadRequestError) as non_streaming:
            client.messages.create(**kwargs)
        # Streaming: the relay already answered 200, so the error is an `error` event.
        with (
            pytest.raises(anthropic.APIStatusError) as streaming,
            client.messages.stream(**kwargs) as stream,
        ):
            stream.get_final_message()
    for raised in (non_streaming.value, streaming.value):
        assert isinstance(raised.body, dict)
        assert raised.body["error"]["type"] == "invalid_request_error"
        assert "no_such_option" in raised.body["error"]["message"]
        assert raised.body["relay"] == {
            "retryable": False,
            "partial": False,
            "reason": "status_400",
        }


def test_sdk_raises_authentication_error_for_a_wrong_relay_key() -> None:
    with relay_stack({"api_keys": frozenset({"right-key"})}) as stack:
        kwargs = _kwargs("text")
        with anthropic.Anthropic(base_url=stack.relay_url, api_key="wrong-key", max_retries=0) as c:
            with pytest.raises(anthropic.AuthenticationError):
                c.messages.create(**kwargs)
            with pytest.raises(anthropic.AuthenticationError), c.messages.stream(**kwargs) as s:
                s.get_final_message()
        with anthropic.Anthropic(base_url=stack.relay_url, api_key="right-key", max_retries=0) as c:
            assert c.messages.create(**kwargs).stop_reason == "end_turn"
