"""Faults: retries before the first byte, errors mid-stream, resume after a TCP cut,
idempotent duplicates, and the client's whole-turn retry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from service.app import create_app
from service.client import RelayClient, RelayStreamError
from service.config import Settings
from service.mock.app import create_mock_app
from service.mock.settings import MockSettings
from tests.support.servers import run_uvicorn
from tests.support.tcpproxy import cuttable_proxy

FAST_RETRY = {"retry_base_delay": 0.05, "retry_max_delay": 0.2, "retry_after_cap": 0.3}


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with run_uvicorn(create_mock_app(MockSettings(ttft_ms=30, tpot_ms=5))) as url:
        yield url


def _relay(mock_url: str, **overrides: Any) -> Any:
    return run_uvicorn(create_app(Settings(upstream_url=mock_url, **{**FAST_RETRY, **overrides})))


def _body(scenario: str, key: str, tokens: int = 20, **options: Any) -> dict[str, Any]:
    return {
        "model": "mock-text",
        "max_tokens": tokens,
        "stream": True,
        "messages": [{"role": "user", "content": f"fault {key}"}],
        "mock": {"scenario": scenario, "key": key, **options},
    }


def _events(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.split("\n\n"):
        name, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            events.append((name, json.loads(data)))
    return events


def _generations(mock_url: str, **params: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = httpx.get(f"{mock_url}/mock/generations", params=params).json()
    return records


def test_429_with_retry_after_then_success(mock_url: str) -> None:
    with capture_logs() as logs, _relay(mock_url) as relay:
        body = httpx.post(
            f"{relay}/v1/messages",
            timeout=30,
            json=_body("rate_limited", "r429", retry_after_ms=200),
        ).text
    names = [name for name, _ in _events(body)]
    assert names[0] == "message_start"
    assert "message_stop" in names
    assert "error" not in names
    retries = [e for e in logs if e["event"] == "upstream.retry"]
    assert len(retries) == 1
    assert retries[0]["reason"] == "status_429"
    assert retries[0]["delay_ms"] == 200.0, "the provider's retry-after-ms is honoured"


def test_529_twice_then_success(mock_url: str) -> None:
    with capture_logs() as logs, _relay(mock_url) as relay:
        body = httpx.post(
            f"{relay}/v1/messages", timeout=30, json=_body("overloaded", "r529", fail_times=2)
        ).text
    assert "message_stop" in [name for name, _ in _events(body)]
    retries = [e for e in logs if e["event"] == "upstream.retry"]
    assert [r["attempt"] for r in retries] == [1, 2]
    assert all(r["reason"] == "status_529" for r in retries)


def test_retries_exhausted_gives_a_clear_error(mock_url: str) -> None:
    with _relay(mock_url, retry_max_attempts=2) as relay:
        streamed = httpx.post(
            f"{relay}/v1/messages", timeout=30, json=_body("overloaded", "exhaust", fail_times=5)
        ).text
        plain = httpx.post(
            f"{relay}/v1/messages",
            timeout=30,
            json={**_body("overloaded", "exhaust2", fail_times=5), "stream": False},
        )
    name, error = _events(streamed)[0]
    assert name == "error", "nothing but the error: no message_start, no partial answer"
    assert error["error"]["type"] == "overloaded_error"
    assert error["relay"] == {"retryable": True, "partial": False, "reason": "status_529"}
    assert plain.status_code == 529
    assert plain.json()["error"]["type"] == "overloaded_error"


def test_overloaded_mid_stream_is_an_error_event_with_partial_true(mock_url: str) -> None:
    with capture_logs() as logs, _relay(mock_url) as relay:
        body = httpx.post(
            f"{relay}/v1/messages",
            timeout=30,
            json=_body("error_mid_stream", "mid", tokens=40, fail_after=8),
        ).text
    events = _events(body)
    errors = [data for name, data in events if name == "error"]
    assert len(errors) == 1
    assert errors[0]["error"]["type"] == "overloaded_error"
    assert errors[0]["relay"] == {"retryable": True, "partial": True, "reason": "upstream_error"}
    assert not [e for e in logs if e["event"] == "upstream.retry"], (
        "never retried after content was forwarded"
    )
    assert events[-1][0] == "relay_metrics"


def test_upstream_drop_gives_an_error_event(mock_url: str) -> None:
    with _relay(mock_url) as relay:
        body = httpx.post(
            f"{relay}/v1/messages", timeout=30, json=_body("drop", "drop", tokens=40, fail_after=8)
        ).text
    errors = [data for name, data in _events(body) if name == "error"]
    assert len(errors) == 1
    assert errors[0]["relay"]["reason"] == "upstream_dropped"
    assert errors[0]["relay"]["partial"] is True
    assert errors[0]["relay"]["retryable"] is True


def test_malformed_upstream_frame_gives_a_protocol_error(mock_url: str) -> None:
    with _relay(mock_url) as relay:
        body = httpx.post(
            f"{relay}/v1/messages", timeout=30, json=_body("malformed", "bad", tokens=40)
        ).text
    errors = [data for name, data in _events(body) if name == "error"]
    assert errors[0]["relay"]["reason"] == "upstream_protocol"


@pytest.mark.anyio
async def test_tcp_cut_mid_stream_then_resume_gives_the_uninterrupted_text(
    mock_url: str,
) -> None:
    body = {
        "model": "mock-text",
        "max_tokens": 120,
        "messages": [{"role": "user", "content": "the same question"}],
    }
    with _relay(mock_url) as relay:
        async with RelayClient(relay) as client:
            reference = await client.stream_turn(body)
        with cuttable_proxy(relay) as (proxy_url, proxy):
            notices: list[str] = []
            pieces: list[str] = []

            def on_text(text: str) -> None:
                pieces.append(text)
                if len(pieces) == 30:
                    proxy.cut()

            async with RelayClient(proxy_url) as client:
                resumed = await client.stream_turn(body, on_text=on_text, on_notice=notices.append)
    assert proxy.cuts == 1
    assert any("resuming" in n for n in notices), notices
    expected = reference.message.content[0].text  # type: ignore[union-attr]
    assert resumed.message.content[0].text == expected  # type: ignore[union-attr]
    assert "".join(pieces) == expected, "no gap and no duplicate in what the user saw"
    generations = _generations(mock_url, relay_stream_id=resumed.stream_id or "")
    assert len(generations) == 1, "resume reuses the generation; it never starts another"


@pytest.mark.anyio
async def test_duplicate_post_with_the_same_key_attaches_to_one_generation(
    mock_url: str,
) -> None:
    body = {**_body("text", "idem", tokens=60), "mock": {"scenario": "text"}}
    headers = {"idempotency-key": "same-key-1"}
    with _relay(mock_url) as relay:
        async with httpx.AsyncClient(timeout=30) as client:

            async def post() -> httpx.Response:
                return await client.post(f"{relay}/v1/messages", json=body, headers=headers)

            results: list[httpx.Response] = []

            async def run() -> None:
                results.append(await post())

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await anyio.sleep(0.15)  # the first is in flight
                tg.start_soon(run)
            late = await post()  # after it finished, within the TTL
            mismatch = await client.post(
                f"{relay}/v1/messages", json={**body, "max_tokens": 61}, headers=headers
            )
    texts = [
        "".join(
            d["delta"].get("text", "") for n, d in _events(r.text) if n == "content_block_delta"
        )
        for r in [*results, late]
    ]
    assert len(set(texts)) == 1
    assert len(texts[0]) > 0
    stream_ids = {r.headers["x-relay-stream-id"] for r in [*results, late]}
    assert len(stream_ids) == 1
    assert sum(r.headers.get("x-relay-idempotent-replay") == "true" for r in results) == 1
    assert len(_generations(mock_url, relay_stream_id=stream_ids.pop())) == 1
    assert mismatch.status_code == 422


@pytest.mark.anyio
async def test_client_whole_turn_retry_after_a_retryable_mid_stream_error(mock_url: str) -> None:
    body = {
        "model": "mock-text",
        "max_tokens": 30,
        "messages": [{"role": "user", "content": "retry me"}],
        "mock": {
            "scenario": "error_mid_stream",
            "fail_after": 5,
            "fail_times": 1,
            "key": "whole-turn",
        },
    }
    notices: list[str] = []
    with _relay(mock_url) as relay:
        async with RelayClient(relay) as client:
            result = await client.stream_turn(body, on_notice=notices.append)
    assert any("partial answer discarded" in n for n in notices), notices
    assert result.message.stop_reason in {"end_turn", "max_tokens"}
    assert result.timings.content_deltas == 30, "only the retried turn's text is kept"


@pytest.mark.anyio
async def test_client_never_retries_a_non_retryable_error(mock_url: str) -> None:
    bad = {"model": "mock-text", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}
    notices: list[str] = []
    with _relay(mock_url) as relay:
        async with RelayClient(relay) as client:
            with pytest.raises(RelayStreamError) as info:
                await client.stream_turn(bad, on_notice=notices.append)
    assert info.value.status == 400
    assert not info.value.retryable
    assert notices == []
