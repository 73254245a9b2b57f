"""``relay check``'s probe (service/probe.py) against real servers on loopback.

The relay and the mock are real uvicorn servers; a few tiny raw ASGI apps stand in for
endpoints that misbehave on purpose (a hop that delivers the answer at once, a cut stream).
The nginx paths are in tests/test_proxy_e2e.py.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Awaitable, Callable, MutableMapping
from itertools import pairwise
from typing import Any

import anyio
import pytest

from service.probe import (
    DEFAULT_MOCK_TIMING,
    EXIT_NOT_RELAY,
    EXIT_PROBE_FAILED,
    CheckOptions,
    ProbeError,
    probe,
    probe_body,
    register,
    run_check,
)
from service.processes import free_port
from tests.support.servers import run_uvicorn
from tests.support.stack import relay_stack

# 30 tokens 15 ms apart: about 0.45 s of sending, enough for a verdict, quick for a test.
QUICK = {"tpot_ms": 15, "ttft_ms": 100}

_Scope = MutableMapping[str, Any]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def _run(options: CheckOptions) -> tuple[int, str]:
    out = io.StringIO()
    return run_check(options, out=out), out.getvalue()


def _json(options: CheckOptions) -> tuple[int, dict[str, Any]]:
    code, text = _run(CheckOptions(**{**_fields(options), "as_json": True}))
    return code, json.loads(text)


def _fields(options: CheckOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__slots__}


# --- the real relay -------------------------------------------------------------------


def test_direct_relay_streams_and_exits_0() -> None:
    with relay_stack() as stack:
        options = CheckOptions(url=stack.relay_url, max_tokens=30, mock_options=QUICK)
        code, text = _run(options)
        json_code, report = _json(options)
    assert code == 0, text
    assert text.startswith("relay check: STREAMING")
    assert "probed http://127.0.0.1:" in text
    assert json_code == 0
    assert report["verdict"] == "streaming"
    assert report["error"] is None
    sends, arrivals = report["probe"]["send_offsets_s"], report["probe"]["arrival_offsets_s"]
    assert len(sends) == len(arrivals) == 30
    assert all(b >= a for a, b in pairwise(arrivals))
    # Each token arrived after it was sent (the relay's clock starts after the client's).
    assert all(a >= s for s, a in zip(sends, arrivals, strict=True))
    assert report["probe"]["stream_id"].startswith("rs_")


def test_api_key_is_sent_and_a_refusal_is_a_probe_failure() -> None:
    with relay_stack({"api_keys": frozenset({"key-a"})}) as stack:
        refused_code, refused = _run(CheckOptions(url=stack.relay_url, mock_options=QUICK))
        code, _ = _run(
            CheckOptions(url=stack.relay_url, api_key="key-a", max_tokens=30, mock_options=QUICK)
        )
    assert refused_code == EXIT_PROBE_FAILED
    assert "PROBE FAILED" in refused
    assert "HTTP 401" in refused
    assert "authentication_error" in refused
    assert code == 0


def test_stream_ending_in_an_error_is_a_probe_failure() -> None:
    failing = {**QUICK, "scenario": "error_mid_stream", "fail_after": 3}
    with relay_stack() as stack:
        code, report = _json(CheckOptions(url=stack.relay_url, mock_options=failing))
    assert code == EXIT_PROBE_FAILED
    assert report["error"]["kind"] == "stream_error"
    assert "overloaded_error" in report["error"]["message"]


def test_the_mock_itself_is_not_the_relay() -> None:
    with relay_stack() as stack:
        code, text = _run(CheckOptions(url=stack.mock_url, mock_options=QUICK))
        json_code, report = _json(CheckOptions(url=stack.mock_url, mock_options=QUICK))
    assert code == EXIT_NOT_RELAY == 3
    assert "INCONCLUSIVE" in text
    assert "not the relay" in text
    assert json_code == 3
    assert report["verdict"] == "inconclusive"
    assert report["error"]["kind"] == "not_relay"


def test_connection_refused_is_a_probe_failure() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, text = _run(CheckOptions(url=url, timeout=5))
    assert code == EXIT_PROBE_FAILED
    assert "cannot connect" in text
    with pytest.raises(ProbeError) as info:
        probe(CheckOptions(url=url, timeout=5))
    assert info.value.kind == "connect"


def test_a_url_without_scheme_is_a_usage_error() -> None:
    code, report = _json(CheckOptions(url="127.0.0.1:8000"))
    assert code == 2
    assert report["error"]["kind"] == "url"
    assert "http://" in report["error"]["message"]


# --- stand-ins for misbehaving hops ---------------------------------------------------

_SENDS_MS = [i * 20.0 for i in range(30)]  # what the "relay" claims: 30 events over 0.58 s


def _frames() -> bytes:
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\n'
    metrics = json.dumps({"type": "relay_metrics", "send_offsets_ms": _SENDS_MS}).encode()
    return delta * len(_SENDS_MS) + b"event: relay_metrics\ndata: " + metrics + b"\n\n"


async def _lifespan(scope: _Scope, receive: _Receive, send: _Send) -> bool:
    """Answer uvicorn's lifespan protocol; True when ``scope`` was a lifespan scope."""
    if scope["type"] != "lifespan":
        return False
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})
    return True


