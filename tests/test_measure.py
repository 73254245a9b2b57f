"""Timing definitions shared by relay, client and benchmarks."""

from __future__ import annotations

from service.measure import StreamTimings, percentile


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
