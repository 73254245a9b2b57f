"""The upstream transport: httpx over aiohttp by default, fitted to httpcore's semantics.

Real sockets throughout: the fast mock for the transport alone, the mock provider behind a
real relay for the choice the app makes. Cancellation, timeouts and errors of both
transports are checked in ``tests/test_bench_transports.py`` (``relay bench transports``).
"""

from __future__ import annotations

import httpx
import pytest

from service.app import create_app
from service.bench.fastmock import FastMockServer
from service.config import Settings
from service.mock.app import create_mock_app
from service.mock.settings import MockSettings
from service.upstream.transport import RelayAiohttpTransport, make_transport
from tests.support.servers import run_uvicorn

_BODY = {
    "model": "mock-text",
    "max_tokens": 4000,
    "stream": True,
    "messages": [{"role": "user", "content": "hello"}],
}


@pytest.mark.anyio
async def test_the_aiohttp_transport_has_no_connection_cap() -> None:
    transport = make_transport("aiohttp")
    assert isinstance(transport, RelayAiohttpTransport)
    assert make_transport("httpx") is None  # httpx.AsyncClient's own
    mock = FastMockServer()
    await mock.start()
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(f"http://127.0.0.1:{mock.port}/healthz")
            assert response.json() == {"status": "ok"}
            connector = transport.get_client().connector
            assert connector is not None
            assert connector.limit == 0
    finally:
        await mock.close()


@pytest.mark.anyio
async def test_a_refused_connection_is_a_connect_error_not_a_timeout() -> None:
    # httpx-aiohttp maps every aiohttp connection error to ConnectTimeout.
    async with httpx.AsyncClient(transport=make_transport("aiohttp")) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9/")


@pytest.mark.parametrize(
    ("setting", "transport_type"),
    [("aiohttp", RelayAiohttpTransport), ("httpx", httpx.AsyncHTTPTransport)],
)
def test_the_relay_streams_on_the_transport_its_settings_name(
    setting: str, transport_type: type[httpx.AsyncBaseTransport]
) -> None:
    with run_uvicorn(create_mock_app(MockSettings(ttft_ms=5, tpot_ms=1))) as mock_url:
        settings = Settings.from_environ(
            {"RELAY_UPSTREAM_URL": mock_url, "RELAY_UPSTREAM_TRANSPORT": setting}
        )
        app = create_app(settings)
        with run_uvicorn(app) as relay_url:
            with httpx.stream("POST", f"{relay_url}/v1/messages", json=_BODY) as response:
                body = response.read()
            client = app.state["relay"].client
            assert isinstance(client._transport, transport_type)
    assert response.status_code == 200
    assert b"event: message_stop" in body
    assert b'"outcome":"completed"' in body
