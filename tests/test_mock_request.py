"""Request parsing: validation, scenario selection and derived values."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.mock.request import MockRequestError, parse_request, select_scenario


def _body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hello"}],
        **extra,
    }


def _parse(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return parse_request(json.dumps(body).encode(), headers or {})


@pytest.mark.parametrize(
    ("header", "option", "model", "expected"),
    [
        ("tool_use", "thinking", "mock-drop", "tool_use"),
        (None, "thinking", "mock-drop", "thinking"),
        (None, None, "mock-drop", "drop"),
        (None, None, "claude-sonnet", "text"),
        (None, None, "mock", "text"),
        ("no-such-scenario", "thinking", "mock-drop", "text"),
        ("Tool-Use", None, "x", "tool_use"),
        (None, "reasoning", "x", "thinking"),
        (None, None, "mock-error-mid-stream", "error_mid_stream"),
        ("  ", None, "mock-stall", "stall"),
    ],
)
def test_scenario_selection_header_then_body_then_model(
    header: str | None, option: str | None, model: str, expected: str
) -> None:
    assert select_scenario(header, option, model) == expected


def test_header_selects_scenario_and_headers_are_recorded() -> None:
    request = _parse(
        _body(mock={"scenario": "thinking"}),
        {"x-mock-scenario": "large", "x-relay-stream-id": "st_1", "idempotency-key": "k1"},
    )
    assert request.scenario == "large"
    assert request.relay_stream_id == "st_1"
    assert request.idempotency_key == "k1"


def test_options_are_parsed() -> None:
    options = {
        "scenario": "stall",
        "tokens": 5,
        "ttft_ms": 0,
        "tpot_ms": 1.5,
        "jitter": 0,
        "seed": 7,
        "think_ms": 10,
        "fail_times": 3,
        "fail_after": 0,
        "retry_after": 2,
        "retry_after_ms": 20,
        "stall_ms": 50,
        "token_bytes": 64,
        "key": "abc",
    }
    request = _parse(_body(mock=options))
    for name, value in options.items():
        assert getattr(request.options, name) == value
    assert request.attempt_key == "abc"


def test_attempt_key_defaults_to_a_hash_of_the_raw_body() -> None:
    raw = json.dumps(_body()).encode()
    assert parse_request(raw, {}).attempt_key == parse_request(raw, {}).attempt_key
    other = json.dumps(_body(max_tokens=17)).encode()
    assert parse_request(raw, {}).attempt_key != parse_request(other, {}).attempt_key


def test_prompt_digest_and_input_estimate_follow_the_prompt() -> None:
    short = _parse(_body())
    long = _parse(_body(messages=[{"role": "user", "content": "Hello " * 400}]))
    assert short.prompt_digest != long.prompt_digest
    assert long.input_tokens > short.input_tokens >= 1
    # Mock options do not change the prompt: the same seed gives the same words.
    assert _parse(_body(mock={"tokens": 3})).prompt_digest == short.prompt_digest


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body(mock={"tokens": 0}), "$.mock.tokens"),
        (_body(mock={"jitter": 2}), "$.mock.jitter"),
        (_body(mock={"ttft_ms": -1}), "$.mock.ttft_ms"),
        (_body(mock={"token_bytes": 10**6}), "$.mock.token_bytes"),
        (_body(mock={"fail_times": "two"}), "$.mock.fail_times"),
        (_body(mock={"tokenz": 3}), "tokenz"),
        (_body(mock="text"), "$.mock"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (_body(messages=[]), "$.messages"),
        (_body(messages=[{"role": "robot", "content": "x"}]), "$.messages[0].role"),
        (_body(stream="yes"), "$.stream"),
    ],
)
def test_invalid_requests_name_the_offending_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(MockRequestError) as info:
        _parse(body)
    assert message in str(info.value)


def test_non_json_body_is_rejected() -> None:
    with pytest.raises(MockRequestError, match="not valid JSON"):
        parse_request(b"{nope", {})


def test_unknown_top_level_fields_are_accepted() -> None:
    request = _parse(_body(tools=[{"name": "x"}], temperature=0.2, metadata={"user_id": "u"}))
    assert request.scenario == "text"
