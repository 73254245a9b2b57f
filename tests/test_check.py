"""service.check: verdicts on synthetic timelines, and invariants under hypothesis."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from service.check import (
    EXIT_CODES,
    Thresholds,
    Verdict,
    analyze,
    exit_code,
    render_text,
)

# 40 events, 25 ms apart: ~1 s of sending, like a short `relay check` probe.
SENDS = [i * 0.025 for i in range(40)]
LATENCY = 0.080  # request sent -> server's first byte, plus network delay


def _streamed(sends: list[float], latency: float = LATENCY) -> list[float]:
    return [s + latency for s in sends]


def _one_burst_at(t: float, n: int) -> list[float]:
    return [t + i * 0.0001 for i in range(n)]


def _bursts(sends: list[float], every: int, latency: float = LATENCY) -> list[float]:
    """A hop that passes data on every `every` events (small buffers)."""
    out = []
    for i in range(len(sends)):
        flush_index = min(len(sends) - 1, (i // every + 1) * every - 1)
        out.append(sends[flush_index] + latency)
    return out


# --- verdicts -------------------------------------------------------------------------


def test_streamed_timeline_is_streaming() -> None:
    report = analyze(SENDS, _streamed(SENDS), total=SENDS[-1] + LATENCY + 0.05)

    assert report.verdict is Verdict.STREAMING
    assert report.late_events == 0
    assert report.spread_ratio == pytest.approx(1.0)
    assert report.likely_causes == ()
    assert exit_code(report) == 0


def test_jittery_stream_is_still_streaming() -> None:
    jitter = [0.0, 0.012, 0.003, 0.018, 0.007] * 8  # under the 50 ms window
    arrivals = [a + j for a, j in zip(_streamed(SENDS), jitter, strict=True)]
    arrivals = [max(arrivals[: i + 1]) for i in range(len(arrivals))]  # keep order

    assert analyze(SENDS, arrivals, total=2.0).verdict is Verdict.STREAMING


def test_everything_at_the_end_is_buffered() -> None:
    end = SENDS[-1] + LATENCY
    report = analyze(SENDS, _one_burst_at(end, len(SENDS)), total=end + 0.01)

    assert report.verdict is Verdict.BUFFERED
    assert report.largest_burst == len(SENDS)
    assert report.first_event_lag == pytest.approx(SENDS[-1], abs=0.01)
    assert report.ttft_fraction is not None and report.ttft_fraction > 0.9
    assert report.spread_ratio is not None and report.spread_ratio < 0.05
    assert any("proxy_buffering" in cause for cause in report.likely_causes)
    assert any("gzip" in cause.lower() for cause in report.likely_causes)
    assert exit_code(report) == 1


def test_a_few_bursts_is_partially_buffered() -> None:
    report = analyze(SENDS, _bursts(SENDS, every=10), total=2.0)

    assert report.verdict is Verdict.PARTIALLY_BUFFERED
    assert report.largest_burst == 10
    assert report.late_fraction is not None and report.late_fraction > 0.5
    assert any("proxy_buffers" in cause for cause in report.likely_causes)
    assert exit_code(report) == 1


def test_too_few_events_is_inconclusive() -> None:
    report = analyze([0.0, 0.5, 1.0], [0.1, 0.6, 1.1], total=1.2)

    assert report.verdict is Verdict.INCONCLUSIVE
    assert "longer answer" in report.reason
    assert "Next step:" in render_text(report)
    assert exit_code(report) == EXIT_CODES[Verdict.INCONCLUSIVE] != 0


def test_events_sent_all_at_once_are_inconclusive() -> None:
    sends = [i * 0.001 for i in range(30)]  # the source itself sent one burst
    report = analyze(sends, _one_burst_at(0.5, 30), total=0.6)

    assert report.verdict is Verdict.INCONCLUSIVE


def test_no_events_is_inconclusive_without_figures() -> None:
    report = analyze([], [], total=0.3)

    assert report.verdict is Verdict.INCONCLUSIVE
    assert report.ttft is None
    assert report.largest_burst == 0
    assert "n/a" in render_text(report)


def test_a_brief_network_stall_does_not_make_a_stream_buffered() -> None:
    arrivals = _streamed(SENDS)
    arrivals[20] += 0.1  # a retransmission: event 20 and the few behind it bunch up
    arrivals = [max(arrivals[: i + 1]) for i in range(len(arrivals))]

    assert analyze(SENDS, arrivals, total=2.0).verdict is Verdict.STREAMING


def test_thresholds_are_adjustable() -> None:
    strict = Thresholds(min_events=50)

    assert analyze(SENDS, _streamed(SENDS), total=2.0, thresholds=strict).verdict is (
        Verdict.INCONCLUSIVE
    )


# --- input validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sends", "arrivals", "total", "message"),
    [
        ([0.0, 0.1], [0.1], 1.0, "send offsets but"),
        ([0.0, math.nan], [0.1, 0.2], 1.0, "finite"),
        ([0.0, 0.1], [0.1, 0.2], math.inf, "finite"),
        ([0.2, 0.1], [0.1, 0.2], 1.0, "send offsets must not decrease"),
        ([0.0, 0.1], [0.3, 0.2], 1.0, "arrival offsets must not decrease"),
        ([0.0, 0.1], [-0.1, 0.2], 1.0, ">= 0"),
        ([0.0, 0.1], [0.1, 0.2], -1.0, ">= 0"),
    ],
)
def test_invalid_input_is_rejected(
    sends: list[float], arrivals: list[float], total: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        analyze(sends, arrivals, total=total)


# --- rendering ------------------------------------------------------------------------


def test_render_text_names_verdict_figures_and_causes() -> None:
    end = SENDS[-1] + LATENCY
    text = render_text(analyze(SENDS, _one_burst_at(end, len(SENDS)), total=end + 0.01))

    assert text.startswith("relay check: BUFFERED\n")
    assert "40 of 40 content events arrived together" in text
    assert re.search(r"largest burst +40 events within \d+ ms \(100%\)", text)
    assert "- nginx: proxy_buffering on" in text
    assert "runbook/streaming-triage.md" in text


def test_render_text_for_a_stream_has_no_causes() -> None:
    text = render_text(analyze(SENDS, _streamed(SENDS), total=1.2))

    assert text.startswith("relay check: STREAMING\n")
    assert "Likely causes" not in text
    assert "runbook" not in text


# --- invariants -----------------------------------------------------------------------

_gaps = st.lists(st.floats(min_value=0.005, max_value=0.2), min_size=5, max_size=60)
_jitter = st.floats(min_value=0.0, max_value=0.010)
_delay = st.floats(min_value=0.0, max_value=30.0)


def _cumulative(gaps: list[float]) -> list[float]:
    out, t = [], 0.0
    for gap in gaps:
        out.append(t)
        t += gap
    return out


@st.composite
def streamed_timelines(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    """Sends >= 0.25 s apart end to end; arrivals = send + latency + jitter under 10 ms."""
    sends = _cumulative(draw(_gaps))
    assume(sends[-1] - sends[0] >= 0.25)
    latency = draw(st.floats(min_value=0.0, max_value=2.0))
    jitters = draw(st.lists(_jitter, min_size=len(sends), max_size=len(sends)))
    arrivals = [s + latency + j for s, j in zip(sends, jitters, strict=True)]
    arrivals = [max(arrivals[: i + 1]) for i in range(len(arrivals))]  # TCP keeps order
    return sends, arrivals


@given(streamed_timelines(), _delay)
def test_constant_delay_does_not_change_a_streaming_verdict(
    timeline: tuple[list[float], list[float]], delay: float
) -> None:
    sends, arrivals = timeline
    before = analyze(sends, arrivals, total=arrivals[-1] + 0.01)
    after = analyze(sends, [a + delay for a in arrivals], total=arrivals[-1] + delay + 0.01)

    assert before.verdict is Verdict.STREAMING
    assert after.verdict is Verdict.STREAMING
    assert after.late_events == before.late_events


@given(streamed_timelines(), st.floats(min_value=-5.0, max_value=5.0))
def test_server_clock_offset_cancels_out(
    timeline: tuple[list[float], list[float]], offset: float
) -> None:
    sends, arrivals = timeline
    base = analyze(sends, arrivals, total=arrivals[-1])
    shifted = analyze([s + offset for s in sends], arrivals, total=arrivals[-1])

    assert shifted.verdict is base.verdict
    assert shifted.late_events == base.late_events
    assert shifted.largest_burst == base.largest_burst


@given(_gaps, st.floats(min_value=0.0, max_value=5.0))
def test_all_events_at_once_after_the_last_send_is_buffered(
    gaps: list[float], extra: float
) -> None:
    sends = _cumulative(gaps)
    assume(sends[-1] - sends[0] >= 0.25)
    end = sends[-1] + extra
    report = analyze(sends, [end] * len(sends), total=end)

    assert report.verdict is Verdict.BUFFERED
    assert report.largest_burst == len(sends)


@given(
    st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=0, max_size=40),
    st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=0, max_size=40),
)
def test_figures_stay_in_range_for_any_timeline(
    send_gaps: list[float], arrival_gaps: list[float]
) -> None:
    n = min(len(send_gaps), len(arrival_gaps))
    sends = _cumulative(send_gaps[:n])
    arrivals = _cumulative(arrival_gaps[:n])
    report = analyze(sends, arrivals, total=(arrivals[-1] if arrivals else 0.0) + 0.1)

    assert 0 <= report.largest_burst <= report.events == n
    assert 0 <= report.late_events <= n
    if n:
        assert report.max_lag is not None and report.max_lag >= 0
        assert report.first_event_lag is not None and report.first_event_lag >= 0
        assert report.largest_burst >= 1
    assert (exit_code(report) == 0) == (report.verdict is Verdict.STREAMING)
    assert report.verdict.value in render_text(report).lower()
    assert bool(report.likely_causes) == (report.verdict is not Verdict.STREAMING)
