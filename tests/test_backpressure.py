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

from service.mock import GenerationLedger, MockSettings, create_mock_app
from service.processes import free_port, spawn_service
from tests.support.servers import run_uvicorn
from tests.support.stack import Recording, record_stream, relay_stack

QUEUE_BOUND = 256 * 1024
TOKENS = 100_000
TOKEN_BYTES = 512  # 100000 x 512 B: a 51 MB answer, ~66 MB of SSE frames
SLOW_READ = 4096
SLOW_EVERY = 0.05
SLOW_FOR = 3.0
RSS_GROWTH_LIMIT = 64 * 1024 * 1024
UPSTREAM_READ_AHEAD = 32 * 256 * 1024 + 256 * 1024
"""Most the relay's upstream read path can hold beyond its queue after one wakeup."""


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
    """Bytes the client took from its socket during the slow phase."""
    tokens_at_end: int = 0
    """Upstream tokens generated when the slow phase ended."""
    kernel_queued: int = 0
    """Bytes in the kernel's socket queues on the relay's and the mock's connections then."""


def _request(url: str, body: dict[str, Any]) -> socket.socket:
    parts = urlsplit(url)
    assert parts.port is not None
    payload = json.dumps(body).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window, like a phone on a poor link (and no autotuning to many MiB).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", parts.port))
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
    texts: set[str] = {
        _data(f)["delta"]["text"]
        for f in _frames(response.content)
        if f.startswith(b"event: content_block_delta")
    }
    assert len(texts) == 1
    return texts.pop()


@dataclass
class _SlowRun:
    """One large stream read slowly, then fast, and what was measured on the way."""

    slow: _Slow
    head: bytes
    frames: list[bytes]
    expected_text: str
    rss_before_kib: int
    rss_slow_kib: int
    hwm_after_kib: int


def _newest_tokens(ledger: GenerationLedger) -> int:
    """Tokens of the newest generation (0 until the slow stream's one is recorded)."""
    records = ledger.records()
    newest = records[-1] if records else None
    return newest.tokens if newest is not None and newest.state == "streaming" else 0


