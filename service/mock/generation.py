"""Play one generation's script to one client, and keep the ledger honest about it.

The player is a plain ASGI app (returned by the route handler) rather than Litestar's ``Stream``:
``Stream`` cancels its sender task on ``http.disconnect`` but never closes the iterator, so a
generator suspended in ``yield`` would only be finalised later by the garbage collector. Here a
watcher task cancels the producing loop itself, which records ``aborted`` and re-raises.

Tokens are counted after ``send`` returns. uvicorn's ``send`` waits for the transport to drain
when its buffer is full, so a client that stops reading stops the count too (backpressure).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import msgspec
import structlog
from anyio import CancelScope
from litestar.types import Receive, Scope, Send

from service.mock.collect import MessageCollector
from service.mock.ledger import GenerationLedger, GenerationRecord
from service.mock.scenarios import Emit, Pause, Step

__all__ = ["ERROR_STATUS", "GenerationApp", "quiet_intentional_drops"]

# HTTP status of each Anthropic error type, for error responses before any byte was sent.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}

_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."
# Set in the request's task when the mock drops the connection on purpose; uvicorn logs its
# complaint from that same task right after the app returns, so the filter can see it.
_dropping: contextvars.ContextVar[bool] = contextvars.ContextVar("mock_dropping", default=False)


class _IntentionalDropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_dropping.get() and record.getMessage() == _UVICORN_INCOMPLETE)


@contextmanager
def quiet_intentional_drops() -> Iterator[None]:
    """Silence uvicorn's error line for connections the ``drop`` scenario closes on purpose."""
    logger = logging.getLogger("uvicorn.error")
    log_filter = _IntentionalDropFilter()
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


class _DisconnectWatcher:
    """Waits for ``http.disconnect`` and cancels the producer's scope when it comes."""

    def __init__(self) -> None:
        self.disconnected = False

    async def watch(self, receive: Receive, scope: CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                scope.cancel()
                return


class GenerationApp:
    """An ASGI app that plays ``script`` (SSE when ``stream``, else one Message JSON)."""

    def __init__(
        self,
        *,
        record: GenerationRecord,
        script: Iterator[Step],
        ledger: GenerationLedger,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._record = record
        self._script = script
        self._ledger = ledger
        self._headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = _DisconnectWatcher()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.watch, receive, tg.cancel_scope)
            try:
                if self._record.stream:
                    await self._stream(send, watcher)
                else:
                    await self._respond(send)
            except anyio.get_cancelled_exc_class():
                self._aborted("client_disconnected" if watcher.disconnected else "cancelled")
                raise
            finally:
                # A bug must not leave the record "streaming" forever (no-op once it ended).
                self._ledger.finish(self._record, "failed", "internal_error")
                tg.cancel_scope.cancel()

    async def _stream(self, send: Send, watcher: _DisconnectWatcher) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), *self._headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        ledger, record = self._ledger, self._record
        error_type: str | None = None
        for step in self._script:
            if type(step) is Emit:
                await send({"type": "http.response.body", "body": step.frame, "more_body": True})
                # After a disconnect uvicorn's send returns without writing: count nothing.
                if step.token and not watcher.disconnected:
                    ledger.count_token(record)
                elif step.payload is not None and step.payload["type"] == "error":
                    error_type = step.payload["error"]["type"]
            elif type(step) is Pause:
                await anyio.sleep(step.seconds)  # sleep(0) still lets the watcher run
            else:
                self._dropped()
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        ledger.finish(record, "failed" if error_type else "completed", error_type)

    async def _respond(self, send: Send) -> None:
        collector, dropped = await self._collect()
        if collector.error is not None:
            error_type = collector.error["error"]["type"]
            status, error = self._error_reply(collector.error)
            await self._send_json(send, status, error)
            self._ledger.finish(self._record, "failed", error_type)
            return
        # A drop promises the whole body, delivers half, then closes: a short read.
        await self._send_json(send, 200, self._message_reply(collector), complete=not dropped)
        if dropped:
            self._dropped()
            return
        self._ledger.finish(self._record, "completed")

    async def _collect(self) -> tuple[MessageCollector, bool]:
        """Play the script without streaming; returns the collected message and whether
        the script drops the connection."""
        collector = MessageCollector()
        for step in self._script:
            if type(step) is Emit:
                if step.payload is not None:
                    collector.add(step.payload)
                if step.token:
                    self._ledger.count_token(self._record)
            elif type(step) is Pause:
                await anyio.sleep(step.seconds)
            else:
                return collector, True
        return collector, False

    def _error_reply(self, error: dict[str, Any]) -> tuple[int, object]:
        """Status and body of a non-streaming error (Anthropic's shape here)."""
        return ERROR_STATUS.get(error["error"]["type"], 500), error

    def _message_reply(self, collector: MessageCollector) -> bytes:
        """Body of a non-streaming success (the Message JSON here)."""
        return msgspec.json.encode(collector.message())

    async def _send_json(
        self, send: Send, status: int, body: object, *, complete: bool = True
    ) -> None:
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            *self._headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        chunk = data if complete else data[: len(data) // 2]
        await send({"type": "http.response.body", "body": chunk, "more_body": not complete})

    def _dropped(self) -> None:
        # Returning without finishing the response makes the server close the connection.
        _dropping.set(True)
        record = self._record
        self._ledger.finish(record, "failed", "dropped")
        structlog.get_logger("service.mock").info(
            "mock.generation.dropped",
            generation_id=record.id,
            tokens=record.tokens,
            relay_stream_id=record.relay_stream_id,
        )

    def _aborted(self, reason: str) -> None:
        record = self._record
        if self._ledger.finish(record, "aborted", reason):
            # Looked up per call so log capture in tests works whatever structlog's caching.
            structlog.get_logger("service.mock").info(
                "mock.generation.aborted",
                generation_id=record.id,
                tokens=record.tokens,
                relay_stream_id=record.relay_stream_id,
                reason=reason,
            )
