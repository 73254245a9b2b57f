"""Backpressure end to end: a slow client slows the provider, memory stays bounded, nothing
is lost; and heartbeats fill a silent wait.

The relay runs as a real subprocess (``python -m service.cli serve``) so its resident memory
can be read from ``/proc/<pid>/status``; the mock provider runs in a thread of this process
so its generation ledger can be sampled while the client is slow. The client is a raw socket
reading a few KiB now and then, so the test controls exactly how fast bytes leave the
kernel's receive buffer.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.demo import free_port, spawn_service
from service.mock import GenerationLedger, MockSettings, create_mock_app
from tests.support.servers import run_uvicorn
from tests.support.stack import Recording, record_stream, relay_stack

QUEUE_BOUND = 256 * 1024
TOKENS = 100_000
TOKEN_BYTES = 512  # 100000 x 512 B: a 51 MB answer, ~66 MB of SSE frames
SLOW_READ = 4096
SLOW_EVERY = 0.05
SLOW_FOR = 3.0
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


def _large(tokens: int) -> dict[str, Any]:
    return {
        "model": "mock-text",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "a very long answer"}],
        "mock": {"scenario": "large", "tokens": tokens, "token_bytes": TOKEN_BYTES, "tpot_ms": 0},
    }


@dataclass
class _Relay:
    url: str
    pid: int
    mock_url: str
    ledger: GenerationLedger


@pytest.fixture(scope="module")
def relay_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Relay]:
    ledger = GenerationLedger()
    log = tmp_path_factory.mktemp("relay") / "relay.log"
    with run_uvicorn(create_mock_app(MockSettings(), ledger=ledger)) as mock_url:
        port = free_port()
        env = {
            "RELAY_MAX_QUEUED_BYTES": str(QUEUE_BOUND),
            "RELAY_CLIENT_STALL_TIMEOUT": "120",
            "RELAY_LOG_FORMAT": "json",
        }
        url = f"http://127.0.0.1:{port}"
        args = ["serve", "--port", str(port), "--upstream", mock_url]
        with spawn_service(args, env, f"{url}/healthz", log) as proc:
            yield _Relay(url=url, pid=proc.pid, mock_url=mock_url, ledger=ledger)


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise AssertionError(f"{field_name} not in /proc/{pid}/status")


# --- a raw HTTP/1.1 client ------------------------------------------------------------


@dataclass
class _Slow:
    """What happened while the client read slowly."""

    samples: list[tuple[float, int]] = field(default_factory=list)
    """(seconds into the slow phase, upstream tokens generated so far)."""
    bytes_read: int = 0


def _request(url: str, body: dict[str, Any]) -> socket.socket:
    parts = urlsplit(url)
    assert parts.port is not None
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", parts.port))
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{parts.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "X-Relay-Events: all\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head + payload)
    return sock


def _dechunk(raw: bytes) -> tuple[bytes, bytes]:
    """Response head and de-chunked body of a complete HTTP/1.1 chunked response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = bytearray()
    pos = 0
    while True:
        eol = rest.index(b"\r\n", pos)
        size = int(rest[pos:eol].split(b";")[0], 16)
        if size == 0:
            return head, bytes(body)
        body += rest[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def _frames(body: bytes) -> list[bytes]:
    return [f for f in body.split(b"\n\n") if f]


def _data(frame: bytes) -> dict[str, Any]:
    line = next(x for x in frame.split(b"\n") if x.startswith(b"data: "))
    value: dict[str, Any] = json.loads(line[6:])
    return value


def _expected_token_text(mock_url: str) -> str:
    """The per-token text the mock sends for these options, from a short direct run."""
    response = httpx.post(f"{mock_url}/v1/messages", json=_large(3), timeout=10)
    texts = {
        _data(f)["delta"]["text"]
        for f in _frames(response.content)
        if f.startswith(b"event: content_block_delta")
    }
    assert len(texts) == 1
    return texts.pop()


def test_slow_client_slows_the_provider_with_bounded_memory_and_nothing_lost(
    relay_process: _Relay,
) -> None:
    relay, ledger = relay_process, relay_process.ledger
    expected_text = _expected_token_text(relay.mock_url)
    # Warm up: imports, allocator arenas, the upstream connection pool.
    warm = _request(relay.url, _large(2000))
    while warm.recv(1 << 20):
        pass
    warm.close()
    rss_before = _status_kib(relay.pid, "VmRSS")
    hwm_before = _status_kib(relay.pid, "VmHWM")

    sock = _request(relay.url, _large(TOKENS))
    chunks: list[bytes] = []
    slow = _Slow()
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < SLOW_FOR:
        data = sock.recv(SLOW_READ)
        assert data, "the relay ended the stream while the client was slow"
        chunks.append(data)
        slow.bytes_read += len(data)
        slow.samples.append((elapsed, ledger.records()[-1].tokens))
        time.sleep(SLOW_EVERY)
    rss_slow = _status_kib(relay.pid, "VmRSS")
    while data := sock.recv(1 << 20):
        chunks.append(data)
    sock.close()
    hwm_after = _status_kib(relay.pid, "VmHWM")

    head, body = _dechunk(b"".join(chunks))
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    frames = _frames(body)
    deltas = [f for f in frames if f.startswith(b"event: content_block_delta")]

    # 1. Every token arrived, in order, intact.
    assert len(deltas) == TOKENS
    assert all(_data(f)["delta"]["text"] == expected_text for f in deltas)
    seqs = [
        int(line.rsplit(b":", 1)[1])
        for f in frames
        for line in f.split(b"\n")
        if line.startswith(b"id: ")
    ]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no frame lost or repeated"
    metrics = _data(next(f for f in frames if f.startswith(b"event: relay_metrics")))
    assert metrics["outcome"] == "completed"
    assert metrics["usage"]["output_tokens"] == TOKENS

    # 2. The relay's queue never held more than its bound plus the frame that crossed it.
    largest_frame = max(len(f) + 2 for f in deltas)
    assert metrics["queue_peak_bytes"] <= QUEUE_BOUND + largest_frame, metrics

    # 3. The provider did not run ahead of the slow client: generation stayed far below the
    # total, and once the pipeline (queue + socket buffers) was full it grew only about as
    # fast as the client read.
    tokens_at_end_of_slow = slow.samples[-1][1]
    assert tokens_at_end_of_slow < TOKENS / 4, slow.samples[-5:]
    mid = next(i for i, (t, _) in enumerate(slow.samples) if t >= SLOW_FOR / 2)
    grown = tokens_at_end_of_slow - slow.samples[mid][1]
    read_in_second_half = SLOW_READ * (len(slow.samples) - mid)
    assert grown <= 2 * read_in_second_half / TOKEN_BYTES + 200, (grown, slow.samples[mid])

    # 4. Resident memory grew by far less than the stream (66 MB of frames).
    growth = (max(hwm_after, hwm_before) - rss_before) * 1024
    print(
        f"\nrelay RSS before {rss_before} KiB, during slow phase {rss_slow} KiB, peak"
        f" {hwm_after} KiB (growth {growth / 2**20:.1f} MiB); upstream tokens after"
        f" {SLOW_FOR:g} s slow: {tokens_at_end_of_slow} of {TOKENS}; queue peak"
        f" {metrics['queue_peak_bytes']} B"
    )
    assert growth < RSS_GROWTH_LIMIT


# --- heartbeats -----------------------------------------------------------------------

SLOW_START = {
    "model": "mock-text",
    "max_tokens": 3,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
    "mock": {"ttft_ms": 1500, "tpot_ms": 10, "jitter": 0},
}


def _waiting_blocks(recording: Recording) -> list[bytes]:
    """Blocks between the provider's message_start and the first content delta."""
    start = recording.blocks.index(recording.first_event("message_start"))
    first = recording.blocks.index(recording.first_event("content_block_delta"))
    return [b.raw for b in recording.blocks[start + 1 : first]]


def test_comment_heartbeats_fill_the_wait_for_the_first_token() -> None:
    with relay_stack({"heartbeat_interval": 0.3, "progress_interval": 3600.0}) as stack:
        recording = record_stream(f"{stack.relay_url}/v1/messages", SLOW_START)
    assert recording.status == 200
    waiting = _waiting_blocks(recording)
    # 1.5 s of silence at 0.3 s: about five; the margin absorbs a loaded machine.
    assert waiting.count(b": ping") >= 3, waiting
    assert recording.first_event("message_stop")


def test_typed_heartbeats_after_message_start() -> None:
    overrides = {"heartbeat_interval": 0.3, "progress_interval": 3600.0, "typed_heartbeats": True}
    with relay_stack(overrides) as stack:
        recording = record_stream(f"{stack.relay_url}/v1/messages", SLOW_START)
    waiting = _waiting_blocks(recording)
    # The provider's own ping (right after message_start) carries the relay's id: line;
    # the relay's heartbeats do not.
    relay_pings = [b for b in waiting if b.startswith(b"event: ping") and b"\nid: " not in b]
    assert len(relay_pings) >= 3, waiting
    assert all(json.loads(b.split(b"data: ", 1)[1]) == {"type": "ping"} for b in relay_pings)
    assert b": ping" not in waiting, "after message_start the heartbeats are typed"
