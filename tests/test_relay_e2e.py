"""End to end over real loopback sockets: uvicorn serves the mock provider and the relay.

What a client of ``POST /v1/messages`` with ``"stream": true`` must see (DESIGN section 4):
tokens as they are generated, the provider's events byte for byte and in order, the designed
headers, resumable ``id:`` lines, nothing named before ``message_start`` and ``relay_metrics``
last. Plus the tool-call contract: the relay parses each tool input exactly once and logs it.
"""

from __future__ import annotations

import itertools
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import msgspec
import pytest
import structlog

import service.accumulate
from service.client import RelayClient
from service.mock.scenarios import TOOL_INPUT
from service.relay import input_digest
from tests.support.stack import FAST_MOCK, Block, Recording, Stack, record_stream, relay_stack

TOKENS = 40
"""Text tokens per test stream: 40 at ~10 ms makes a ~400 ms body after a ~150 ms TTFT."""

_ID_LINE = re.compile(rb"^id: [^\n]*\n", re.MULTILINE)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with relay_stack() as running:
        yield running


def _body(
    scenario: str = "text", *, prompt: str = "Tell me about relays.", **mock: Any
) -> dict[str, Any]:
    return {
        "model": f"mock-{scenario}",
        "max_tokens": 256,
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
        "mock": {"tokens": TOKENS, **mock},
    }


def _relay(stack: Stack, body: dict[str, Any], **headers: str) -> Recording:
    recording = record_stream(f"{stack.relay_url}/v1/messages", body, headers=headers)
    assert recording.status == 200, recording.body[:500]
    return recording


def _deltas(recording: Recording) -> list[Block]:
    return [b for b in recording.blocks if b.event == "content_block_delta"]


def _text(blocks: Sequence[Block]) -> str:
    parts = []
    for block in blocks:
        payload = msgspec.json.decode(block.data or "{}")
        if payload.get("type") == "content_block_delta":
            parts.append(payload["delta"].get("text", ""))
    return "".join(parts)


# -- timing ----------------------------------------------------------------------------------


def test_first_token_reaches_the_client_well_before_the_last(stack: Stack) -> None:
    recording = _relay(stack, _body())

    deltas = _deltas(recording)
    assert len(deltas) == TOKENS
    ttft, last = deltas[0].at, deltas[-1].at
    total = recording.end_at
    # Buffering anywhere on the path would make the first token arrive with the last one.
    assert ttft < 0.5 * total, (ttft, total)
    # The tokens take (at least) their generation time to arrive: ~39 gaps of ~10 ms.
    assert last - ttft > 0.5 * (TOKENS - 1) * FAST_MOCK.tpot_ms / 1000, (ttft, last)
    # Tokens arrive spread out, not in a few bursts.
    distinct_arrivals = len({round(d.at, 4) for d in deltas})
    assert distinct_arrivals >= TOKENS // 2, distinct_arrivals


def test_opening_frame_arrives_before_the_first_token(stack: Stack) -> None:
    # A longer model "think" time makes the ordering unmistakable on a loaded machine.
    recording = _relay(stack, _body(ttft_ms=400))

    opening = recording.blocks[0]
    first_delta = _deltas(recording)[0]
    assert opening.is_comment_only
    assert opening.first("retry") is not None
    assert recording.first_byte_at is not None
    assert recording.first_byte_at <= opening.at < first_delta.at
    assert opening.at < 0.5 * first_delta.at, (opening.at, first_delta.at)


# -- bytes and events --------------------------------------------------------------------------


