"""The generation ledger: what the mock provider generated, and how each generation ended.

The ledger is the proof behind the cancellation contract: when a client goes away, the
generation's ``tokens`` stop climbing and its state becomes ``aborted``. Tokens are counted when a
token's frame has been handed to the server (``send`` returned), so a stalled reader (TCP
backpressure) also stops the count.

It also remembers how many attempts it saw per request key, for the scenarios that fail the first
N attempts and then succeed.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import msgspec

__all__ = ["GenerationLedger", "GenerationRecord", "GenerationState"]

GenerationState = Literal["streaming", "completed", "aborted", "failed"]


class GenerationRecord(msgspec.Struct, kw_only=True):
    """One generation (one response message) and its life so far."""

    id: str
    """Message id, ``msg_mock_<counter>_<random>``; the same id is in ``message_start``."""
    scenario: str
    """Scenario that was played (after alias resolution; unknown names fall back to ``text``)."""
    model: str
    """Model name from the request."""
    stream: bool
    """Whether the client asked for an SSE stream."""
    state: GenerationState = "streaming"
    """``streaming`` until it ends as ``completed``, ``aborted`` (client left) or ``failed``."""
    tokens: int = 0
    """Output tokens generated so far (counted once written to the socket when streaming)."""
    started_at: float
    """Unix time the generation started."""
    ended_at: float | None = None
    """Unix time the generation ended; ``None`` while streaming."""
    relay_stream_id: str | None = None
    """The ``x-relay-stream-id`` request header, linking the generation to a relay stream."""
    idempotency_key: str | None = None
    """The ``idempotency-key`` request header."""
    abort_reason: str | None = None
    """Why it did not complete: ``client_disconnected``, ``cancelled``, ``dropped``, or the
    error type sent (``rate_limit_error``, ``overloaded_error``, ...)."""
    attempt: int = 1
    """How many times this request (same ``key`` option or identical body) was seen."""


class GenerationLedger:
    """In-memory, bounded record of generations: the last ``capacity`` are kept.

    Mutated from the mock's event loop only; the lock keeps readers on other threads (tests)
    from seeing the dictionaries mid-update. Readers get snapshots, the producer the live record.
    """

    def __init__(self, capacity: int = 1000, *, clock: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._records: OrderedDict[str, GenerationRecord] = OrderedDict()
        # Attempt counters outlive records a little longer: a retry storm may be long.
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self._counter = itertools.count(1)

    def start(
        self,
        *,
        scenario: str,
        model: str,
        stream: bool,
        relay_stream_id: str | None = None,
        idempotency_key: str | None = None,
        attempt: int = 1,
    ) -> GenerationRecord:
        """Record a new generation and return its live record (owned by its producer)."""
        record = GenerationRecord(
            id=f"msg_mock_{next(self._counter):06d}_{secrets.token_hex(4)}",
            scenario=scenario,
            model=model,
            stream=stream,
            started_at=self._clock(),
            relay_stream_id=relay_stream_id,
            idempotency_key=idempotency_key,
            attempt=attempt,
        )
        with self._lock:
            self._records[record.id] = record
            while len(self._records) > self._capacity:
                self._records.popitem(last=False)
        return record

    def count_token(self, record: GenerationRecord, n: int = 1) -> None:
        """Add ``n`` output tokens to a generation that is still streaming."""
        if record.state == "streaming":
            record.tokens += n

    def finish(
        self, record: GenerationRecord, state: GenerationState, reason: str | None = None
    ) -> bool:
        """End a generation. The first end wins; returns False if it had already ended."""
        if record.state != "streaming" or state == "streaming":
            return False
        record.state = state
        record.abort_reason = reason
        record.ended_at = self._clock()
        return True

    def get(self, generation_id: str) -> GenerationRecord | None:
        """A snapshot of one generation, or None if unknown (or already evicted)."""
        with self._lock:
            record = self._records.get(generation_id)
            return None if record is None else msgspec.structs.replace(record)

    def records(self, *, relay_stream_id: str | None = None) -> list[GenerationRecord]:
        """Snapshots of the kept generations, oldest first, optionally for one relay stream."""
        with self._lock:
            return [
                msgspec.structs.replace(r)
                for r in self._records.values()
                if relay_stream_id is None or r.relay_stream_id == relay_stream_id
            ]

    def count_attempt(self, key: str) -> int:
        """Count one more attempt of the request identified by ``key``; returns the count."""
        with self._lock:
            count = self._attempts.pop(key, 0) + 1
            self._attempts[key] = count
            while len(self._attempts) > self._capacity * 10:
                self._attempts.popitem(last=False)
            return count

    def reset(self) -> None:
        """Forget every generation and attempt counter (ids keep increasing)."""
        with self._lock:
            self._records.clear()
            self._attempts.clear()
