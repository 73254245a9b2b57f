"""Stream timing measurements, one definition used by relay, client and benchmarks.

- TTFT: start -> first content delta of any block (also kept: first byte, first text delta,
  first progress signal).
- TPOT: (t_last_token - t_first_token) / (output_tokens - 1), output_tokens from the final
  cumulative ``usage.output_tokens``, falling back to the number of content deltas.
- ITL: gap between consecutive content deltas. Its percentiles are exact for the first
  ``GapDistribution.exact_limit`` gaps and within 1% after that: a long answer is summarised
  in a bounded histogram instead of a list that grows with every token.
- Perceived latency: start -> first visible progress (progress event, thinking text or token).

All times are ``time.perf_counter()`` seconds; the clock is injectable for tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["GapDistribution", "StreamTimings", "TimingSummary", "percentile"]

Clock = Callable[[], float]

_EXACT_GAPS: Final = 4096
_BUCKET_RATIO: Final = 1.01  # histogram buckets 1% wide: a percentile is off by under 1%
_LOG_RATIO: Final = math.log(_BUCKET_RATIO)
_ZERO_BUCKET: Final = -(2**31)  # below every positive gap's bucket


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class GapDistribution:
    """Inter-token gaps in bounded memory, for their nearest-rank percentiles and maximum.

    The first ``exact_limit`` gaps are kept as they are (exact percentiles, which covers most
    answers). Past that they move into a histogram of buckets 1% wide, keyed by the bucket's
    index: gaps between 1 µs and an hour fit in about 2,200 buckets, however long the
    stream. A percentile is then the geometric middle of its bucket, clamped to the observed
    minimum and maximum.
    """

    __slots__ = ("_buckets", "_count", "_exact", "_max", "_min", "exact_limit")

    def __init__(self, exact_limit: int = _EXACT_GAPS) -> None:
        self.exact_limit = exact_limit
        self._exact: list[float] | None = []
        self._buckets: dict[int, int] = {}
        self._count = 0
        self._min = math.inf
        self._max = -math.inf

    def __len__(self) -> int:
        return self._count

    @property
    def exact(self) -> bool:
        """True while every gap is still kept (percentiles are exact)."""
        return self._exact is not None

    @property
    def bucket_count(self) -> int:
        """Histogram buckets in use (0 while exact)."""
        return len(self._buckets)

    def add(self, gap: float) -> None:
        """Record one gap in seconds."""
        self._count += 1
        self._min = min(self._min, gap)
        self._max = max(self._max, gap)
        if self._exact is not None:
            self._exact.append(gap)
            if len(self._exact) > self.exact_limit:
                for kept in self._exact:
                    self._count_in_bucket(kept)
                self._exact = None
            return
        self._count_in_bucket(gap)

    def max(self) -> float | None:
        """The largest gap (always exact)."""
        return self._max if self._count else None

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (``q`` in 0..100); ``None`` when there is no gap."""
        if self._exact is not None:
            return percentile(self._exact, q)
        rank = max(1, math.ceil(q / 100 * self._count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                return min(self._max, max(self._min, _bucket_middle(index)))
        return self._max  # pragma: no cover - the counts add up to _count

    def _count_in_bucket(self, gap: float) -> None:
        index = _bucket_index(gap)
        self._buckets[index] = self._buckets.get(index, 0) + 1


def _bucket_index(gap: float) -> int:
    if gap <= 0.0:
        return _ZERO_BUCKET
    return math.floor(math.log(gap) / _LOG_RATIO)


def _bucket_middle(index: int) -> float:
    if index == _ZERO_BUCKET:
        return 0.0
    return math.exp((index + 0.5) * _LOG_RATIO)


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
    gaps: GapDistribution = field(default_factory=GapDistribution)

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
            self.gaps.add(now - self.last_token)
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
            itl_p50=self.gaps.percentile(50),
            itl_p99=self.gaps.percentile(99),
            itl_max=self.gaps.max(),
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