def test_relay_output_matches_a_direct_mock_stream_event_by_event(stack: Stack) -> None:
    body = _body(prompt="Same seed, same prompt, same words.", seed=7)
    direct = record_stream(f"{stack.mock_url}/v1/messages", body)
    relayed = _relay(stack, body)

    direct_events = direct.events()
    relayed_events = [b for b in relayed.events() if b.event != "relay_metrics"]
    assert [b.event for b in relayed_events] == [b.event for b in direct_events]
    # Each generation gets its own message id; everything else is byte-identical.
    direct_id = msgspec.json.decode(direct_events[0].data or "")["message"]["id"]
    relayed_id = msgspec.json.decode(relayed_events[0].data or "")["message"]["id"]
    assert direct_id != relayed_id
    for ours, theirs in zip(relayed_events, direct_events, strict=True):
        assert (ours.data or "").replace(relayed_id, direct_id) == theirs.data
    assert _text(relayed_events) == _text(direct_events)
    assert len(_deltas(relayed)) == TOKENS


def test_forwarded_bytes_are_the_upstream_bytes_plus_id_lines(stack: Stack) -> None:
    recording = _relay(stack, _body("tool_use"))
    stream_id = recording.headers["x-relay-stream-id"]

    (upstream,) = stack.upstream.for_stream(stream_id)
    assert upstream.complete
    assert not upstream.truncated
    opening, *forwarded, metrics = recording.blocks
    assert opening.is_comment_only
    assert metrics.event == "relay_metrics"
    relayed = b"".join(block.raw + b"\n\n" for block in forwarded)
    # Every forwarded frame carries exactly one id line, the relay's only change.
    assert all(len(_ID_LINE.findall(block.raw + b"\n")) == 1 for block in forwarded)
    assert _ID_LINE.sub(b"", relayed) == bytes(upstream.response_body)


def test_stream_headers_are_as_designed(stack: Stack) -> None:
    # Ask for compression: an SSE stream must never be compressed (or given a length).
    recording = _relay(stack, _body(), **{"accept-encoding": "gzip, deflate, br"})

    headers = recording.headers
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache, no-transform"
    assert headers["x-accel-buffering"] == "no"
    assert re.fullmatch(r"rs_[0-9a-f]+", headers["x-relay-stream-id"])
    assert "content-length" not in headers
    assert "content-encoding" not in headers
    assert headers.get("transfer-encoding") == "chunked"
    assert recording.body.startswith(b":")  # plain text on the wire, not a gzip member


def test_event_ids_increase_strictly_and_name_the_stream(stack: Stack) -> None:
    recording = _relay(stack, _body("tool_use"))
    stream_id = recording.headers["x-relay-stream-id"]

    events = recording.events()
    ids = [block.id for block in events]
    assert all(i is not None for i in ids), ids
    sequence = []
    for event_id in ids:
        assert event_id is not None
        prefix, _, seq = event_id.rpartition(":")
        assert prefix == stream_id
        assert seq.isdigit()
        sequence.append(int(seq))
    assert all(a < b for a, b in itertools.pairwise(sequence)), sequence
    # Comments (the opening frame) carry no id: they are not resumable events.
    assert all(block.id is None for block in recording.blocks if block.is_comment_only)


def test_nothing_named_comes_before_message_start() -> None:
    # A rate-limited first attempt makes the relay wait 300 ms before message_start; with
    # progress every 50 ms it has something to say then, and must say it as comments.
    with relay_stack({"progress_interval": 0.05}) as stack:
        body = _body("rate_limited", retry_after_ms=300, key=secrets.token_hex(8))
        recording = _relay(stack, body)
        stream_id = recording.headers["x-relay-stream-id"]
        attempts = stack.upstream.for_stream(stream_id)

    assert [a.status for a in attempts] == [429, 200]
    progress_comments = [b for b in recording.blocks if b.raw.startswith(b": relay_progress")]
    assert progress_comments, recording.body[:1000]
    names = [block.event for block in recording.blocks]
    first_named = next(i for i, name in enumerate(names) if name is not None)
    assert names[first_named] == "message_start"
    assert all(block.is_comment_only for block in recording.blocks[:first_named])


