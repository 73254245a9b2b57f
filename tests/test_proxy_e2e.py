"""The relay behind the real nginx: buffering, idle timeouts and stop paths end to end.

Mock provider and relay run as real uvicorn servers in threads of this process (so the
relay's log lines can be captured); nginx is the real binary with the project's configs.
Timing claims are orderings and ratios with wide margins.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from structlog.testing import capture_logs

from service.mock import MockSettings
from service.probe import CheckOptions, run_check
from tests.support.ledger import aborted_line, assert_aborted_and_frozen, wait_for_end
from tests.support.nginx import start_nginx
from tests.support.stack import Stack, relay_stack

pytestmark = pytest.mark.slow

LONG_TEXT = {
    "model": "mock-text",
    "max_tokens": 5000,
    "stream": True,
    "messages": [{"role": "user", "content": "a long answer please"}],
}
QUICK_MOCK = MockSettings(ttft_ms=50, tpot_ms=5)


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _check(url: str) -> tuple[int, dict[str, Any]]:
    """``relay check --json URL``: exit status and the parsed report."""
    out = io.StringIO()
    code = run_check(CheckOptions(url=url, as_json=True), out=out)
    return code, json.loads(out.getvalue())


# --- (a) buffering reproduced and cured -----------------------------------------------


def test_streaming_conf_streams_where_buffering_conf_delivers_one_burst(tmp_path: Path) -> None:
    with (
        relay_stack({"accel_buffering_header": False}) as stack,
        start_nginx("streaming", _port(stack.relay_url), tmp_path=tmp_path) as streaming,
        start_nginx("buffering", _port(stack.relay_url), tmp_path=tmp_path) as buffering,
    ):
        streamed_code, streamed = _check(streaming.url)
        buffered_code, buffered = _check(buffering.url)

    assert (streamed_code, streamed["verdict"]) == (0, "streaming"), streamed
    arrivals = streamed["probe"]["arrival_offsets_s"]
    assert len(arrivals) == 40
    assert arrivals[0] < 0.5 * arrivals[-1], "through streaming.conf the first token comes early"

    assert (buffered_code, buffered["verdict"]) == (1, "buffered"), buffered
    sends = buffered["probe"]["send_offsets_s"]
    arrivals = buffered["probe"]["arrival_offsets_s"]
    assert len(arrivals) == 40
    # The relay's clock starts after the client's, so this ordering needs no margin: the
    # first token reached the client only after the relay had sent the last one.
    assert arrivals[0] > sends[-1]
    assert arrivals[-1] - arrivals[0] < 0.1 * (sends[-1] - sends[0]), "one burst at the end"
    # The cause shows in the answer: nginx compressed the stream (gzip_types lists it).
    assert buffered["probe"]["content_encoding"] == "gzip"


def test_relay_header_makes_buffering_conf_stream(tmp_path: Path) -> None:
    with (
        relay_stack() as stack,
        start_nginx("buffering", _port(stack.relay_url), tmp_path=tmp_path) as buffering,
    ):
        code, report = _check(buffering.url)
    assert (code, report["verdict"]) == (0, "streaming"), report
    arrivals = report["probe"]["arrival_offsets_s"]
    assert arrivals[0] < 0.5 * arrivals[-1]


# --- (b) idle timeout: heartbeats keep a silent stream alive --------------------------

SLOW_FIRST_TOKEN = {**LONG_TEXT, "max_tokens": 5, "mock": {"ttft_ms": 5000, "tpot_ms": 10}}
READ_TIMEOUT = "proxy_read_timeout 2s;"


@pytest.fixture
def idle_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with relay_stack(request.param, QUICK_MOCK) as stack:
        yield stack


def _read_until_cut(url: str) -> tuple[int, bytes, bool, float]:
    """Status, body, whether the body ended cleanly, and when it ended (s)."""
    body = b""
    start = time.perf_counter()
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url, json=SLOW_FIRST_TOKEN) as resp,
    ):
        try:
            for chunk in resp.iter_raw():
                body += chunk
            clean = True
        except httpx.RemoteProtocolError:
            clean = False  # nginx closed the connection mid-body
        return resp.status_code, body, clean, time.perf_counter() - start


@pytest.mark.parametrize(
    "idle_stack", [{"heartbeat_interval": 1.0, "progress_interval": 3600.0}], indirect=True
)
def test_heartbeats_keep_a_silent_stream_alive_past_proxy_read_timeout(
    idle_stack: Stack, tmp_path: Path
) -> None:
    port = _port(idle_stack.relay_url)
    with start_nginx("streaming", port, tmp_path=tmp_path, extra_directives=READ_TIMEOUT) as ngx:
        status, body, clean, elapsed = _read_until_cut(f"{ngx.url}/v1/messages")
        error_log = ngx.error_log.read_text()
    assert status == 200
    assert clean, body[-300:]
    assert b"event: message_stop" in body
    assert body.count(b"\n: ping\n") >= 2, "comment heartbeats filled the silence"
    assert elapsed > 4, "the first token came after the 5 s wait, past the 2 s read timeout"
    assert "timed out" not in error_log


@pytest.mark.parametrize(
    "idle_stack", [{"heartbeat_interval": 3600.0, "progress_interval": 3600.0}], indirect=True
)
def test_without_heartbeats_nginx_cuts_the_silent_stream(idle_stack: Stack, tmp_path: Path) -> None:
    port = _port(idle_stack.relay_url)
    with (
        capture_logs() as logs,
        start_nginx("streaming", port, tmp_path=tmp_path, extra_directives=READ_TIMEOUT) as ngx,
    ):
        status, body, clean, elapsed = _read_until_cut(f"{ngx.url}/v1/messages")
        error_log = ngx.error_log.read_text()
        stream_id = idle_stack.ledger.records()[-1].relay_stream_id
        assert stream_id is not None
        record = wait_for_end(idle_stack.mock_url, stream_id)
    # Headers were already sent (the relay's opening frame), so nginx cannot answer 504:
    # it closes the connection mid-body. A 504 would be the same failure, earlier.
    assert status == 504 or not clean, (status, body[-300:])
    assert b"message_stop" not in body
    assert b"content_block_delta" not in body
    assert elapsed < 4.5, "cut before the first token (5 s) could arrive"
    assert "upstream timed out" in error_log
    # nginx's cut reached the provider too: the relay saw its client go and closed upstream.
    assert record["state"] == "aborted", record
    assert aborted_line(logs, stream_id, min_tokens=0)["reason"] == "client_disconnected"


# --- (c) stop paths through nginx -----------------------------------------------------


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    with relay_stack(None, QUICK_MOCK) as stack:
        port = _port(stack.relay_url)
        with start_nginx("streaming", port, tmp_path=tmp_path) as nginx:
            yield stack, nginx.url


def _read_deltas(lines: Iterator[str], count: int) -> None:
    deltas = 0
    for line in lines:
        if line.startswith("event: content_block_delta"):
            deltas += 1
            if deltas >= count:
                return
    raise AssertionError(f"the stream ended after {deltas} deltas")


def test_client_disconnect_through_nginx_stops_the_upstream(
    proxied: tuple[Stack, str],
) -> None:
    stack, url = proxied
    with capture_logs() as logs:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", f"{url}/v1/messages", json=LONG_TEXT) as resp,
        ):
            stream_id = resp.headers["x-relay-stream-id"]
            _read_deltas(resp.iter_lines(), 20)
        # Leaving the block closes the client's connection to nginx mid-stream; nginx
        # closes its connection to the relay, the relay its connection to the provider.
        assert_aborted_and_frozen(stack.mock_url, stream_id)
        assert aborted_line(logs, stream_id)["reason"] == "client_disconnected"


def test_cancel_endpoint_through_nginx_stops_the_upstream(proxied: tuple[Stack, str]) -> None:
    stack, url = proxied
    with capture_logs() as logs:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", f"{url}/v1/messages", json=LONG_TEXT) as resp,
        ):
            stream_id = resp.headers["x-relay-stream-id"]
            lines = resp.iter_lines()
            _read_deltas(lines, 10)
            cancel = client.post(f"{url}/v1/streams/{stream_id}/cancel")
            rest = list(lines)
        assert cancel.status_code == 200
        assert cancel.json()["status"] == "cancelled"
        errors = [json.loads(line[6:]) for line in rest if line.startswith('data: {"type":"error"')]
        assert errors, f"the client learns the stream was cancelled; got {rest[-4:]}"
        assert errors[0]["relay"]["reason"] == "cancelled"
        assert_aborted_and_frozen(stack.mock_url, stream_id)
        assert aborted_line(logs, stream_id)["reason"] == "cancelled"