def _kernel_queued_bytes(ports: set[int]) -> int:
    """Bytes sitting in kernel socket queues (unread + unacknowledged) of established IPv4
    connections to or from ``ports``, from /proc/net/tcp."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local, remote, state, queues = cols[1], cols[2], cols[3], cols[4]
        if state != "01":  # ESTABLISHED
            continue
        if {int(local.split(":")[1], 16), int(remote.split(":")[1], 16)} & ports:
            tx, rx = queues.split(":")
            total += int(tx, 16) + int(rx, 16)
    return total


@pytest.fixture(scope="module")
def slow_run(relay_process: _Relay) -> _SlowRun:
    relay, ledger = relay_process, relay_process.ledger
    ports = {_port(relay.url), _port(relay.mock_url)}
    expected_text = _expected_token_text(relay.mock_url)
    # Warm up: imports, allocator arenas, the upstream connection pool.
    warm = _request(relay.url, _large(2000))
    while warm.recv(1 << 20):
        pass
    warm.close()
    rss_before = _status_kib(relay.pid, "VmRSS")

    sock = _request(relay.url, _large(TOKENS))
    chunks: list[bytes] = []
    slow = _Slow()
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < SLOW_FOR:
        data = sock.recv(SLOW_READ)
        assert data, "the relay ended the stream while the client was slow"
        chunks.append(data)
        slow.bytes_read += len(data)
        slow.samples.append((elapsed, _newest_tokens(ledger)))
        time.sleep(SLOW_EVERY)
    slow.kernel_queued = _kernel_queued_bytes(ports)
    slow.tokens_at_end = _newest_tokens(ledger)
    rss_slow = _status_kib(relay.pid, "VmRSS")
    while data := sock.recv(1 << 20):
        chunks.append(data)
    sock.close()
    head, body = _dechunk(b"".join(chunks))
    return _SlowRun(
        slow=slow,
        head=head,
        frames=_frames(body),
        expected_text=expected_text,
        rss_before_kib=rss_before,
        rss_slow_kib=rss_slow,
        hwm_after_kib=_status_kib(relay.pid, "VmHWM"),
    )


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


@pytest.mark.slow
def test_slow_client_gets_every_byte_in_order(slow_run: _SlowRun) -> None:
    assert slow_run.head.startswith(b"HTTP/1.1 200"), slow_run.head[:200]
    deltas = [f for f in slow_run.frames if f.startswith(b"event: content_block_delta")]
    assert len(deltas) == TOKENS
    assert all(_data(f)["delta"]["text"] == slow_run.expected_text for f in deltas)
    seqs = [
        int(line.rsplit(b":", 1)[1])
        for f in slow_run.frames
        for line in f.split(b"\n")
        if line.startswith(b"id: ")
    ]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no frame lost or repeated"
    metrics = _metrics(slow_run)
    assert metrics["outcome"] == "completed"
    assert metrics["usage"]["output_tokens"] == TOKENS


def _metrics(run: _SlowRun) -> dict[str, Any]:
    return _data(next(f for f in run.frames if f.startswith(b"event: relay_metrics")))


def _frame_bytes(run: _SlowRun) -> int:
    return max(len(f) + 2 for f in run.frames if f.startswith(b"event: content_block_delta"))


@pytest.mark.slow
def test_queue_never_exceeds_its_bound_plus_one_frame(slow_run: _SlowRun) -> None:
    metrics = _metrics(slow_run)
    assert metrics["queue_peak_bytes"] <= QUEUE_BOUND + _frame_bytes(slow_run), metrics
    assert metrics["queue_peak_bytes"] > QUEUE_BOUND / 2, "the slow client did fill the queue"


@pytest.mark.slow
def test_provider_does_not_run_ahead_of_a_slow_client(slow_run: _SlowRun) -> None:
    slow, frame = slow_run.slow, _frame_bytes(slow_run)
    # Well below the total (measured: 17-31% of it, held in loopback socket buffers that
    # autotune to many MiB, see below) ...
    assert slow.tokens_at_end < TOKENS / 2, slow.samples[-5:]
    # ... and accounted for: what the provider generated beyond what the client read sits in
    # the relay's queue, the kernel's socket queues (measured, not assumed) and the relay's
    # upstream read-ahead: httpx reads through anyio's asyncio stream, whose protocol queues
    # whatever uvloop delivers before the reading task pauses the transport again (libuv
    # reads up to 32 x 256 KiB per wakeup; measured up to 8.8 MB), plus 1 MiB of other
    # userspace buffers.
    in_flight = slow.tokens_at_end * frame - slow.bytes_read
    bound = QUEUE_BOUND + slow.kernel_queued + UPSTREAM_READ_AHEAD + (1 << 20)
    assert in_flight <= bound, (in_flight, slow.kernel_queued)
    # Once the pipeline was full, generation grew only about as fast as the client read.
    mid = next(i for i, (t, _) in enumerate(slow.samples) if t >= SLOW_FOR / 2)
    grown = slow.samples[-1][1] - slow.samples[mid][1]
    read_in_second_half = SLOW_READ * (len(slow.samples) - mid)
    assert grown <= 2 * read_in_second_half / TOKEN_BYTES + 200, (grown, slow.samples[mid])
    print(
        f"\nslow phase: upstream {slow.tokens_at_end} of {TOKENS} tokens, client read"
        f" {slow.bytes_read} B, kernel socket queues {slow.kernel_queued} B, in flight"
        f" {in_flight} B"
    )


@pytest.mark.slow
def test_relay_memory_stays_bounded_for_a_large_stream(slow_run: _SlowRun) -> None:
    growth = (slow_run.hwm_after_kib - slow_run.rss_before_kib) * 1024
    print(
        f"\nrelay RSS before {slow_run.rss_before_kib} KiB, end of slow phase"
        f" {slow_run.rss_slow_kib} KiB, peak {slow_run.hwm_after_kib} KiB"
        f" (peak growth {growth / 2**20:.1f} MiB for {TOKENS * TOKEN_BYTES / 1e6:.0f} MB of text)"
    )
    assert growth < RSS_GROWTH_LIMIT, (
        f"relay peak RSS grew {growth / 2**20:.0f} MiB for one stream: memory follows the"
        " answer size instead of the queue bound"
    )


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
