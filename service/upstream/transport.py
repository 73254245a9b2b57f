"""The upstream HTTP transport: httpx over aiohttp by default, httpx's own on request.

The relay talks to its provider through one :class:`httpx.AsyncClient`; only the transport
under it changes (``RELAY_UPSTREAM_TRANSPORT``). The default, ``aiohttp``, is
:class:`httpx_aiohttp.AiohttpTransport` (PyPI ``httpx-aiohttp``), which runs the same
requests on aiohttp's C-accelerated HTTP client: ``relay bench transports`` measured 2.6x
less client CPU per event than httpx's own transport (``httpx``, on httpcore), and the
benchmark sweep less relay CPU at every concurrency (``runbook/benchmarks.md``).

Used as it comes, three things differ from httpx's own transport in ways the relay notices;
:class:`RelayAiohttpTransport` puts them back:

- **Connection cap.** aiohttp's connector allows 100 connections unless told otherwise, so
  streams past the hundredth would queue for a connection; the relay's httpx client has
  ``max_connections=None``. The session here has ``limit=0`` (none).
- **Exception meaning.** httpx-aiohttp 0.2 maps every ``aiohttp.ClientConnectionError`` to
  :class:`httpx.ConnectTimeout`, so a refused connection would reach the relay as a timeout
  (reason ``upstream_timeout``, not ``upstream_connect``). Refusals become
  :class:`httpx.ConnectError` and a hang-up before the headers
  :class:`httpx.RemoteProtocolError`, as with httpcore.
- **Read granularity.** httpx-aiohttp reads the body in 16 KiB pieces, each holding many SSE
  frames, and the relay checks its byte-bounded queue once per piece: its queue then
  overshoots the bound by up to 16 KiB instead of one frame (``tests/test_backpressure.py``
  fails). The body is read one HTTP chunk at a time instead, as httpcore delivers it.

On the aiohttp transport httpx's ``Limits`` do not apply (the connector above has no cap and
httpx's keep-alive expiry) and the write timeout is not enforced; the connect, pool and read
timeouts are (the read timeout is aiohttp's ``sock_read``, which is what
``upstream_read_timeout`` means: the longest silence).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from service.config import UpstreamTransport

__all__ = ["TRANSPORTS", "RelayAiohttpTransport", "TransportName", "make_transport"]

TransportName = UpstreamTransport
TRANSPORTS: Final[tuple[TransportName, ...]] = ("aiohttp", "httpx")
"""``aiohttp``: :class:`RelayAiohttpTransport` (the default); ``httpx``: httpx's own."""

_KEEPALIVE_SECONDS: Final = 5.0  # httpx's default keep-alive expiry


def make_transport(name: TransportName) -> httpx.AsyncBaseTransport | None:
    """The transport for ``httpx.AsyncClient(transport=...)``; ``None`` is httpx's own."""
    return RelayAiohttpTransport() if name == "aiohttp" else None


class _PerChunkStream(httpx.AsyncByteStream):
    """The response body one HTTP chunk at a time (``StreamReader.iter_chunks``)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_aiohttp_exceptions():
            async for data, _ in self._inner._aiohttp_response.content.iter_chunks():
                if data:
                    yield data

    async def aclose(self) -> None:
        await self._inner.aclose()


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, keepalive_timeout=_KEEPALIVE_SECONDS
    )
    return aiohttp.ClientSession(connector=connector)


class RelayAiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport with httpcore's connection, error and chunk semantics."""

    def __init__(self) -> None:
        # The session is made on first use, inside the running event loop.
        super().__init__(client=_session)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; errors and the body stream as httpx's own transport has them."""
        try:
            response: httpx.Response = await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(exc), request=request) from cause
            if isinstance(cause, aiohttp.ServerDisconnectedError):
                raise httpx.RemoteProtocolError(str(exc), request=request) from cause
            raise
        response.stream = _PerChunkStream(response.stream)
        return response
