"""Stop means stop: every stop path closes the upstream and the provider's generation ends.

Each test proves it with the mock's generation ledger (state ``aborted``, token count frozen
over a later interval, well below what the request asked for) and the relay's
``upstream.aborted`` log line with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from service.app import create_app
from service.config import Settings
from service.mock.app import create_mock_app
from service.mock.settings import MockSettings
from service.processes import free_port
from tests.support.servers import run_uvicorn

LONG_TEXT = {
    "model": "mock-text",
    "max_tokens": 5000,
    "stream": True,
    "messages": [{"role": "user", "content": "a long answer please"}],
}


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with run_uvicorn(create_mock_app(MockSettings(ttft_ms=50, tpot_ms=5))) as url:
        yield url


def _relay(mock_url: str, **overrides: Any) -> Any:
    return run_uvicorn(create_app(Settings(upstream_url=mock_url, **overrides)))


def generation(mock_url: str, stream_id: str) -> dict[str, Any]:
    """The mock's ledger record of the generation behind a relay stream."""
    records = httpx.get(
        f"{mock_url}/mock/generations", params={"relay_stream_id": stream_id}
    ).json()
    assert len(records) == 1, f"expected one generation for {stream_id}, got {records}"
    record: dict[str, Any] = records[0]
    return record


def assert_aborted_and_frozen(mock_url: str, stream_id: str, asked: int = 5000) -> int:
    """Wait for ``aborted``, then check the token count does not move over 0.5 s."""
    deadline = time.monotonic() + 10
    record = generation(mock_url, stream_id)
    while record["state"] == "streaming" and time.monotonic() < deadline:
        time.sleep(0.05)
        record = generation(mock_url, stream_id)
    assert record["state"] == "aborted", record
    before = record["tokens"]
    time.sleep(0.5)
    after = generation(mock_url, stream_id)["tokens"]
    assert after == before, "the upstream kept generating after the abort"
    assert 0 < before < asked
    tokens: int = before
    return tokens


def aborted_line(logs: list[dict[str, Any]], stream_id: str) -> dict[str, Any]:
    lines = [
        e for e in logs if e.get("event") == "upstream.aborted" and e.get("stream_id") == stream_id
    ]
    assert len(lines) == 1, f"expected one upstream.aborted line, got {lines}"
    line = lines[0]
    assert line["tokens_at_abort"] > 0
    assert line["propagation_ms"] >= 0
    return line


def _read_deltas(lines: Iterator[str], count: int) -> list[str]:
    """Read raw SSE lines until ``count`` content deltas went by."""
    seen: list[str] = []
    deltas = 0
    for line in lines:
        seen.append(line)
        if line.startswith("event: content_block_delta"):
            deltas += 1
            if deltas >= count:
                break
    return seen


def test_client_disconnect_stops_the_upstream(mock_url: str) -> None:
    with capture_logs() as logs, _relay(mock_url) as relay:
        with (
            httpx.Client() as client,
            client.stream("POST", f"{relay}/v1/messages", json=LONG_TEXT) as resp,
        ):
            stream_id = resp.headers["x-relay-stream-id"]
            _read_deltas(resp.iter_lines(), 20)
        # Leaving the block closes the TCP connection mid-stream.
        assert_aborted_and_frozen(mock_url, stream_id)
        assert aborted_line(logs, stream_id)["reason"] == "client_disconnected"


def test_cancel_endpoint_stops_the_upstream_and_tells_the_client(mock_url: str) -> None:
    with capture_logs() as logs, _relay(mock_url) as relay:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", f"{relay}/v1/messages", json=LONG_TEXT) as resp,
        ):
            stream_id = resp.headers["x-relay-stream-id"]
            lines = resp.iter_lines()
            _read_deltas(lines, 10)
            cancel = client.post(f"{relay}/v1/streams/{stream_id}/cancel")
            rest = list(lines)
        assert cancel.status_code == 200
        assert cancel.json()["status"] == "cancelled"
        errors = [
            json.loads(line[6:])
            for line in rest
            if line.startswith("data: ") and '"type":"error"' in line.replace(" ", "")
        ]
        assert errors, "a client still connected learns the stream was cancelled"
        assert errors[0]["relay"]["reason"] == "cancelled"
        assert errors[0]["relay"]["partial"] is True
        assert_aborted_and_frozen(mock_url, stream_id)
        assert aborted_line(logs, stream_id)["reason"] == "cancelled"
        again = httpx.post(f"{relay}/v1/streams/{stream_id}/cancel")
        assert again.json()["status"] == "already_finished"
        assert httpx.post(f"{relay}/v1/streams/rs_unknown/cancel").status_code == 404


