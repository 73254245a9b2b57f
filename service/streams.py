"""In-flight stream registry: lookup and cancel by id, idempotency keys, retention for replay.

Finished streams stay for ``replay_ttl`` so a client can resume them or a duplicate POST
with the same ``Idempotency-Key`` can replay them; the oldest are evicted first when the
bytes their replay buffers hold exceed ``max_retained_bytes``. Streams are queued in the order
they finished, so expiry only ever looks at the front of that queue: sweeping costs
O(streams evicted), not O(streams retained). It is lazy (on every add), so the registry needs
no background task.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
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
        self._streams: dict[str, RelayStream] = {}
        self._by_key: dict[tuple[str | None, str], str] = {}
        self._finished: deque[tuple[RelayStream, float, int]] = deque()
        """Finished streams, oldest first: (stream, when it finished, bytes it held then)."""
        self._retained_bytes = 0
        self._shutting_down = False

    def __iter__(self) -> Iterator[RelayStream]:
        return iter(list(self._streams.values()))

    @property
    def in_flight(self) -> int:
        """Streams still generating."""
        return len(self._streams) - len(self._finished)

    @property
    def retained_bytes(self) -> int:
        """Bytes the finished streams' replay buffers held when they finished."""
        return self._retained_bytes

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
        stream.on_finish(self._finished_stream)

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
        expired_before = self._clock() - self.ttl
        while self._finished:
            stream, finished_at, held = self._finished[0]
            if finished_at >= expired_before and (self._retained_bytes <= self.max_retained_bytes):
                break
            self._finished.popleft()
            self._retained_bytes -= held
            self._forget(stream)

    def _finished_stream(self, stream: RelayStream) -> None:
        if stream.id not in self._streams:
            return
        held = stream.buffer.held_bytes if stream.buffer is not None else 0
        self._finished.append((stream, self._clock(), held))
        self._retained_bytes += held

    def _forget(self, stream: RelayStream) -> None:
        self._streams.pop(stream.id, None)
        key = stream.request.idempotency_key
        if key is not None and self._by_key.get((stream.client_key_id, key)) == stream.id:
            del self._by_key[(stream.client_key_id, key)]
