"""In-flight stream registry: lookup and cancel by id, idempotency keys, retention for replay.

Finished streams stay for ``replay_ttl`` so a client can resume them or a duplicate POST
with the same ``Idempotency-Key`` can replay them; the oldest are evicted first when the
retained replay bytes exceed ``replay_total_bytes``. Sweeping is lazy (on every add), so the
registry needs no background task.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

import structlog

from service.relay import RelayStream

__all__ = ["StreamRegistry", "key_id"]

log = structlog.get_logger("relay")


def key_id(api_key: str | None) -> str | None:
    """A short, non-reversible id of a client key (scopes idempotency keys and cancels)."""
    if api_key is None:
        return None
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class StreamRegistry:
    """Streams by id, and idempotency keys scoped by client key."""

    def __init__(
        self,
        *,
        ttl: float,
        max_retained_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.ttl = ttl
        self.max_retained_bytes = max_retained_bytes
        self._clock = clock
        self._streams: OrderedDict[str, RelayStream] = OrderedDict()
        self._by_key: dict[tuple[str | None, str], str] = {}
        self._shutting_down = False

    def __iter__(self) -> Iterator[RelayStream]:
        return iter(list(self._streams.values()))

    @property
    def in_flight(self) -> int:
        """Streams still generating."""
        return sum(1 for s in self._streams.values() if not s.done.is_set())

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`begin_shutdown` ran; new streams are refused."""
        return self._shutting_down

    def add(self, stream: RelayStream) -> None:
        """Register a new stream (and its idempotency key)."""
        self.sweep()
        self._streams[stream.id] = stream
        key = stream.request.idempotency_key
        if key is not None:
            self._by_key[(stream.client_key_id, key)] = stream.id

    def get(self, stream_id: str) -> RelayStream | None:
        """The stream, in flight or retained."""
        return self._streams.get(stream_id)

    def by_idempotency_key(self, client_key_id: str | None, key: str) -> RelayStream | None:
        """The stream a previous POST with this key started, if still retained."""
        stream_id = self._by_key.get((client_key_id, key))
        return None if stream_id is None else self._streams.get(stream_id)

    def cancel(self, stream_id: str, reason: str = "cancelled") -> bool:
        """Stop a stream; False when it is unknown."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        stream.stop(reason)
        return True

    def begin_shutdown(self) -> int:
        """Stop every in-flight stream with reason ``shutdown``; returns how many."""
        self._shutting_down = True
        stopped = 0
        for stream in self:
            if not stream.done.is_set():
                stream.stop("shutdown")
                stopped += 1
        if stopped:
            log.info("relay.shutdown", streams_stopped=stopped)
        return stopped

    def sweep(self) -> None:
        """Forget finished streams past their TTL, then the oldest beyond the byte budget."""
        now = self._clock()
        retained = 0
        for stream in list(self._streams.values()):
            finished = stream.finished_at
            if finished is not None and now - finished > self.ttl:
                self._forget(stream)
            elif stream.buffer is not None:
                retained += stream.buffer.held_bytes
        for stream in list(self._streams.values()):
            if retained <= self.max_retained_bytes:
                break
            if stream.finished_at is not None and stream.buffer is not None:
                retained -= stream.buffer.held_bytes
                self._forget(stream)

    def _forget(self, stream: RelayStream) -> None:
        self._streams.pop(stream.id, None)
        key = stream.request.idempotency_key
        if key is not None and self._by_key.get((stream.client_key_id, key)) == stream.id:
            del self._by_key[(stream.client_key_id, key)]
