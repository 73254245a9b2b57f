"""The mock provider over real HTTP: scenarios, errors, retries, timing and the ledger API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from service.mock import GenerationLedger, MockSettings, create_mock_app
from service.mock.scenarios import TOOL_INPUT
from tests.support.mock_streams import StreamSummary, check_events, parse_sse
from tests.support.servers import run_uvicorn

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[str, GenerationLedger]]:
    # One server for the module (start/stop costs ~0.2 s); each test starts from a reset ledger.
    ledger = GenerationLedger()
    app = create_mock_app(MockSettings(ttft_ms=5, tpot_ms=1, jitter=0.1), ledger)
    with run_uvicorn(app) as url:
        yield url, ledger


@pytest.fixture
def ledger(_server: tuple[str, GenerationLedger]) -> GenerationLedger:
    _server[1].reset()
    return _server[1]


@pytest.fixture
def base_url(_server: tuple[str, GenerationLedger], ledger: GenerationLedger) -> str:
    return _server[0]


@pytest.fixture
async def client(base_url: str) -> Any:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


def _body(mock: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 20,
        "stream": True,
        "messages": [{"role": "user", "content": "What is the weather?"}],
        **extra,
    }
    if mock is not None:
        body["mock"] = mock
    return body


async def _stream(
    client: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any
) -> tuple[httpx.Response, StreamSummary]:
    response = await client.post("/v1/messages", json=body, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    return response, check_events(parse_sse(response.content), allow_malformed=True)


async def test_text_stream_is_valid_and_the_ledger_agrees(
    client: httpx.AsyncClient, ledger: GenerationLedger
) -> None:
    response, summary = await _stream(client, _body(mock={"tokens": 15}))
    assert (summary.stop_reason, summary.output_tokens, summary.token_deltas) == (
        "end_turn",
        15,
        15,
    )
    assert response.headers["x-mock-generation-id"] == summary.message_id
    assert response.headers["x-mock-scenario"] == "text"
    record = ledger.get(summary.message_id or "")
    assert record is not None
    assert (record.state, record.tokens, record.stream) == ("completed", 15, True)
    assert record.ended_at is not None and record.ended_at >= record.started_at


@pytest.mark.parametrize(
    ("mock", "stop_reason", "block_types"),
    [
        ({"scenario": "tool_use"}, "tool_use", ["text", "tool_use", "tool_use"]),
        ({"scenario": "thinking", "think_ms": 40, "tokens": 4}, "end_turn", ["thinking", "text"]),
        ({"scenario": "reasoning", "think_ms": 40}, "max_tokens", ["thinking", "text"]),
        ({"scenario": "large", "tokens": 300, "token_bytes": 100}, "end_turn", ["text"]),
        ({"scenario": "stall", "stall_ms": 50, "fail_after": 2}, "max_tokens", ["text"]),
        ({"scenario": "malformed", "fail_after": 2}, "max_tokens", ["text"]),
    ],
)
async def test_scenarios_stream_valid_anthropic_events(
    client: httpx.AsyncClient,
    ledger: GenerationLedger,
    mock: dict[str, Any],
    stop_reason: str,
    block_types: list[str],
) -> None:
    _, summary = await _stream(client, _body(mock=mock))
    assert summary.complete
    assert summary.stop_reason == stop_reason
    assert [b["type"] for b in summary.blocks] == block_types
    assert summary.output_tokens == summary.token_deltas
    assert summary.malformed == (1 if mock["scenario"] == "malformed" else 0)
    record = ledger.get(summary.message_id or "")
    assert record is not None and record.state == "completed"
    assert record.tokens == summary.output_tokens


async def test_tool_input_survives_the_wire(client: httpx.AsyncClient) -> None:
    _, summary = await _stream(client, _body(), headers={"x-mock-scenario": "tool_use"})
    assert summary.blocks[1]["input"] == TOOL_INPUT
    assert summary.blocks[2]["input"] == {}


@pytest.mark.parametrize(
    ("headers", "model", "mock", "expected"),
    [
        ({"x-mock-scenario": "tool_use"}, "mock-thinking", {"scenario": "large"}, "tool_use"),
        ({}, "mock-thinking", {"scenario": "tool_use"}, "tool_use"),
        ({}, "mock-tool-use", None, "tool_use"),
        ({}, "mock-unknown", None, "text"),
        ({"x-mock-scenario": "bogus"}, "mock-tool_use", None, "text"),
    ],
)
async def test_scenario_selection_over_http(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    model: str,
    mock: dict[str, Any] | None,
    expected: str,
) -> None:
    body = _body(mock=mock, model=model)
    response = await client.post("/v1/messages", json=body, headers=headers)
    assert response.headers["x-mock-scenario"] == expected


async def test_same_seed_same_text_and_another_seed_differs(client: httpx.AsyncClient) -> None:
    texts = [
        (await _stream(client, _body(mock={"seed": seed, "tokens": 25})))[1].text()
        for seed in (5, 5, 6)
    ]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


async def test_non_streaming_returns_the_message_json(
    client: httpx.AsyncClient, ledger: GenerationLedger
) -> None:
    response = await client.post(
        "/v1/messages", json=_body(mock={"scenario": "tool_use", "seed": 9}, stream=False)
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    message = response.json()
    assert (message["type"], message["role"], message["model"]) == (
        "message",
        "assistant",
        "claude-test",
    )
    assert message["stop_reason"] == "tool_use"
    assert [b["type"] for b in message["content"]] == ["text", "tool_use", "tool_use"]
    assert message["content"][1]["input"] == TOOL_INPUT
    # Same content as the stream of the same request.
    _, summary = await _stream(client, _body(mock={"scenario": "tool_use", "seed": 9}))
    assert message["content"][0]["text"] == summary.text()
    assert message["usage"]["output_tokens"] == summary.output_tokens
    record = ledger.get(message["id"])
    assert record is not None
    assert (record.state, record.stream, record.tokens) == (
        "completed",
        False,
        message["usage"]["output_tokens"],
    )


async def test_non_streaming_thinking_and_text(client: httpx.AsyncClient) -> None:
    body = _body(mock={"scenario": "thinking", "think_ms": 30, "tokens": 3}, stream=False)
    message = (await client.post("/v1/messages", json=body)).json()
    thinking, text = message["content"]
    assert thinking["thinking"].startswith("Let me think.") and thinking["signature"]
    assert len(text["text"].split()) == 3


async def test_non_streaming_mid_stream_error_is_a_529(client: httpx.AsyncClient) -> None:
    body = _body(mock={"scenario": "error_mid_stream", "fail_after": 2}, stream=False)
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 529
    assert response.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], '
         b'"mock": {"tokens": -3}}', "$.mock.tokens"),
        (b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], '
         b'"mock": {"retry_after": "soon"}}', "$.mock.retry_after"),
        (b"not json", "not valid JSON"),
        (b'{"model": "m"}', "max_tokens"),
    ],
)  # fmt: skip
async def test_bad_requests_get_anthropic_shaped_400s(
    client: httpx.AsyncClient, content: bytes, fragment: str
) -> None:
    response = await client.post(
        "/v1/messages", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]
    assert "Traceback" not in response.text


async def test_rate_limited_fails_the_first_attempts_then_succeeds(
    client: httpx.AsyncClient, ledger: GenerationLedger
) -> None:
    body = _body(mock={"scenario": "rate_limited", "fail_times": 2, "retry_after_ms": 250})
    statuses = []
    for _ in range(3):
        response = await client.post("/v1/messages", json=body)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["x-mock-scenario"] == "rate_limited"
            assert response.headers["retry-after"] == "1"
            assert response.headers["retry-after-ms"] == "250"
            assert response.json()["error"]["type"] == "rate_limit_error"
    assert statuses == [429, 429, 200]
    check_events(parse_sse(response.content))
    records = ledger.records()
    assert [(r.state, r.attempt) for r in records] == [
        ("failed", 1),
        ("failed", 2),
        ("completed", 3),
    ]
    assert records[0].abort_reason == "rate_limit_error"


async def test_rate_limited_defaults_and_the_retry_after_option(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/messages", json=_body(mock={"scenario": "rate_limited"}))
    assert (first.status_code, first.headers["retry-after"], first.headers["retry-after-ms"]) == (
        429,
        "1",
        "1000",
    )
    # A retry resends the identical body: the attempt counter recognises it.
    again = await client.post("/v1/messages", json=_body(mock={"scenario": "rate_limited"}))
    assert again.status_code == 200
    body = _body(mock={"scenario": "rate_limited", "retry_after": 3})
    third = await client.post("/v1/messages", json=body)
    assert (third.headers["retry-after"], third.headers["retry-after-ms"]) == ("3", "3000")


async def test_overloaded_twice_then_success_keyed_by_the_key_option(
    client: httpx.AsyncClient,
) -> None:
    statuses = []
    for tokens in (3, 4, 5):  # different bodies, one key
        body = _body(mock={"scenario": "overloaded", "key": "turn-1", "tokens": tokens})
        response = await client.post("/v1/messages", json=body)
        statuses.append(response.status_code)
        if response.status_code == 529:
            assert response.json()["error"]["type"] == "overloaded_error"
    assert statuses == [529, 529, 200]
    other = _body(mock={"scenario": "overloaded", "key": "turn-2"})
    assert (await client.post("/v1/messages", json=other)).status_code == 529


async def test_error_mid_stream_sends_an_error_event_and_no_message_stop(
    client: httpx.AsyncClient, ledger: GenerationLedger
) -> None:
    _, summary = await _stream(client, _body(mock={"scenario": "error_mid_stream"}))
    assert summary.token_deltas == 10
    assert summary.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert "message_stop" not in summary.names
    record = ledger.get(summary.message_id or "")
    assert record is not None
    assert (record.state, record.abort_reason, record.tokens) == ("failed", "overloaded_error", 10)


async def test_mid_stream_failures_stop_after_fail_times(client: httpx.AsyncClient) -> None:
    body = _body(mock={"scenario": "error_mid_stream", "fail_times": 1, "fail_after": 1})
    _, first = await _stream(client, body)
    _, second = await _stream(client, body)
    assert first.error is not None
    assert second.error is None and second.complete


async def test_ttft_comes_before_content_and_dominates_a_fast_stream(
    client: httpx.AsyncClient,
) -> None:
    arrivals = await _delta_arrivals(client, {"ttft_ms": 300, "tpot_ms": 2, "tokens": 10})
    start, deltas = arrivals[0], arrivals[1:]
    ttft = deltas[0] - start
    assert ttft >= 0.3 * 0.8  # a sleep never ends early; 0.8 covers clock granularity
    assert deltas[-1] - deltas[0] < ttft


async def test_tpot_sets_the_pace_between_deltas(client: httpx.AsyncClient) -> None:
    fast = await _delta_arrivals(client, {"ttft_ms": 0, "tpot_ms": 2, "tokens": 10})
    slow = await _delta_arrivals(client, {"ttft_ms": 0, "tpot_ms": 40, "tokens": 10})
    fast_span, slow_span = fast[-1] - fast[1], slow[-1] - slow[1]
    assert slow_span >= 9 * 0.040 * 0.8
    assert slow_span > 3 * fast_span


async def _delta_arrivals(client: httpx.AsyncClient, mock: dict[str, Any]) -> list[float]:
    """Arrival times: message_start first, then every content delta."""
    times: list[float] = []
    body = _body(mock={"jitter": 0, **mock})
    async with client.stream("POST", "/v1/messages", json=body) as response:
        async for line in response.aiter_lines():
            if line in ("event: message_start", "event: content_block_delta"):
                times.append(time.monotonic())
    assert len(times) == mock["tokens"] + 1
    return times


async def test_ledger_endpoints(client: httpx.AsyncClient) -> None:
    headers = {"x-relay-stream-id": "st_42", "idempotency-key": "idem-1"}
    _, summary = await _stream(client, _body(mock={"tokens": 3}), headers=headers)
    await _stream(client, _body(mock={"tokens": 2}))
    listed = (await client.get("/mock/generations")).json()
    assert [g["tokens"] for g in listed] == [3, 2]  # oldest first
    mine = (await client.get("/mock/generations", params={"relay_stream_id": "st_42"})).json()
    assert len(mine) == 1
    record = (await client.get(f"/mock/generations/{summary.message_id}")).json()
    assert record == mine[0]
    assert (record["relay_stream_id"], record["idempotency_key"], record["state"]) == (
        "st_42",
        "idem-1",
        "completed",
    )
    missing = await client.get("/mock/generations/msg_nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert (await client.delete("/mock/generations")).status_code == 204
    assert (await client.get("/mock/generations")).json() == []


async def test_healthz_and_unknown_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    unknown = await client.get("/v1/nothing")
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "error"
    wrong_method = await client.get("/v1/messages")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"


def test_the_official_sdk_streams_against_the_mock(base_url: str) -> None:
    sdk = anthropic.Anthropic(base_url=base_url, api_key="test-key", max_retries=2)
    with sdk.messages.stream(
        model="mock-tool_use",
        max_tokens=50,
        messages=[{"role": "user", "content": "weather?"}],
    ) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    tool = message.content[1]
    assert tool.type == "tool_use" and tool.input == TOOL_INPUT
    # The SDK's own retry honours retry-after-ms; extra_body carries the mock options.
    retried = sdk.messages.create(
        model="claude-test",
        max_tokens=4,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"mock": {"scenario": "rate_limited", "retry_after_ms": 10, "tokens": 4}},
    )
    assert retried.usage.output_tokens == 4