async def _buffering_hop(scope: _Scope, receive: _Receive, send: _Send) -> None:
    """Holds the whole answer for as long as it took to produce, then sends it at once."""
    if await _lifespan(scope, receive, send):
        return
    await receive()
    headers = [(b"content-type", b"text/event-stream"), (b"x-relay-stream-id", b"rs_fake")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await anyio.sleep(0.7)
    await send({"type": "http.response.body", "body": _frames(), "more_body": False})


async def _cutting_hop(scope: _Scope, receive: _Receive, send: _Send) -> None:
    """Starts a chunked stream and returns without finishing it: the server drops the line."""
    if await _lifespan(scope, receive, send):
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b": opening\n\n", "more_body": True})


def test_a_hop_that_delivers_everything_at_once_is_buffered() -> None:
    with run_uvicorn(_buffering_hop) as url:
        code, report = _json(CheckOptions(url=url))
    assert code == 1
    assert report["verdict"] == "buffered"
    assert report["report"]["largest_burst"] == 30
    assert report["report"]["likely_causes"], "a buffered verdict names settings to look at"


def test_a_stream_cut_mid_way_is_a_probe_failure() -> None:
    with run_uvicorn(_cutting_hop) as url:
        code, report = _json(CheckOptions(url=url, timeout=5))
    assert code == EXIT_PROBE_FAILED
    assert report["error"]["kind"] == "cut"
    assert "proxy_read_timeout" in report["error"]["message"]


# --- the request body -----------------------------------------------------------------


def test_mock_models_get_a_timing_spread_and_others_do_not() -> None:
    mock = probe_body(CheckOptions(url="http://x"))
    assert mock["model"] == "mock-text"
    assert mock["max_tokens"] == 40
    assert mock["stream"] is True
    assert mock["mock"] == dict(DEFAULT_MOCK_TIMING) == {"tpot_ms": 50, "ttft_ms": 300}
    real = probe_body(CheckOptions(url="http://x", model="claude-sonnet-4-5", max_tokens=64))
    assert "mock" not in real
    assert real["max_tokens"] == 64


def test_register_adds_relay_check(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="relay")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["check", "127.0.0.1:1", "--json", "--max-tokens", "12"])
    assert (args.url, args.max_tokens, args.model, args.timeout) == (
        "127.0.0.1:1",
        12,
        "mock-text",
        30.0,
    )
    assert args.func(args) == 2
    assert json.loads(capsys.readouterr().out)["error"]["kind"] == "url"
