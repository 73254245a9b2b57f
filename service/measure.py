"""Stream timing measurements, one definition used by relay, client and benchmarks.

- TTFT: start -> first content delta of any block (also kept: first byte, first text delta,
  first progress signal).
- TPOT: (t_last_token - t_first_token) / (output_tokens - 1), output_tokens from the final
  cumulative ``usage.output_tokens``, falling back to the number of content deltas.
- ITL: gap between consecutive content deltas.
- Perceived latency: start -> first visible progress (progress event, thinking text or token).

All times are ``time.perf_counter()`` seconds; the clock is injectable for tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["StreamTimings", "TimingSummary", "percentile"]

Clock = Callable[[], float]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class TimingSummary:
    """Figures of one stream, in seconds (``None`` where the event never happened)."""

    ttft: float | None
    ttfb: float | None
    time_to_first_text: float | None
    perceived_latency: float | None
    tpot: float | None
    itl_p50: float | None
    itl_p99: float | None
    itl_max: float | None
    total: float
    content_deltas: int
    output_tokens: int | None

    def as_ms_dict(self) -> dict[str, float | int | None]:
        """Durations in milliseconds under ``<name>_ms`` keys (wire formats, reports)."""
        out: dict[str, float | int | None] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if name in ("content_deltas", "output_tokens"):
                out[name] = value
            else:
                out[f"{name}_ms"] = None if value is None else round(value * 1000, 3)
        return out

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain mapping, seconds rounded to microseconds, for JSON and log lines."""
        out: dict[str, float | int | None] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = round(value, 6) if isinstance(value, float) else value
        return out


@dataclass(slots=True)
class StreamTimings:
    """Accumulates the arrival times of one stream's signals."""

    clock: Clock = time.perf_counter
    start: float = field(default=0.0)
    first_byte: float | None = None
    first_token: float | None = None
    first_text: float | None = None
    first_progress: float | None = None
    last_token: float | None = None
    content_deltas: int = 0
    output_tokens: int | None = None
    end: float | None = None
    gaps: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.start:
            self.start = self.clock()

    def mark_byte(self) -> float:
        """Record that bytes arrived (first call only counts); returns the first byte's time."""
        if self.first_byte is None:
            self.first_byte = self.clock()
        return self.first_byte

    def mark_progress(self) -> None:
        """Record a visible progress signal (progress event, thinking text, ping of phase)."""
        if self.first_progress is None:
            self.first_progress = self.clock()

    def mark_delta(self, *, is_text: bool = False, visible: bool = True) -> float:
        """Record a content delta (any block); returns its timestamp."""
        now = self.clock()
        if self.first_token is None:
            self.first_token = now
        else:
            assert self.last_token is not None
            self.gaps.append(now - self.last_token)
        if is_text and self.first_text is None:
            self.first_text = now
        if visible and self.first_progress is None:
            self.first_progress = now
        self.last_token = now
        self.content_deltas += 1
        return now

    def set_output_tokens(self, tokens: int) -> None:
        """Cumulative ``usage.output_tokens`` (the latest value wins)."""
        self.output_tokens = tokens

    def finish(self) -> TimingSummary:
        """Close the measurement and compute the figures (idempotent)."""
        if self.end is None:
            self.end = self.clock()
        return self.summary()

    def summary(self) -> TimingSummary:
        """Figures so far."""
        end = self.end if self.end is not None else self.clock()
        return TimingSummary(
            ttft=self._since(self.first_token),
            ttfb=self._since(self.first_byte),
            time_to_first_text=self._since(self.first_text),
            perceived_latency=self._since(self.first_progress),
            tpot=self.tpot(),
            itl_p50=percentile(self.gaps, 50),
            itl_p99=percentile(self.gaps, 99),
            itl_max=max(self.gaps) if self.gaps else None,
            total=end - self.start,
            content_deltas=self.content_deltas,
            output_tokens=self.output_tokens,
        )

    def tpot(self) -> float | None:
        """Time per output token after the first, per the definition above."""
        if self.first_token is None or self.last_token is None:
            return None
        tokens = self.output_tokens if self.output_tokens else self.content_deltas
        if tokens < 2:
            return None
        return (self.last_token - self.first_token) / (tokens - 1)

    def _since(self, t: float | None) -> float | None:
        return None if t is None else t - self.start
