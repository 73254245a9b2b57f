"""The load generator's response parser, the fast mock's wire, and a batch between them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import anyio
import pytest

from service.bench.fastmock import (
    BenchSpec,
    FastMockServer,
    expected_text,
    parse_spec,
    spec_prompt,
    token_text,
)
from service.bench.loadgen import Target, run_job
from service.bench.response import ResponseParser, analyse

_BODY = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":" alpha"}}\n\n'
)
_CHUNKED = (
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
    + b"%x\r\n%s\r\n" % (len(_BODY), _BODY)
    + b"0\r\n\r\n"
)


@pytest.mark.parametrize("cut", range(1, len(_CHUNKED)))
def test_chunked_responses_parse_the_same_however_the_reads_fall(cut: int) -> None:
    parser = ResponseParser("anthropic")
    parser.feed(1.0, _CHUNKED[:cut])
    parser.feed(2.0, _CHUNKED[cut:])
    assert parser.done
    assert parser.status == 200
    assert b"".join(p for _, p in parser.pieces) == _BODY


def test_a_connection_lost_mid_body_is_an_incomplete_stream() -> None:
    parser = ResponseParser("anthropic")
    parser.feed(1.0, _CHUNKED[:-5])
    parser.eof(2.0)
    sample = analyse(parser, "anthropic", 0.5, tokens=1)
    assert not sample.ok
    assert sample.error == "connection closed mid-response"


def test_spec_round_trips_through_the_prompt_without_exponents() -> None:
    spec = BenchSpec(tokens=7, tpot_ms=0.5, ttft_ms=3_600_000, head_ms=0, tag="idle-relay-0-3")
    prompt = spec_prompt(spec)
    assert "e+" not in prompt
    assert parse_spec(f"system says hi. {prompt}") == spec
    assert parse_spec("no spec here") == BenchSpec()


def test_the_answer_holds_multibyte_quotes_backslashes_and_line_breaks() -> None:
    text = expected_text(12)
    assert text == "".join(token_text(i) for i in range(12))
    for needle in ("é", "世界", "🚀", '"', "\\", "\n"):
        assert needle in text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("wire", "path"), [("anthropic", "/v1/messages"), ("openai", "/v1/chat/completions")]
)
async def test_a_batch_against_the_fast_mock_is_complete_and_faithful(wire: str, path: str) -> None:
    mock = FastMockServer()
    await mock.start()
    try:
        target = {"host": "127.0.0.1", "port": mock.port, "path": path, "wire": wire}
        job = {
            "kind": "batch",
            "target": target,
            "concurrency": 3,
            "per_worker": 2,
            "tokens": 6,
            "tpot_ms": 2.0,
            "ttft_ms": 0.0,
            "deadline": 30.0,
            "tag": "t",
        }
        result = await run_job(job)
    finally:
        await mock.close()
    assert (result["ok"], result["failed"]) == (6, 0)
    assert (result["count_mismatch"], result["bytes_mismatch"]) == (0, 0)
    assert len(result["ttfts"]) == 6
    assert len(result["gaps"]) == 6 * 5
    assert result["events"] >= 6 * 6  # measured streams, plus the ramp and filler ones


@pytest.mark.anyio
async def test_cancel_jobs_record_the_stop_and_the_mock_sees_the_close() -> None:
    mock = FastMockServer()
    await mock.start()
    try:
        target = Target("127.0.0.1", mock.port, "/v1/messages", "anthropic")
        job = {
            "kind": "cancel",
            "target": asdict(target),
            "trials": 2,
            "read_tokens": 2,
            "tpot_ms": 2.0,
            "tag": "c",
        }
        answer = await run_job(job)
        tags = [s["tag"] for s in answer["stops"]]
        records = await _closed(mock, tags)
    finally:
        await mock.close()
    assert tags == ["c-0", "c-1"]
    for stop in answer["stops"]:
        record = records[stop["tag"]]
        assert record["completed_at"] is None
        assert record["closed_at"] >= stop["stop"]  # one clock (CLOCK_MONOTONIC) for both


async def _closed(mock: FastMockServer, tags: list[str]) -> dict[str, dict[str, Any]]:
    """The ledger records once every one shows its socket closed (5 s at most)."""
    for _ in range(500):
        records = mock.lookup(tags)
        if all(r["closed_at"] for r in records.values()):
            return records
        await anyio.sleep(0.01)
    return mock.lookup(tags)
