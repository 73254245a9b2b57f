"""The mock's ``POST /v1/chat/completions`` over real HTTP: every scenario on OpenAI's wire."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.mock import GenerationLedger, MockSettings, create_mock_app
from service.mock.scenarios import TOOL_INPUT
from tests.support.servers import run_uvicorn

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[str, GenerationLedger]]:
    ledger = GenerationLedger()
    app = create_mock_app(MockSettings(ttft_ms=5, tpot_ms=1, jitter=0.1), ledger)
    with run_uvicorn(app) as url:
        yield url, ledger


@pytest.fixture
def ledger(_server: tuple[str, GenerationLedger]) -> GenerationLedger:
    _server[1].reset()
    return _server[1]


@pytest.fixture
def client(
    _server: tuple[str, GenerationLedger], ledger: GenerationLedger
) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=_server[0], timeout=10) as client:
        yield client


def body(scenario: str = "text", usage: bool = True, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": f"mock-{scenario}",
        "max_tokens": 12,
        "stream": True,
        "messages": [{"role": "user", "content": "What is the weather?"}],
        **extra,
    }
    if usage:
        out["stream_options"] = {"include_usage": True}
    return out


def data_lines(text: str) -> list[str]:
    """The ``data:`` payloads in order (the mock writes one ``data:`` line per event)."""
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


def chunks(text: str) -> list[dict[str, Any]]:
    lines = data_lines(text)
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def deltas(parsed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in parsed if c.get("choices")]


def test_text_stream_has_role_chunk_content_finish_and_usage(client: httpx.Client) -> None:
    response = client.post(CHAT, json=body())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    parsed = chunks(response.text)
    assert {c["object"] for c in parsed} == {"chat.completion.chunk"}
    assert len({c["id"] for c in parsed}) == 1
    assert deltas(parsed)[0] == {"role": "assistant", "content": ""}
    words = [d["content"] for d in deltas(parsed)[1:] if "content" in d]
    assert len(words) == 12
    finish = parsed[-2]["choices"][0]
    assert (finish["delta"], finish["finish_reason"]) == ({}, "length")
    usage_chunk = parsed[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 12
    assert usage_chunk["usage"]["prompt_tokens"] > 0
    assert all(c["usage"] is None for c in parsed[:-1])


def test_without_include_usage_there_is_no_usage_chunk(client: httpx.Client) -> None:
    parsed = chunks(client.post(CHAT, json=body(usage=False)).text)
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in parsed)


def test_tool_use_streams_calls_by_index(client: httpx.Client) -> None:
    parsed = chunks(client.post(CHAT, json=body("tool_use")).text)
    calls = [call for d in deltas(parsed) for call in d.get("tool_calls", [])]
    firsts = [c for c in calls if "id" in c]
    assert [(c["index"], c["function"]["name"], c["type"]) for c in firsts] == [
        (0, "get_weather", "function"),
        (1, "get_time", "function"),
    ]
    # id and name only on each call's first delta.
    assert all("id" not in c and "name" not in c["function"] for c in calls if c not in firsts)
    weather = "".join(c["function"]["arguments"] for c in calls if c["index"] == 0)
    assert json.loads(weather) == TOOL_INPUT
    assert "".join(c["function"]["arguments"] for c in calls if c["index"] == 1) == ""
    assert parsed[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_thinking_streams_reasoning_content_before_content(client: httpx.Client) -> None:
    parsed = chunks(
        client.post(CHAT, json=body("thinking", mock={"think_ms": 30, "tokens": 3})).text
    )
    kinds = [
        "reasoning" if "reasoning_content" in d else "content" for d in deltas(parsed)[1:] if d
    ]
    assert kinds[0] == "reasoning"
    assert kinds[-3:] == ["content"] * 3
    assert kinds == sorted(kinds, key=lambda k: k == "content")


def test_rate_limited_then_success(client: httpx.Client, ledger: GenerationLedger) -> None:
    request = body("rate_limited", mock={"retry_after_ms": 50})
    first = client.post(CHAT, json=request)
    assert first.status_code == 429
    assert first.headers["retry-after-ms"] == "50"
    error = first.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert set(error) == {"message", "type", "param", "code"}
    second = client.post(CHAT, json=request)
    assert second.status_code == 200
    assert [r.state for r in ledger.records()] == ["failed", "completed"]


def test_overloaded_is_a_503_server_error(client: httpx.Client) -> None:
    response = client.post(CHAT, json=body("overloaded"))
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"


def test_error_mid_stream_sends_an_error_chunk_then_done(
    client: httpx.Client, ledger: GenerationLedger
) -> None:
    text = client.post(CHAT, json=body("error_mid_stream", mock={"fail_after": 3})).text
    lines = data_lines(text)
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert (error["message"], error["code"]) == ("Overloaded", 503)
    assert len([line for line in lines if '"content"' in line]) == 1 + 3
    (record,) = ledger.records()
    assert (record.state, record.abort_reason, record.tokens) == ("failed", "overloaded_error", 3)


def test_malformed_sends_a_truncated_chunk(client: httpx.Client) -> None:
    text = client.post(CHAT, json=body("malformed", mock={"fail_after": 2})).text
    bad = [line for line in data_lines(text) if line != "[DONE]" and not _is_json(line)]
    assert len(bad) == 1
    assert bad[0].startswith('{"id": "chatcmpl-mock"')


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def test_non_streaming_returns_a_chat_completion(client: httpx.Client) -> None:
    response = client.post(CHAT, json=body("tool_use", stream=False))
    assert response.status_code == 200
    completion = response.json()
    assert completion["object"] == "chat.completion"
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"].startswith("I'll check the weather")
    names = [c["function"]["name"] for c in message["tool_calls"]]
    assert names == ["get_weather", "get_time"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == TOOL_INPUT
    assert completion["usage"]["completion_tokens"] > 0


def test_non_streaming_error_uses_the_openai_shape(client: httpx.Client) -> None:
    response = client.post(CHAT, json=body("error_mid_stream", stream=False))
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "Overloaded"


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "mock": {"tokens": 0}},
    ],
    ids=["no-messages", "bad-role", "bad-option"],
)
def test_invalid_requests_get_a_400_in_openai_shape(
    client: httpx.Client, bad: dict[str, Any]
) -> None:
    response = client.post(CHAT, json=bad)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_max_tokens_is_optional_and_max_completion_tokens_wins(client: httpx.Client) -> None:
    request = body(usage=True)
    del request["max_tokens"]
    request["max_completion_tokens"] = 4
    usage = chunks(client.post(CHAT, json=request).text)[-1]["usage"]
    assert usage["completion_tokens"] == 4


def test_same_prompt_same_words_and_estimate_on_both_endpoints(client: httpx.Client) -> None:
    system = "You are terse."
    chat = body(messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi"}])
    openai_chunks = chunks(client.post(CHAT, json=chat).text)
    openai_words = "".join(d.get("content", "") for d in deltas(openai_chunks))
    messages_body = {
        "model": "mock-text",
        "max_tokens": 12,
        "stream": False,
        "system": system,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    message = client.post("/v1/messages", json=messages_body).json()
    assert openai_words == message["content"][0]["text"]
    assert openai_chunks[-1]["usage"]["prompt_tokens"] == message["usage"]["input_tokens"]
