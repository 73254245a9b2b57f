"""App-level wiring: the client-metrics endpoint, /metrics, the chat page."""

from __future__ import annotations

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.client import RelayClient
from tests.support.stack import relay_stack


def _sample(metrics_text: str, name: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exposed")


def test_a_client_report_is_recorded_once() -> None:
    body = {"model": "mock-text", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with relay_stack() as stack:

        async def turn() -> None:
            async with RelayClient(stack.relay_url) as client:  # posts its report itself
                await client.stream_turn(body)

        anyio.run(turn)
        metrics = httpx.get(f"{stack.relay_url}/metrics").text
    assert _sample(metrics, "relay_client_time_to_first_token_seconds_count") == 1
    assert _sample(metrics, "relay_client_last_mile_seconds_count") == 1


@pytest.mark.parametrize("report", [b"{", b'{"ttft_ms": -1}', b'{"ttft_ms": "fast"}'])
def test_a_bad_client_report_is_400_and_not_recorded(report: bytes) -> None:
    with relay_stack() as stack:
        stream = httpx.post(
            f"{stack.relay_url}/v1/messages",
            json={
                "model": "mock-text",
                "max_tokens": 2,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        stream_id = stream.headers["x-relay-stream-id"]
        answer = httpx.post(
            f"{stack.relay_url}/v1/streams/{stream_id}/client-metrics", content=report
        )
        metrics = httpx.get(f"{stack.relay_url}/metrics").text
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert (
        "relay_client_time_to_first_token_seconds_count" not in metrics
        or _sample(metrics, "relay_client_time_to_first_token_seconds_count") == 0
    )


def test_the_chat_page_is_served_at_the_root_with_one_charset() -> None:
    with relay_stack() as stack:
        page = httpx.get(f"{stack.relay_url}/")
        missing = httpx.post(f"{stack.relay_url}/nope")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<html" in page.text
    assert missing.status_code == 404


def test_a_request_the_openai_upstream_cannot_carry_is_a_plain_400() -> None:
    """Refused before the stream starts: a status the SDK raises at once, not an error event
    after a 200."""
    body = {
        "model": "mock-text",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "robot", "content": "hi"}],
    }
    with relay_stack({"upstream_provider": "openai"}) as stack:
        answer = httpx.post(f"{stack.relay_url}/v1/messages", json=body)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("application/json")
    assert "unsupported role" in answer.json()["error"]["message"]
