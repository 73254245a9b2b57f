"""The generation player over real sockets: client disconnect, backpressure, drop, shutdown.

These are the mock's key properties: when the client goes away the generation stops at once
(tokens frozen, state ``aborted``, one log line); when the client stops reading the token count
stops climbing; ``drop`` really breaks the HTTP response. Both uvicorn protocol
implementations are exercised where their disconnect handling differs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, cast

import anyio
import httpx
import pytest
import structlog

from service.mock import GenerationLedger, GenerationRecord, MockSettings, create_mock_app
from tests.support.servers import run_uvicorn

pytestmark = pytest.mark.anyio

_HTTP_IMPLS = ["h11", "httptools"]


@pytest.fixture(params=_HTTP_IMPLS)
def http_impl(request: pytest.FixtureRequest) -> str:
    impl: str = request.param
    return impl


@pytest.fixture
def ledger() -> GenerationLedger:
    return GenerationLedger()


@pytest.fixture
def base_url(ledger: GenerationLedger, http_impl: str) -> Iterator[str]:
    app = create_mock_app(MockSettings(ttft_ms=5, tpot_ms=5, jitter=0), ledger)
    with run_uvicorn(app, http=http_impl) as url:
        yield url


def _body(mock: dict[str, Any], *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "mock": mock,
    }


def _only(ledger: GenerationLedger) -> GenerationRecord:
    (record,) = ledger.records()
    return record


async def _wait_until(predicate: Callable[[], bool], *, within: float = 5.0) -> None:
    with anyio.fail_after(within):
        # The ledger changes on the server's thread: nothing to await, so poll.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)


async def test_client_disconnect_aborts_the_generation_and_freezes_tokens(
    base_url: str, ledger: GenerationLedger
) -> None:
    # 2000 tokens at 5 ms would take 10 s; the client leaves after 5 deltas.
    body = _body({"tokens": 2000})
    with structlog.testing.capture_logs() as logs:
        async with httpx.AsyncClient(base_url=base_url) as client:
            headers = {"x-relay-stream-id": "st_abort"}
            async with client.stream("POST", "/v1/messages", json=body, headers=headers) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += line == "event: content_block_delta"
                    if seen == 5:
                        break
        await _wait_until(lambda: _only(ledger).state != "streaming")
        first = _only(ledger)
        await anyio.sleep(0.5)
        second = _only(ledger)
    assert (first.state, first.abort_reason) == ("aborted", "client_disconnected")
    assert 5 <= first.tokens < 2000
    assert second.tokens == first.tokens, "tokens climbed after the client left"
    aborted = [e for e in logs if e["event"] == "mock.generation.aborted"]
    assert aborted == [
        {
            "event": "mock.generation.aborted",
            "log_level": "info",
            "generation_id": first.id,
            "tokens": first.tokens,
            "relay_stream_id": "st_abort",
            "reason": "client_disconnected",
        }
    ]


async def test_disconnect_during_a_stall_aborts_promptly(
    base_url: str, ledger: GenerationLedger
) -> None:
    body = _body({"scenario": "stall", "fail_after": 2})  # default stall: five minutes
    async with (
        httpx.AsyncClient(base_url=base_url) as client,
        client.stream("POST", "/v1/messages", json=body) as response,
    ):
        # anext, not a broken-off ``async for``: abandoning the line iterator would close
        # the connection before we look.
        lines = cast(AsyncGenerator[str, None], response.aiter_lines())
        try:
            seen = 0
            while seen < 2:
                seen += await anext(lines) == "event: content_block_delta"
            await anyio.sleep(0.1)  # now inside the stall
            assert _only(ledger).state == "streaming"
        finally:
            await lines.aclose()
    await _wait_until(lambda: _only(ledger).state != "streaming")
    record = _only(ledger)
    assert (record.state, record.tokens) == ("aborted", 2)


async def test_disconnect_during_a_non_streaming_generation_aborts_it(
    base_url: str, ledger: GenerationLedger
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/messages", json=_body({"tokens": 2000}, stream=False))
    await _wait_until(lambda: _only(ledger).state != "streaming")
    first = _only(ledger)
    await anyio.sleep(0.3)
    assert (first.state, first.abort_reason) == ("aborted", "client_disconnected")
    assert _only(ledger).tokens == first.tokens < 2000


async def test_a_stalled_reader_stops_the_token_count(
    base_url: str, ledger: GenerationLedger
) -> None:
    # ~21 MB: more than loopback socket buffers plus uvicorn's write buffer can hold.
    total = 20_000
    body = _body({"scenario": "large", "tokens": total, "token_bytes": 1024, "ttft_ms": 0})
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
        client.stream("POST", "/v1/messages", json=body) as response,
    ):
        # Read nothing: wait until the writer blocks, then sample twice.
        await _wait_until(lambda: _only(ledger).tokens > 0)
        first = await _settled_tokens(ledger)
        await anyio.sleep(0.5)
        second = _only(ledger).tokens
        assert first == second < total
        assert _only(ledger).state == "streaming"
        # Reading again lets the generation finish.
        received = 0
        async for chunk in response.aiter_bytes():
            received += len(chunk)
    record = _only(ledger)
    assert (record.state, record.tokens) == ("completed", total)
    assert received > total * 1024


async def _settled_tokens(ledger: GenerationLedger, samples: int = 3) -> int:
    """The token count once it stayed the same for ``samples`` samples 0.1 s apart."""
    with anyio.fail_after(10):
        history: list[int] = []
        while len(history) < samples or len(set(history[-samples:])) > 1:
            history.append(_only(ledger).tokens)
            await anyio.sleep(0.1)
    return history[-1]


async def test_drop_breaks_the_response_mid_stream(
    base_url: str, ledger: GenerationLedger, caplog: pytest.LogCaptureFixture
) -> None:
    received = bytearray()
    body = _body({"scenario": "drop", "fail_after": 3})
    async with httpx.AsyncClient(base_url=base_url) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            await _read_into(client, body, received)
    assert received.count(b"event: content_block_delta") == 3
    assert b"message_stop" not in received
    record = _only(ledger)
    assert (record.state, record.abort_reason, record.tokens) == ("failed", "dropped", 3)
    # The intended drop leaves no error (or traceback) in the server's log.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _read_into(client: httpx.AsyncClient, body: dict[str, Any], out: bytearray) -> None:
    async with client.stream("POST", "/v1/messages", json=body) as response:
        async for chunk in response.aiter_bytes():
            out += chunk


async def test_drop_without_streaming_is_a_short_read(
    base_url: str, ledger: GenerationLedger, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/v1/messages", json=_body({"scenario": "drop"}, stream=False))
    assert _only(ledger).abort_reason == "dropped"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("http_impl", ["httptools"])
async def test_server_shutdown_cancels_in_flight_generations(http_impl: str) -> None:
    ledger = GenerationLedger()
    app = create_mock_app(MockSettings(ttft_ms=0, tpot_ms=1), ledger)
    async with httpx.AsyncClient(timeout=10) as client:
        with run_uvicorn(app, http=http_impl, shutdown_timeout=0.2) as url:
            body = _body({"scenario": "stall", "fail_after": 1})
            response = await client.send(
                client.build_request("POST", f"{url}/v1/messages", json=body), stream=True
            )
            await _wait_until(lambda: _only(ledger).tokens == 1)
        # The context exit waited for the cancelled generation: it is already recorded.
        await response.aclose()
    assert (_only(ledger).state, _only(ledger).abort_reason) == ("aborted", "cancelled")
