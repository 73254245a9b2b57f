"""RelayStream in isolation: one generation against the real mock over loopback."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import msgspec
import pytest
from structlog.testing import capture_logs

from service.config import Settings
from service.mock.app import create_mock_app
from service.mock.settings import MockSettings
from service.relay import RelayStream
from service.request import parse_request
from service.retry import RetryPolicy
from service.telemetry.observer import NullObserver
from service.upstream.anthropic import AnthropicUpstream
from tests.support.servers import run_uvicorn


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with run_uvicorn(create_mock_app(MockSettings(ttft_ms=20, tpot_ms=5))) as url:
        yield url


def _stream(
    mock_url: str,
    client: httpx.AsyncClient,
    *,
    streaming: bool = True,
    stream_id: str = "rs_test",
) -> RelayStream:
    settings = Settings(upstream_url=mock_url)
    body = msgspec.json.encode(
        {
            "model": "mock-text",
            "max_tokens": 4000,
            "stream": streaming,
            "messages": [{"role": "user", "content": "x"}],
        }
    )
    return RelayStream(
        stream_id=stream_id,
        request=parse_request(body, {}),
        settings=settings,
        adapter=AnthropicUpstream(settings),
        client=client,
        observer=NullObserver(),
        policy=RetryPolicy.from_settings(settings),
    )


async def _deltas(stream: RelayStream, count: int) -> None:
    """Wait (event-driven, on the stream's own buffer) until ``count`` deltas went by."""
    assert stream.buffer is not None
    cursor = 0
    with anyio.fail_after(10):
        while stream.timings.content_deltas < count:
            cursor += len(await stream.buffer.wait_frames(cursor))


async def _final_state(mock_url: str, stream_id: str) -> str:
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            records = (
                await client.get(
                    f"{mock_url}/mock/generations", params={"relay_stream_id": stream_id}
                )
            ).json()
            if records[-1]["state"] != "streaming":
                return str(records[-1]["state"])
            await anyio.sleep(0.05)
    return "streaming"


@pytest.mark.anyio
async def test_outer_cancellation_is_recorded_as_interrupted(mock_url: str) -> None:
    async with httpx.AsyncClient() as client:
        stream = _stream(mock_url, client)
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.run)
                await _deltas(stream, 3)
                tg.cancel_scope.cancel()  # not stream.stop(): something else cancelled us
    assert stream.done.is_set()
    assert stream.outcome == "interrupted"
    aborted = [e for e in logs if e["event"] == "upstream.aborted"]
    assert [e["reason"] for e in aborted] == ["interrupted"]
    assert await _final_state(mock_url, "rs_test") == "aborted"


@pytest.mark.anyio
async def test_stop_is_idempotent_and_the_first_reason_wins(mock_url: str) -> None:
    async with httpx.AsyncClient() as client:
        stream = _stream(mock_url, client)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.run)
            await _deltas(stream, 2)
            stream.stop("cancelled")
            stream.stop("deadline")
    assert stream.outcome == "cancelled"
    stream.stop("shutdown")  # after the end: ignored
    assert stream.outcome == "cancelled"


@pytest.mark.anyio
async def test_the_ending_frames_carry_error_then_metrics(mock_url: str) -> None:
    async with httpx.AsyncClient() as client:
        stream = _stream(mock_url, client)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.run)
            await _deltas(stream, 2)
            stream.stop("cancelled")
    assert stream.buffer is not None
    frames = await stream.buffer.wait_frames(0)
    assert frames[-2].startswith(b"event: error\n")
    assert b'"reason":"cancelled"' in frames[-2]
    assert frames[-1].startswith(b"event: relay_metrics\n")
    assert stream.buffer.closed


@pytest.mark.anyio
async def test_a_stream_stopped_before_it_ran_opens_nothing(mock_url: str) -> None:
    async with httpx.AsyncClient() as client:
        stream = _stream(mock_url, client, stream_id="rs_never_ran")
        stream.stop("cancelled")
        with capture_logs() as logs:
            await stream.run()
        generations = (
            await client.get(
                f"{mock_url}/mock/generations", params={"relay_stream_id": "rs_never_ran"}
            )
        ).json()
    assert stream.outcome == "cancelled"
    assert [e["event"] for e in logs if e["event"] == "upstream.aborted"] == []
    assert generations == []
