"""The seam between the relay pump and telemetry.

The relay reports what happens to a stream through a :class:`StreamObserver`; tracing,
metrics and logs implement it. Every hook is synchronous and cheap: ``delta`` runs once per
content event on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from service.measure import TimingSummary

__all__ = ["NullObserver", "StreamInfo", "StreamObserver", "StreamObserverFactory", "StreamResult"]


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What is known when a stream starts."""

    stream_id: str
    model: str
    provider: str
    """``gen_ai.provider.name``: ``anthropic``, ``openai`` (or the mock, which speaks anthropic)."""
    streaming: bool
    """False for a non-streaming request served by accumulating the upstream stream."""
    resumable: bool


@dataclass(frozen=True, slots=True)
class StreamResult:
    """How a stream ended; reported exactly once."""

    outcome: str
    """``completed``, ``cancelled``, ``client_disconnected``, ``slow_client``, ``deadline``,
    ``upstream_error``, ``upstream_stall``, ``upstream_dropped``, ``shutdown``, ``rejected``."""
    timings: TimingSummary
    input_tokens: int | None
    output_tokens: int | None
    finish_reasons: tuple[str, ...]
    response_model: str | None
    response_id: str | None
    error_type: str | None
    bytes_sent: int
    events_sent: int


class StreamObserver(Protocol):
    """Receives the life of one stream. Implementations must not raise."""

    def started(self, info: StreamInfo) -> None: ...

    def traceparent(self) -> str | None:
        """W3C ``traceparent`` of the stream span, for the response header."""
        ...

    def activate(self) -> AbstractContextManager[None]:
        """Make the stream span current inside the calling task (the upstream reader enters it
        around the upstream request so the httpx span is the stream span's child). Never held
        across a ``yield``."""
        ...

    def retry(self, attempt: int, reason: str, delay: float) -> None: ...

    def first_byte(self, ttfb: float) -> None: ...

    def first_token(self, ttft: float) -> None: ...

    def upstream_first_token(self, seconds: float) -> None:
        """The relay as a client: final upstream attempt's request -> first content delta."""
        ...

    def delta(self, gap: float | None) -> None:
        """A content delta; ``gap`` is the ITL since the previous one (None for the first)."""
        ...

    def block_stopped(
        self, block_type: str, tool_name: str | None, input_bytes: int | None
    ) -> None: ...

    def progress(self, phase: str, elapsed: float) -> None: ...

    def heartbeat(self, kind: str) -> None:
        """``comment`` or ``typed``."""
        ...

    def queued_bytes(self, delta: int) -> None:
        """Bytes entered (+) or left (-) the reader->writer queue."""
        ...

    def cancelled(self, reason: str) -> None: ...

    def upstream_aborted(self, reason: str, tokens_at_abort: int, propagation: float) -> None: ...

    def error(self, error_type: str, message: str) -> None: ...

    def finished(self, result: StreamResult) -> None:
        """Called exactly once, whatever the outcome."""
        ...


class StreamObserverFactory(Protocol):
    """Makes one observer per stream."""

    def __call__(self) -> StreamObserver: ...


class NullObserver:
    """Observer that records nothing."""

    def started(self, info: StreamInfo) -> None:
        pass

    def traceparent(self) -> str | None:
        return None

    def activate(self) -> AbstractContextManager[None]:
        return _nothing()

    def retry(self, attempt: int, reason: str, delay: float) -> None:
        pass

    def first_byte(self, ttfb: float) -> None:
        pass

    def first_token(self, ttft: float) -> None:
        pass

    def upstream_first_token(self, seconds: float) -> None:
        pass

    def delta(self, gap: float | None) -> None:
        pass

    def block_stopped(
        self, block_type: str, tool_name: str | None, input_bytes: int | None
    ) -> None:
        pass

    def progress(self, phase: str, elapsed: float) -> None:
        pass

    def heartbeat(self, kind: str) -> None:
        pass

    def queued_bytes(self, delta: int) -> None:
        pass

    def cancelled(self, reason: str) -> None:
        pass

    def upstream_aborted(self, reason: str, tokens_at_abort: int, propagation: float) -> None:
        pass

    def error(self, error_type: str, message: str) -> None:
        pass

    def finished(self, result: StreamResult) -> None:
        pass


@contextmanager
def _nothing() -> Iterator[None]:
    yield