def test_cancel_requires_the_owners_key(mock_url: str) -> None:
    keys = frozenset({"key-a", "key-b"})
    with (
        _relay(mock_url, api_keys=keys) as relay,
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", f"{relay}/v1/messages", json=LONG_TEXT, headers={"x-api-key": "key-a"}
        ) as resp,
    ):
        stream_id = resp.headers["x-relay-stream-id"]
        _read_deltas(resp.iter_lines(), 3)
        anonymous = client.post(f"{relay}/v1/streams/{stream_id}/cancel")
        other = client.post(
            f"{relay}/v1/streams/{stream_id}/cancel", headers={"x-api-key": "key-b"}
        )
        owner = client.post(
            f"{relay}/v1/streams/{stream_id}/cancel",
            headers={"authorization": "Bearer key-a"},
        )
    assert anonymous.status_code == 401
    assert other.status_code == 404, "another tenant cannot even see the stream"
    assert owner.status_code == 200


def test_deadline_stops_the_upstream(mock_url: str) -> None:
    with capture_logs() as logs, _relay(mock_url, stream_deadline=1.0) as relay:
        response = httpx.post(f"{relay}/v1/messages", json=LONG_TEXT, timeout=10)
        stream_id = response.headers["x-relay-stream-id"]
        body = response.text
        assert '"reason":"deadline"' in body
        assert_aborted_and_frozen(mock_url, stream_id)
        assert aborted_line(logs, stream_id)["reason"] == "deadline"


def test_slow_client_is_cut_and_the_upstream_stops(mock_url: str) -> None:
    """A client that stops reading: the queue fills, the reader pauses, and after
    ``client_stall_timeout`` the stream ends with reason slow_client."""
    big = {
        **LONG_TEXT,
        "mock": {"scenario": "large", "tokens": 120000, "token_bytes": 512, "tpot_ms": 0},
    }
    with (
        capture_logs() as logs,
        _relay(mock_url, max_queued_bytes=256 * 1024, client_stall_timeout=1.0) as relay,
    ):
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{relay}/v1/messages", json=big) as resp,
        ):
            stream_id = resp.headers["x-relay-stream-id"]
            chunks = resp.iter_raw(4096)  # keep a reference: a collected iterator closes
            next(chunks)
            time.sleep(4)  # stop reading: kernel buffers fill, then the relay's queue
        asked = 120000  # 61 MB: far beyond what loopback socket buffers can hold
        tokens = assert_aborted_and_frozen(mock_url, stream_id, asked=asked)
        line = aborted_line(logs, stream_id)
        assert line["reason"] == "slow_client"
        assert tokens < asked / 3, "the provider must not run ahead of a stalled client"


