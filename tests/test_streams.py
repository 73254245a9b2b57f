"""StreamRegistry: lookup, idempotency keys, retention by TTL and by bytes, in finish order.

The streams are real :class:`RelayStream` objects, stopped before they run: they finalise
at once (an ``error`` and a ``relay_metrics`` frame in their buffer) without an upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from service.config import Settings
from service.relay import RelayStream
from service.request import parse_request
from service.retry import RetryPolicy
from service.streams import StreamRegistry, key_id
from service.telemetry.observer import NullObserver
from service.upstream.anthropic import AnthropicUpstream

pytestmark = pytest.mark.anyio


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _stream(
    client: httpx.AsyncClient, stream_id: str, *, idempotency_key: str | None = None
) -> RelayStream:
    settings = Settings(upstream_url="http://127.0.0.1:9")
    body = msgspec.json.encode(
        {
            "model": "mock-text",
            "max_tokens": 16,
            "stream": True,
            "messages": [{"role": "user", "content": stream_id}],
        }
    )
    headers = {} if idempotency_key is None else {"idempotency-key": idempotency_key}
    return RelayStream(
        stream_id=stream_id,
        request=parse_request(body, headers),
        settings=settings,
        adapter=AnthropicUpstream(settings),
        client=client,
        observer=NullObserver(),
        policy=RetryPolicy.from_settings(settings),
        client_key_id=key_id("sk-client"),
    )


async def _finish(stream: RelayStream) -> None:
    stream.stop("cancelled")
    await stream.run()
    assert stream.done.is_set()


async def test_finished_streams_stay_for_the_ttl_then_go_on_the_next_add(
    client: httpx.AsyncClient,
) -> None:
    clock = _Clock()
    registry = StreamRegistry(ttl=10.0, clock=clock)
    first = _stream(client, "rs_first", idempotency_key="k1")
    registry.add(first)
    assert registry.in_flight == 1
    await _finish(first)
    assert registry.in_flight == 0
    assert registry.retained_bytes > 0

    clock.now += 9.0
    registry.add(_stream(client, "rs_second"))
    assert registry.get("rs_first") is first
    assert registry.by_idempotency_key(key_id("sk-client"), "k1") is first

    clock.now += 2.0
    registry.add(_stream(client, "rs_third"))
    assert registry.get("rs_first") is None
    assert registry.by_idempotency_key(key_id("sk-client"), "k1") is None
    assert registry.retained_bytes == 0
    assert registry.in_flight == 2  # second and third never ran


async def test_expiry_follows_the_order_streams_finished_in(client: httpx.AsyncClient) -> None:
    # A long stream added first must not shield shorter ones behind it from expiry.
    clock = _Clock()
    registry = StreamRegistry(ttl=10.0, clock=clock)
    long_running = _stream(client, "rs_long")
    short = _stream(client, "rs_short")
    registry.add(long_running)
    registry.add(short)
    await _finish(short)
    clock.now += 11.0
    registry.add(_stream(client, "rs_later"))
    assert registry.get("rs_short") is None
    assert registry.get("rs_long") is long_running  # still in flight: never expires

    await _finish(long_running)
    clock.now += 5.0
    registry.add(_stream(client, "rs_later_still"))
    assert registry.get("rs_long") is long_running  # finished 5 s ago: kept
    clock.now += 6.0
    registry.add(_stream(client, "rs_last"))
    assert registry.get("rs_long") is None


async def test_the_oldest_finished_streams_go_first_beyond_the_byte_budget(
    client: httpx.AsyncClient,
) -> None:
    streams = [_stream(client, f"rs_{i}", idempotency_key=f"key-{i}") for i in range(3)]
    held = []
    clock = _Clock()
    registry = StreamRegistry(ttl=300.0, clock=clock)
    for stream in streams:
        registry.add(stream)
        await _finish(stream)
        assert stream.buffer is not None
        held.append(stream.buffer.held_bytes)
    assert registry.retained_bytes == sum(held)
    registry.max_retained_bytes = held[1] + held[2]  # room for the two newest only

    registry.add(_stream(client, "rs_next"))
    assert registry.get("rs_0") is None
    assert registry.by_idempotency_key(key_id("sk-client"), "key-0") is None
    assert registry.get("rs_1") is streams[1]
    assert registry.get("rs_2") is streams[2]
    assert registry.retained_bytes == held[1] + held[2]


async def test_a_later_post_with_the_same_key_takes_the_key_over(
    client: httpx.AsyncClient,
) -> None:
    clock = _Clock()
    registry = StreamRegistry(ttl=10.0, clock=clock)
    old = _stream(client, "rs_old", idempotency_key="same")
    registry.add(old)
    await _finish(old)
    new = _stream(client, "rs_new", idempotency_key="same")
    registry.add(new)
    clock.now += 11.0
    registry.add(_stream(client, "rs_sweeper"))  # forgets rs_old, not the key's new owner
    assert registry.get("rs_old") is None
    assert registry.by_idempotency_key(key_id("sk-client"), "same") is new
    assert registry.by_idempotency_key(None, "same") is None  # keys are scoped by client key


async def test_cancel_and_shutdown_stop_only_streams_in_flight(
    client: httpx.AsyncClient,
) -> None:
    registry = StreamRegistry(ttl=10.0)
    done = _stream(client, "rs_done")
    registry.add(done)
    await _finish(done)
    running = _stream(client, "rs_running")
    registry.add(running)

    assert registry.cancel("rs_unknown") is False
    assert registry.begin_shutdown() == 1
    assert running.stop_reason == "shutdown"
    assert done.stop_reason == "cancelled"
    assert registry.shutting_down
