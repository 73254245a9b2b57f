"""httpx-aiohttp's transport, fitted to the relay: the candidate for the relay's default.

:class:`httpx_aiohttp.AiohttpTransport` (PyPI ``httpx-aiohttp``) runs httpx requests on
aiohttp's C-accelerated HTTP client, behind the unchanged httpx API. Used as it comes, three
things differ from httpx's own transport in ways the relay notices; this subclass puts them
back:

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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

__all__ = ["RelayAiohttpTransport"]

_KEEPALIVE_SECONDS = 5.0  # httpx's default keep-alive expiry


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