def test_upstream_read_stall_ends_with_a_retryable_partial_error(mock_url: str) -> None:
    stall = {**LONG_TEXT, "mock": {"scenario": "stall", "fail_after": 5, "stall_ms": 60000}}
    with _relay(mock_url, upstream_read_timeout=0.5) as relay:
        response = httpx.post(f"{relay}/v1/messages", json=stall, timeout=30)
        stream_id = response.headers["x-relay-stream-id"]
        body = response.text
    error = next(
        json.loads(line[6:])
        for line in body.splitlines()
        if line.startswith("data: ") and '"relay"' in line
    )
    assert error["relay"] == {"retryable": True, "partial": True, "reason": "upstream_stall"}
    record = generation(mock_url, stream_id)
    deadline = time.monotonic() + 5
    while record["state"] == "streaming" and time.monotonic() < deadline:
        time.sleep(0.05)
        record = generation(mock_url, stream_id)
    assert record["state"] == "aborted"


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_health(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never became healthy")


@pytest.mark.slow
def test_graceful_shutdown_sends_shutdown_error_then_closes_the_upstream(mock_url: str) -> None:
    port = free_port()
    relay = f"http://127.0.0.1:{port}"
    proc = _spawn(
        ["serve", "--port", str(port), "--upstream", mock_url], {"RELAY_LOG_FORMAT": "json"}
    )
    try:
        _wait_health(relay)
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{relay}/v1/messages", json=LONG_TEXT) as resp,
        ):
            stream_id = resp.headers["x-relay-stream-id"]
            lines = resp.iter_lines()
            deltas = 0
            for line in lines:
                deltas += line.startswith("event: content_block_delta")
                if deltas >= 10:
                    break
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    errors = [
        json.loads(line[6:]) for line in rest if line.startswith("data: ") and '"relay"' in line
    ]
    assert errors, f"no error event after SIGTERM; got {rest[-5:]}"
    assert errors[0]["relay"]["reason"] == "shutdown"
    assert errors[0]["relay"]["retryable"] is True
    assert_aborted_and_frozen(mock_url, stream_id)
    aborted = [
        json.loads(line)
        for line in output.splitlines()
        if "upstream.aborted" in line and line.startswith("{")
    ]
    assert [a["reason"] for a in aborted] == ["shutdown"], output[-2000:]


@pytest.mark.slow
def test_ctrl_c_in_relay_chat_stops_the_upstream(mock_url: str) -> None:
    with capture_logs() as logs, _relay(mock_url) as relay:
        proc = _spawn(["chat", "--url", relay, "--max-tokens", "5000", "tell me"], {})
        try:
            assert proc.stdout is not None
            time.sleep(1.5)  # let it stream a while
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, output
        records = httpx.get(f"{mock_url}/mock/generations").json()
        stream_id = records[-1]["relay_stream_id"]
        assert_aborted_and_frozen(mock_url, stream_id)
        # The CLI sends an Idempotency-Key (resumable stream), so the disconnect alone would
        # wait for resume_grace; Ctrl-C asks for an explicit cancel, which is immediate.
        assert aborted_line(logs, stream_id)["reason"] == "cancelled"


def test_resumable_stream_survives_a_disconnect_for_the_grace_then_stops(
    mock_url: str,
) -> None:
    with capture_logs() as logs, _relay(mock_url, resume_grace=1.0) as relay:
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "POST",
                f"{relay}/v1/messages",
                json=LONG_TEXT,
                headers={"idempotency-key": "grace-1"},
            ) as resp,
        ):
            stream_id = resp.headers["x-relay-stream-id"]
            _read_deltas(resp.iter_lines(), 5)
        time.sleep(0.3)
        assert generation(mock_url, stream_id)["state"] == "streaming", (
            "within the grace the generation waits for a resume"
        )
        assert_aborted_and_frozen(mock_url, stream_id)
        assert aborted_line(logs, stream_id)["reason"] == "client_disconnected"


def test_cancel_before_the_upstream_answered_closes_its_connection() -> None:
    """A provider that accepted the request but has not sent headers yet (it may already be
    generating): the cancel still closes the connection, and the abort is logged."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    closed = threading.Event()

    def silent_provider() -> None:
        conn, _ = listener.accept()
        with conn:
            while conn.recv(65536):  # read the request, never answer; b"" means closed
                pass
        closed.set()

    thread = threading.Thread(target=silent_provider, daemon=True)
    thread.start()
    upstream = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with capture_logs() as logs, _relay(upstream) as relay:
            with (
                httpx.Client(timeout=10) as client,
                client.stream("POST", f"{relay}/v1/messages", json=LONG_TEXT) as resp,
            ):
                stream_id = resp.headers["x-relay-stream-id"]
                chunks = resp.iter_raw()  # keep a reference: a collected iterator closes
                next(chunks)  # the opening frame, flushed before any upstream byte
                cancel = client.post(f"{relay}/v1/streams/{stream_id}/cancel")
            assert cancel.json()["outcome"] == "cancelled"
            assert closed.wait(5), "the provider's connection must be closed"
            lines = [e for e in logs if e.get("event") == "upstream.aborted"]
            assert [(e["reason"], e["tokens_at_abort"]) for e in lines] == [("cancelled", 0)]
    finally:
        listener.close()
        thread.join(5)
