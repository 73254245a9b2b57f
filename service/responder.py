"""Writing one :class:`~service.relay.RelayStream` to one client connection (raw ASGI).

The responder sends the headers and an opening frame at once, then drains the stream's
frame buffer into ``send`` (uvicorn awaits socket drain, so a slow client slows this loop and,
through the bounded buffer, the upstream reader). A heartbeat goes out when nothing was
written for ``heartbeat_interval``. A disconnect, seen on ``receive``, detaches this writer;
the stream decides whether that stops the generation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import anyio
from litestar.types import Receive, Scope, Send

from service.buffer import ReplayGoneError
from service.relay import RelayStream
from service.sse import encode_comment, encode_event

__all__ = ["StreamResponder", "stream_headers"]

_TYPED_PING = encode_event('{"type": "ping"}', event="ping")
_COMMENT_PING = encode_comment("ping")


def stream_headers(
    stream: RelayStream, *, accel_buffering_header: bool
) -> list[tuple[bytes, bytes]]:
    """Response headers of an SSE stream (no Content-Length, no compression)."""
    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-relay-stream-id", stream.id.encode()),
    ]
    if accel_buffering_header:
        headers.append((b"x-accel-buffering", b"no"))
    traceparent = stream.observer.traceparent()
    if traceparent:
        headers.append((b"traceparent", traceparent.encode()))
    return headers


class _ClientStalledError(Exception):
    """The client did not take a write within ``client_stall_timeout``."""


class StreamResponder:
    """ASGI app: one client connection reading one stream from ``cursor`` on."""

    def __init__(
        self,
        stream: RelayStream,
        *,
        cursor: int = 0,
        owner: bool = False,
        extra_headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """``owner`` runs the generation itself (the POST that started it); attachers
        (resume, idempotent duplicates) only read."""
        self.stream = stream
        self.cursor = cursor
        self.owner = owner
        self.extra_headers = list(extra_headers)
        self.disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.stream.settings
        headers = stream_headers(
            self.stream, accel_buffering_header=settings.accel_buffering_header
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": headers + self.extra_headers,
            }
        )
        opening = f": relay stream {self.stream.id}\nretry: 1000\n\n".encode()
        await send({"type": "http.response.body", "body": opening, "more_body": True})
        async with anyio.create_task_group() as tg:
            if self.owner:
                tg.start_soon(self.stream.run)
            await self._serve(receive, send)
        if not self.disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _serve(self, receive: Receive, send: Send) -> None:
        buffer = self.stream.buffer
        assert buffer is not None
        try:
            handle = buffer.attach(self.cursor)
        except ReplayGoneError:
            return
        self.stream.writer_attached()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                try:
                    await self._write_loop(send, handle)
                except _ClientStalledError:
                    self.stream.stop("slow_client")
                except ReplayGoneError:
                    pass
                tg.cancel_scope.cancel()
        finally:
            buffer.detach(handle)
            self.stream.writer_detached()

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                scope.cancel()
                return

    async def _write_loop(self, send: Send, handle: int) -> None:
        buffer = self.stream.buffer
        assert buffer is not None
        interval = self.stream.settings.heartbeat_interval
        cursor = self.cursor
        last_write = time.perf_counter()
        while True:
            frames: list[bytes] | None = None
            with anyio.move_on_after(max(0.0, last_write + interval - time.perf_counter())):
                frames = await buffer.wait_frames(cursor)
            if frames is None:
                await self._heartbeat(send)
            elif not frames:
                return
            else:
                await self._write(send, b"".join(frames))
                cursor += len(frames)
                buffer.advance(handle, cursor)
            last_write = time.perf_counter()

    async def _heartbeat(self, send: Send) -> None:
        typed = self.stream.settings.typed_heartbeats and self.stream.allows_named_events
        await self._write(send, _TYPED_PING if typed else _COMMENT_PING)
        self.stream.observer.heartbeat("typed" if typed else "comment")

    async def _write(self, send: Send, data: bytes) -> None:
        with anyio.move_on_after(self.stream.settings.client_stall_timeout) as scope:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        if scope.cancelled_caught:
            raise _ClientStalledError
