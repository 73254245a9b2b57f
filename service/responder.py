"""Writing one :class:`~service.relay.RelayStream` to one client connection (raw ASGI).

The responder sends the headers and an opening frame at once, then drains the stream's
frame buffer into ``send`` (uvicorn awaits socket drain, so a slow client slows this loop and,
through the bounded buffer, the upstream reader). A disconnect, seen on ``receive``, detaches
this writer; the stream decides whether that stops the generation.

Time is kept by one watchdog task per connection rather than a timeout around every wait and
every write (two anyio cancel scopes per frame were about a tenth of the relay's CPU): it
sends a heartbeat when nothing was written for ``heartbeat_interval`` and ends the stream
with ``slow_client`` when one write has not completed in ``client_stall_timeout``. Writes
never overlap: a heartbeat and the frame loop take turns.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import suppress

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


_WATCH_CHECKS = 4
"""Watchdog wake-ups at least per ``min(client_stall_timeout, heartbeat_interval)``: a stall
or a heartbeat is late by at most a quarter of that."""


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
        self._last_write = time.perf_counter()
        self._write_started: float | None = None  # set while a send is in progress
        self._write_done: anyio.Event | None = None  # made only when a send has to wait

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
        self._last_write = time.perf_counter()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                tg.start_soon(self._watch_time, send, tg.cancel_scope)
                with suppress(ReplayGoneError):
                    await self._write_loop(send, handle)
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

    async def _watch_time(self, send: Send, scope: anyio.CancelScope) -> None:
        settings = self.stream.settings
        stall = settings.client_stall_timeout
        interval = settings.heartbeat_interval
        # Never sleep longer than this: a write may start (or end) while the watchdog sleeps,
        # and its stall deadline or the next heartbeat must not wait for a long sleep's end.
        tick = min(stall, interval) / _WATCH_CHECKS
        while True:
            now = time.perf_counter()
            started = self._write_started
            if started is not None:
                if now - started >= stall:
                    self._stalled(scope)
                    return
                await anyio.sleep(min(started + stall - now, tick))
            elif now - self._last_write >= interval:
                if not await self._heartbeat(send):
                    self._stalled(scope)
                    return
            else:
                await anyio.sleep(min(self._last_write + interval - now, tick))

    def _stalled(self, scope: anyio.CancelScope) -> None:
        self.stream.stop("slow_client")
        scope.cancel()

    async def _write_loop(self, send: Send, handle: int) -> None:
        buffer = self.stream.buffer
        assert buffer is not None
        cursor = self.cursor
        while True:
            frames = await buffer.wait_frames(cursor)
            if not frames:
                return
            await self._write(send, b"".join(frames))
            cursor += len(frames)
            buffer.advance(handle, cursor)

    async def _heartbeat(self, send: Send) -> bool:
        """Send a ping; False when the client did not take it in ``client_stall_timeout``."""
        typed = self.stream.settings.typed_heartbeats and self.stream.allows_named_events
        # The watchdog cannot time its own write, so this one write carries a timeout.
        with anyio.move_on_after(self.stream.settings.client_stall_timeout) as timeout:
            await self._write(send, _TYPED_PING if typed else _COMMENT_PING)
        if timeout.cancelled_caught:
            return False
        self.stream.observer.heartbeat("typed" if typed else "comment")
        return True

    async def _write(self, send: Send, data: bytes) -> None:
        while self._write_started is not None:  # the other writer's send is in progress
            if self._write_done is None:
                self._write_done = anyio.Event()
            await self._write_done.wait()
        self._write_started = time.perf_counter()
        try:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            self._write_started = None
            self._last_write = time.perf_counter()
            if self._write_done is not None:
                self._write_done.set()
                self._write_done = None
