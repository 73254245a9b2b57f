"""The relay with ``upstream_provider=openai`` in front of the mock's Chat Completions endpoint.

Every mock scenario is played twice, through the passthrough adapter (mock ``/v1/messages``)
and through the OpenAI adapter (mock ``/v1/chat/completions``), and the client must see the
same Anthropic-shaped result: the same content events (words, tool ids, argument fragments),
the same stop reason and usage, the same ending (error type, reason, partial flag). The mock
plays one script per scenario on both wires, so any difference is the adapter's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import anthropic
import httpx
import pytest

from service.mock import MockSettings
from service.mock.scenarios import TOOL_INPUT
from tests.support.ledger import assert_aborted_and_frozen
from tests.support.stack import Recording, Stack, record_stream, relay_stack

CHAT = "/v1/chat/completions"
MOCK = MockSettings(ttft_ms=60, tpot_ms=3)
RELAY = {
    "retry_base_delay": 0.02,
    "retry_max_delay": 0.1,
    "upstream_read_timeout": 0.6,
    "progress_interval": 5.0,
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "text": {"tokens": 12},
    "tool_use": {},
    "thinking": {"tokens": 6, "think_ms": 300},
    "large": {"tokens": 200, "token_bytes": 256},
    "rate_limited": {"tokens": 5, "retry_after_ms": 0},
    "overloaded": {"tokens": 5},
    "error_mid_stream": {"fail_after": 4},
    "drop": {"fail_after": 4},
    "stall": {"fail_after": 4, "stall_ms": 5000},
    "malformed": {"fail_after": 4},
}
CONTENT_EVENTS = ("content_block_start", "content_block_delta", "content_block_stop")


@pytest.fixture(scope="module")
def stacks() -> Iterator[dict[str, Stack]]:
    with ExitStack() as servers:
        yield {
            provider: servers.enter_context(
                relay_stack({**RELAY, "upstream_provider": provider}, MOCK)
            )
            for provider in ("anthropic", "openai")
        }


def body(scenario: str, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": f"mock-{scenario}",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": f"Play {scenario}, please."}],
        "mock": options,
        **extra,
    }


def named_events(recording: Recording) -> list[tuple[str, dict[str, Any]]]:
    return [(b.event, json.loads(b.data)) for b in recording.events() if b.event and b.data]


def _signature(event: tuple[str, dict[str, Any]]) -> bool:
    return event[1].get("delta", {}).get("type") == "signature_delta"


def result(recording: Recording) -> dict[str, Any]:
    """What a client can tell about a stream, with the parts that may differ (ids, the
    envelope's provisional usage, keepalives) left out. Thinking signatures are left out too:
    OpenAI has none, the one thing the translation cannot carry in these scenarios."""
    events = [e for e in named_events(recording) if not _signature(e)]
    metrics = next(d for name, d in events if name == "relay_metrics")
    errors = [d for name, d in events if name == "error"]
    deltas = [d for name, d in events if name == "message_delta"]
    return {
        "content": [(name, d) for name, d in events if name in CONTENT_EVENTS],
        "stop": [d["delta"] for d in deltas],
        "output_tokens": [d["usage"]["output_tokens"] for d in deltas],
        "model": [d["message"]["model"] for name, d in events if name == "message_start"],
        "outcome": metrics["outcome"],
        # A stream that broke never got OpenAI's usage chunk: only a finished one has usage.
        "usage": metrics["usage"] if metrics["outcome"] == "completed" else None,
        "errors": [(e["error"]["type"], e.get("relay")) for e in errors],
        "named": sorted({name for name, _ in events} - {"ping"}),
    }


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_scenario_gives_the_same_result_through_both_adapters(
    stacks: dict[str, Stack], scenario: str
) -> None:
    request = body(scenario, SCENARIOS[scenario])
    seen = {
        provider: record_stream(f"{stack.relay_url}/v1/messages", request)
        for provider, stack in stacks.items()
    }
    for recording in seen.values():
        assert recording.status == 200
    anthropic_result, openai_result = result(seen["anthropic"]), result(seen["openai"])
    assert openai_result == anthropic_result
    if openai_result["outcome"] != "completed":
        usage = json.loads(seen["openai"].first_event("relay_metrics").data or "{}")["usage"]
        assert usage == {"input_tokens": 0, "output_tokens": 0}
    # And the OpenAI side really went over Chat Completions.
    (exchange, *_) = stacks["openai"].upstream.exchanges(path=CHAT)[-1:]
    assert json.loads(exchange.body)["stream_options"] == {"include_usage": True}
    assert exchange.headers["x-relay-stream-id"] == seen["openai"].headers["x-relay-stream-id"]


def test_clean_scenarios_complete_and_failures_fail_the_same_way(
    stacks: dict[str, Stack],
) -> None:
    outcomes = {}
    for scenario, options in SCENARIOS.items():
        recording = record_stream(
            f"{stacks['openai'].relay_url}/v1/messages", body(scenario, options)
        )
        outcomes[scenario] = result(recording)["outcome"]
    assert outcomes == {
        "text": "completed",
        "tool_use": "completed",
        "thinking": "completed",
        "large": "completed",
        "rate_limited": "completed",
        "overloaded": "completed",
        "error_mid_stream": "upstream_error",
        "drop": "upstream_dropped",
        "stall": "upstream_stall",
        "malformed": "upstream_protocol",
    }


def test_exhausted_retries_end_with_the_same_error_type(stacks: dict[str, Stack]) -> None:
    request = body("overloaded", {"fail_times": 9, "key": "exhaust"})
    errors = {}
    for provider, stack in stacks.items():
        events = named_events(record_stream(f"{stack.relay_url}/v1/messages", request))
        errors[provider] = next(d for name, d in events if name == "error")
    assert {p: e["error"]["type"] for p, e in errors.items()} == {
        "anthropic": "overloaded_error",
        "openai": "overloaded_error",
    }
    # The reason names the HTTP status each wire uses for "overloaded".
    assert errors["anthropic"]["relay"]["reason"] == "status_529"
    assert errors["openai"]["relay"]["reason"] == "status_503"
    assert all(e["relay"]["retryable"] and not e["relay"]["partial"] for e in errors.values())


# -- the official Anthropic SDK reads the translated stream --------------------------------


def sdk(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.relay_url, api_key="test-key", max_retries=0)


def final(stack: Stack, scenario: str) -> anthropic.types.Message:
    options = SCENARIOS[scenario]
    with sdk(stack).messages.stream(
        model=f"mock-{scenario}",
        max_tokens=64,
        messages=[{"role": "user", "content": f"Play {scenario}, please."}],
        extra_body={"mock": options},
    ) as stream:
        texts = list(stream.text_stream)
        message = stream.get_final_message()
    assert "".join(texts) == "".join(b.text for b in message.content if b.type == "text")
    return message


def view(message: anthropic.types.Message) -> dict[str, Any]:
    dumped = message.model_dump()
    for block in dumped["content"]:
        if block["type"] == "thinking":
            block["signature"] = ""  # OpenAI has no thinking signatures (see result())
    return {
        "content": dumped["content"],
        "stop_reason": dumped["stop_reason"],
        "output_tokens": dumped["usage"]["output_tokens"],
        "input_tokens": dumped["usage"]["input_tokens"],
    }


@pytest.mark.parametrize("scenario", ["text", "tool_use", "thinking"])
def test_anthropic_sdk_stream_gives_the_same_final_message(
    stacks: dict[str, Stack], scenario: str
) -> None:
    via_openai = final(stacks["openai"], scenario)
    assert view(via_openai) == view(final(stacks["anthropic"], scenario))
    if scenario == "tool_use":
        tools = [b for b in via_openai.content if b.type == "tool_use"]
        assert [(t.name, t.input) for t in tools] == [("get_weather", TOOL_INPUT), ("get_time", {})]
        assert via_openai.stop_reason == "tool_use"


def test_anthropic_sdk_non_streaming_create(stacks: dict[str, Stack]) -> None:
    kwargs: dict[str, Any] = {
        "model": "mock-text",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Play text, please."}],
        "extra_body": {"mock": SCENARIOS["text"]},
    }
    via_openai = sdk(stacks["openai"]).messages.create(**kwargs)
    via_anthropic = sdk(stacks["anthropic"]).messages.create(**kwargs)
    assert view(via_openai) == view(via_anthropic)
    assert via_openai.stop_reason == "end_turn"


def test_tool_result_round_trip_reaches_the_upstream_as_openai_messages(
    stacks: dict[str, Stack],
) -> None:
    stack = stacks["openai"]
    first = final(stack, "tool_use")
    calls = [b for b in first.content if b.type == "tool_use"]
    follow_up = sdk(stack).messages.create(
        model="mock-text",
        max_tokens=8,
        messages=[
            {"role": "user", "content": "Play tool_use, please."},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": c.id, "content": "18C"} for c in calls
                ],
            },
        ],
        extra_body={"mock": {"tokens": 3}},
    )
    assert follow_up.stop_reason == "end_turn"
    sent = json.loads(stack.upstream.exchanges(path=CHAT)[-1].body)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == [c.id for c in calls]
    assert [m["tool_call_id"] for m in sent[2:]] == [c.id for c in calls]


def test_unrepresentable_request_is_an_invalid_request_error(stacks: dict[str, Stack]) -> None:
    request = body("text", {"tokens": 3})
    request["messages"] = [{"role": "user", "content": [{"type": "document", "source": {}}]}]
    # Refused before the stream starts (the adapter checks the request): a plain 400 that
    # the SDK raises at once, never a 200 followed by an error event.
    answer = httpx.post(f"{stacks['openai'].relay_url}/v1/messages", json=request)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "'document' is not supported" in answer.json()["error"]["message"]


# -- stop reaches the upstream through the OpenAI adapter ----------------------------------


def _read_deltas(lines: Iterator[str], count: int) -> None:
    seen = 0
    for line in lines:
        if line.startswith("data: ") and '"content_block_delta"' in line:
            seen += 1
            if seen >= count:
                return


def test_client_disconnect_stops_the_openai_upstream(stacks: dict[str, Stack]) -> None:
    stack = stacks["openai"]
    long_text = body("text", {"tpot_ms": 20}, max_tokens=5000)
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{stack.relay_url}/v1/messages", json=long_text) as response,
    ):
        stream_id = response.headers["x-relay-stream-id"]
        _read_deltas(response.iter_lines(), 10)
    assert_aborted_and_frozen(stack.mock_url, stream_id)


def test_cancel_endpoint_stops_the_openai_upstream(stacks: dict[str, Stack]) -> None:
    stack = stacks["openai"]
    long_text = body("text", {"tpot_ms": 20}, max_tokens=5000)
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{stack.relay_url}/v1/messages", json=long_text) as response,
    ):
        stream_id = response.headers["x-relay-stream-id"]
        lines = response.iter_lines()
        _read_deltas(lines, 10)
        cancel = client.post(f"{stack.relay_url}/v1/streams/{stream_id}/cancel")
        rest = list(lines)
    assert cancel.json()["status"] == "cancelled"
    assert any('"reason":"cancelled"' in line.replace(" ", "") for line in rest)
    assert_aborted_and_frozen(stack.mock_url, stream_id)
