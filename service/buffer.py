"""Per-stream frame buffer: the bounded queue between the upstream reader and the client
writers, and the replay buffer that resume and idempotent attach read from.

Frames get consecutive sequence numbers. Each attached writer has a cursor (the next
sequence number it will send). Bytes at or after the lowest cursor are *pending*: the reader
waits while they exceed ``max_pending_bytes``, so it stops reading the upstream socket and
TCP backpressure reaches the provider. Bytes before the lowest cursor were sent and are kept
only for replay, up to ``replay_max_bytes`` (oldest dropped first).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["FrameBuffer", "ReplayGoneError"]


class ReplayGoneError(LookupError):
    """The frames a cursor asks for were already dropped from the replay buffer."""


class FrameBuffer:
    """Frames of one stream, shared by one reader and any number of writers."""

    def __init__(
        self,
        *,
        max_pending_bytes: int,
        replay_max_bytes: int,
        on_pending_change: Callable[[int], None] | None = None,
    ) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.replay_max_bytes = replay_max_bytes
        self._on_pending_change = on_pending_change
        self._frames: deque[bytes] = deque()
        self._ends: deque[int] = deque()  # cumulative byte offset at the end of each frame
        self._first_seq = 0
        self._dropped_bytes = 0  # bytes of frames trimmed from the front
        self._appended_bytes = 0
        self.peak_pending_bytes = 0
        """Highest pending byte count seen (the queue's high-water mark)."""
        self._closed = False
        self._cursors: dict[int, int] = {}
        self._floor = 0  # lowest cursor; kept after the last writer left
        self._ids = itertools.count()
        # Made by the first waiter, set and dropped by the next change: no Event is built
        # for a frame nobody waits on (the reader rarely waits for drain).
        self._changed: anyio.Event | None = None
        self._drained: anyio.Event | None = None

    # -- reader side -------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """Sequence number the next appended frame gets."""
        return self._first_seq + len(self._frames)

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest frame still held."""
        return self._first_seq

    @property
    def pending_bytes(self) -> int:
        """Bytes appended but not yet taken by the slowest writer."""
        return self._appended_bytes - self._offset(self._floor)

    @property
    def held_bytes(self) -> int:
        """Bytes held in memory (pending and replay)."""
        return self._appended_bytes - self._dropped_bytes

    @property
    def closed(self) -> bool:
        """No more frames will be appended."""
        return self._closed

    def append(self, frame: bytes) -> int:
        """Add a frame; returns its sequence number. Never blocks: see :meth:`wait_writable`."""
        if self._closed:
            raise RuntimeError("append to a closed FrameBuffer")
        seq = self.next_seq
        self._frames.append(frame)
        self._appended_bytes += len(frame)
        self._ends.append(self._appended_bytes)
        if self._on_pending_change is not None:
            self._on_pending_change(len(frame))
        pending = self.pending_bytes
        if pending > self.peak_pending_bytes:
            self.peak_pending_bytes = pending
        self._trim()
        self._wake_writers()
        return seq

    def writable(self) -> bool:
        """True while pending bytes are within the bound."""
        return self.pending_bytes <= self.max_pending_bytes

    async def wait_writable(self) -> None:
        """Wait until the slowest writer brought pending bytes back within the bound."""
        while not self.writable():
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()

    def close(self) -> None:
        """No more frames; writers finish once they sent everything (idempotent)."""
        if not self._closed:
            self._closed = True
            self._wake_writers()

    def settle_accounting(self) -> None:
        """Report the pending bytes as gone from the queue (the stream ended) and stop
        reporting further changes; frames stay readable for replay."""
        if self._on_pending_change is not None:
            pending = self.pending_bytes
            if pending:
                self._on_pending_change(-pending)
            self._on_pending_change = None

    # -- writer side -------------------------------------------------------------------

    def attach(self, cursor: int) -> int:
        """Register a writer starting at ``cursor``; returns its handle.

        Raises :class:`ReplayGoneError` when frames from ``cursor`` on are no longer held.
        """
        if cursor < self._first_seq:
            raise ReplayGoneError(f"frames before {self._first_seq} were dropped")
        cursor = min(cursor, self.next_seq)
        handle = next(self._ids)
        self._cursors[handle] = cursor
        self._set_floor()
        return handle

    def detach(self, handle: int) -> None:
        """Unregister a writer. The floor stays where the slowest writer left it, so a
        detached stream keeps backpressure until a resume attaches again."""
        self._cursors.pop(handle, None)
        if self._cursors:
            self._set_floor()

    @property
    def writers(self) -> int:
        """Writers attached now."""
        return len(self._cursors)

    async def wait_frames(self, cursor: int) -> list[bytes]:
        """Frames from ``cursor`` on, waiting until there is at least one; ``[]`` once the
        buffer is closed and ``cursor`` reached its end."""
        while True:
            if cursor < self._first_seq:
                raise ReplayGoneError(f"frames before {self._first_seq} were dropped")
            start = cursor - self._first_seq
            if start < len(self._frames):
                return list(itertools.islice(self._frames, start, None))
            if self._closed:
                return []
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def advance(self, handle: int, cursor: int) -> None:
        """The writer ``handle`` sent every frame before ``cursor``."""
        if handle in self._cursors:
            self._cursors[handle] = cursor
            self._set_floor()

    # -- internals ---------------------------------------------------------------------

    def _offset(self, seq: int) -> int:
        """Byte offset where frame ``seq`` starts."""
        index = seq - self._first_seq
        if index <= 0:
            return self._dropped_bytes
        return self._ends[index - 1]

    def _set_floor(self) -> None:
        floor = min(self._cursors.values())
        if floor == self._floor:
            return
        before = self.pending_bytes
        self._floor = floor
        after = self.pending_bytes
        if self._on_pending_change is not None and after != before:
            self._on_pending_change(after - before)
        self._trim()
        if self._drained is not None and self.writable():
            self._drained.set()
            self._drained = None

    def _trim(self) -> None:
        # Only frames every writer already sent may go, oldest first.
        while (
            self._frames
            and self._first_seq < self._floor
            and self.held_bytes - self.pending_bytes > self.replay_max_bytes
        ):
            frame = self._frames.popleft()
            self._ends.popleft()
            self._dropped_bytes += len(frame)
            self._first_seq += 1

    def _wake_writers(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
