"""``relay bench transports``: both upstream transports keep the cancellation semantics the
relay depends on, checked against the fast mock's ledger (real sockets, one process)."""

from __future__ import annotations

import pytest

from service.bench.fastmock import FastMockServer
from service.bench.transports import TRANSPORTS, check_semantics, measure_throughput


@pytest.mark.anyio
async def test_every_cancellation_check_passes_on_both_transports() -> None:
    mock = FastMockServer()
    await mock.start()
    try:
        checks = await check_semantics(f"http://127.0.0.1:{mock.port}", repeats=1)
    finally:
        await mock.close()
    assert {c.transport for c in checks} == set(TRANSPORTS)
    assert len(checks) == 2 * 7
    failed = [(c.transport, c.check, c.detail) for c in checks if not c.passed]
    assert failed == []
    closes = [c for c in checks if "closes the socket" in c.check]
    assert all(c.close_ms is not None for c in closes)


@pytest.mark.anyio
async def test_throughput_counts_every_event_of_both_transports() -> None:
    mock = FastMockServer()
    await mock.start()
    try:
        url = f"http://127.0.0.1:{mock.port}/v1/messages"
        figures = await measure_throughput(url, rounds=1, streams=4, concurrency=2, tokens=5)
    finally:
        await mock.close()
    for name in TRANSPORTS:
        assert figures[name]["failed"] == 0
        assert figures[name]["events"] == 4 * 5
        assert figures[name]["ttft_p50_ms"] is not None