def test_relay_metrics_comes_last_with_the_server_figures(stack: Stack) -> None:
    recording = _relay(stack, _body())
    stream_id = recording.headers["x-relay-stream-id"]

    *_, message_stop, last = recording.events()
    assert message_stop.event == "message_stop"
    assert last.event == "relay_metrics"
    assert recording.blocks[-1] is last
    metrics = msgspec.json.decode(last.data or "")
    assert metrics["type"] == "relay_metrics"
    assert metrics["stream_id"] == stream_id
    assert metrics["outcome"] == "completed"
    server = metrics["server"]
    assert server["content_deltas"] == TOKENS
    assert server["output_tokens"] == TOKENS
    assert metrics["usage"]["output_tokens"] == TOKENS
    assert 0 < server["ttfb_ms"] <= server["ttft_ms"] < server["total_ms"]
    assert server["tpot_ms"] > 0
    assert server["itl_p50_ms"] <= server["itl_p99_ms"] <= server["itl_max_ms"]
    # The server measures from the request it received; the client from the one it sent
    # (one process, one monotonic clock), so the client's TTFT can only be larger.
    assert server["ttft_ms"] / 1000 < _deltas(recording)[0].at


def test_the_ledger_links_the_generation_to_the_relay_stream(stack: Stack) -> None:
    recording = _relay(stack, _body())
    stream_id = recording.headers["x-relay-stream-id"]

    (generation,) = stack.ledger.records(relay_stream_id=stream_id)
    assert generation.state == "completed"
    assert generation.tokens == TOKENS
    start = msgspec.json.decode(recording.first_event("message_start").data or "")
    assert start["message"]["id"] == generation.id


# -- tool input: parsed exactly once, and logged -----------------------------------------------


def test_relay_logs_the_tool_input_it_parsed(stack: Stack) -> None:
    with structlog.testing.capture_logs() as logs:
        recording = _relay(stack, _body("tool_use"))
    stream_id = recording.headers["x-relay-stream-id"]

    parsed = [e for e in logs if e["event"] == "tool_input.parsed"]
    assert [e["tool"] for e in parsed] == ["get_weather", "get_time"]
    weather, clock = parsed
    assert weather["stream_id"] == stream_id
    assert weather["parse_attempts"] == 1
    # By default the content stays out of the log: keys and a digest identify the object.
    assert "input" not in weather
    assert weather["input_keys"] == sorted(TOOL_INPUT)
    assert weather["input_sha256"] == input_digest(TOOL_INPUT)
    assert weather["fragments"] == 9
    assert clock["input_sha256"] == input_digest({})
    assert clock["parse_attempts"] == 1


def test_relay_logs_the_whole_tool_input_when_asked() -> None:
    with relay_stack({"log_tool_input": True}) as stack, structlog.testing.capture_logs() as logs:
        _relay(stack, _body("tool_use"))
    parsed = [e for e in logs if e["event"] == "tool_input.parsed"]
    assert [e["input"] for e in parsed] == [TOOL_INPUT, {}]


@pytest.mark.anyio
async def test_each_tool_input_is_parsed_once_by_the_relay_and_once_by_the_client(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    real_parse = service.accumulate.parse_tool_input

    def spy(fragments: Sequence[str]) -> dict[str, Any]:
        calls.append((threading.current_thread().name, "".join(fragments)))
        return real_parse(fragments)

    monkeypatch.setattr(service.accumulate, "parse_tool_input", spy)
    relay_thread = f"uvicorn-{httpx.URL(stack.relay_url).port}"
    async with RelayClient(stack.relay_url, report_metrics=False) as client:
        result = await client.stream_turn(_body("tool_use"))

    relay_calls = [text for thread, text in calls if thread == relay_thread]
    client_calls = [text for thread, text in calls if thread == threading.current_thread().name]
    # Two tool blocks (get_weather, get_time): one parse each in the relay, at the block's
    # stop, of the whole concatenated input; the Python client does the same on its side.
    assert len(relay_calls) == 2, calls
    assert len(client_calls) == 2, calls
    assert len(calls) == 4, calls
    assert msgspec.json.decode(relay_calls[0]) == TOOL_INPUT
    assert relay_calls[1] == ""
    assert [t.input for t in result.tool_inputs] == [TOOL_INPUT, {}]
    assert all(t.parse_attempts == 1 for t in result.tool_inputs)
