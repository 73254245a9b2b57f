"""Timing definitions shared by relay, client and benchmarks."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from service.measure import GapDistribution, StreamTimings, percentile


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ttft_tpot_itl_follow_the_design_definitions() -> None:
    clock = _Clock()
    timings = StreamTimings(clock=clock)
    clock.now = 100.5
    timings.mark_byte()
    clock.now = 101.0
    timings.mark_delta(is_text=True)
    for step in (101.1, 101.3, 101.4):
        clock.now = step
        timings.mark_delta(is_text=True)
    timings.set_output_tokens(4)
    clock.now = 102.0
    summary = timings.finish()
    assert summary.ttfb == 0.5
    assert summary.ttft == 1.0
    assert abs(summary.tpot - (1.4 - 1.0) / 3) < 1e-9  # type: ignore[operator]
    assert summary.itl_max is not None and abs(summary.itl_max - 0.2) < 1e-9
    assert summary.total == 2.0


def test_tpot_uses_reported_tokens_not_delta_count() -> None:
    clock = _Clock()
    timings = StreamTimings(clock=clock)
    clock.now = 101.0
    timings.mark_delta()
    clock.now = 102.0
    timings.mark_delta()
    timings.set_output_tokens(11)  # two deltas carried 11 tokens
    assert timings.tpot() == 0.1


def test_perceived_latency_counts_progress_before_tokens() -> None:
    clock = _Clock()
    timings = StreamTimings(clock=clock)
    clock.now = 100.2
    timings.mark_progress()
    clock.now = 105.0
    timings.mark_delta()
    summary = timings.summary()
    assert summary.perceived_latency is not None and abs(summary.perceived_latency - 0.2) < 1e-9
    assert summary.ttft == 5.0


def test_nearest_rank_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99


@given(
    st.lists(st.floats(min_value=1e-6, max_value=60.0, allow_nan=False), min_size=1, max_size=400),
    st.sampled_from([1.0, 25.0, 50.0, 90.0, 99.0, 100.0]),
)
def test_gap_percentiles_are_exact_until_the_limit_then_within_one_percent(
    gaps: list[float], q: float
) -> None:
    exact = GapDistribution(exact_limit=1000)
    binned = GapDistribution(exact_limit=10)
    for gap in gaps:
        exact.add(gap)
        binned.add(gap)
    truth = percentile(gaps, q)
    assert truth is not None
    assert exact.exact
    assert exact.percentile(q) == truth
    assert binned.exact == (len(gaps) <= 10)
    estimate = binned.percentile(q)
    assert estimate is not None
    assert abs(estimate - truth) <= 0.0101 * truth
    assert binned.max() == max(gaps)
    assert len(binned) == len(gaps)


def test_a_long_stream_keeps_a_bounded_histogram_not_every_gap() -> None:
    gaps = GapDistribution()
    rng = random.Random(7)
    samples = [rng.lognormvariate(math.log(0.03), 1.0) for _ in range(200_000)]
    samples.append(0.0)  # two deltas in one read
    for gap in samples:
        gaps.add(gap)
    assert not gaps.exact
    # Every gap between 1 µs and an hour fits in this many 1%-wide buckets.
    assert gaps.bucket_count <= math.ceil(math.log(3600 / 1e-6) / math.log(1.01)) + 1
    for q in (50.0, 99.0):
        truth = percentile(samples, q)
        estimate = gaps.percentile(q)
        assert truth is not None and estimate is not None
        assert abs(estimate - truth) <= 0.0101 * truth
    assert gaps.percentile(0.0) == 0.0
    assert gaps.max() == max(samples)


def test_no_gap_has_no_percentile() -> None:
    gaps = GapDistribution()
    assert gaps.percentile(50) is None
    assert gaps.max() is None
