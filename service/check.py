"""Is the stream streaming? The pure analysis behind ``relay check URL``.

Input: for the same content events, in order, the server's send offsets (seconds since the
server's first byte, from the relay's final ``relay_metrics`` event) and the client's
arrival offsets (seconds since the request was sent), plus the client's total time.

The two clocks have different zeros, so absolute delays mean nothing; what buffering
changes is the *shape*. Each event's delay (arrival - send) is compared with the smallest
delay of the stream, the network's best case: a streamed event arrives about that long
after it was sent, an event a proxy held back arrives later by as long as it was held.
A hop that buffers the whole response delivers every event in one burst at the end; a hop
with small buffers (or a CDN coalescing chunks) delivers a few bursts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

__all__ = [
    "EXIT_CODES",
    "CheckReport",
    "Thresholds",
    "Verdict",
    "analyze",
    "exit_code",
    "render_text",
]


class Verdict(StrEnum):
    """What the timeline says about the path between relay and client."""

    STREAMING = "streaming"
    """Events arrived as they were sent."""
    PARTIALLY_BUFFERED = "partially_buffered"
    """Events arrived in a few bursts: small buffers, compression blocks, a CDN."""
    BUFFERED = "buffered"
    """(Nearly) all events arrived in one burst at the end."""
    INCONCLUSIVE = "inconclusive"
    """Too few events, or sent too close together, to tell; probe with a longer answer."""


EXIT_CODES: dict[Verdict, int] = {
    Verdict.STREAMING: 0,
    Verdict.BUFFERED: 1,
    Verdict.PARTIALLY_BUFFERED: 1,
    # 2 is left to usage errors (argparse); a script can tell "could not judge" apart.
    Verdict.INCONCLUSIVE: 3,
}
"""Process exit status per verdict: 0 only for streaming."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Thresholds:
    """Knobs of the analysis. The defaults suit a probe of a few dozen events over >= 1 s."""

    min_events: int = 5
    """Fewer content events than this is inconclusive."""
    min_send_spread: float = 0.25
    """Seconds between the first and last send below which the result is inconclusive: a
    burst at the client cannot be told from a burst at the source."""
    burst_window: float = 0.020
    """Floor of the burst window and of the lateness tolerance, in seconds (network jitter
    and TCP coalescing stay below it)."""
    burst_window_fraction: float = 0.05
    """The window grows to this fraction of the send spread for long, slow probes."""
    streaming_max_late_fraction: float = 0.25
    """At most this fraction of events may arrive late for the verdict ``streaming``."""
    buffered_min_burst_fraction: float = 0.9
    """At least this fraction of events in one burst (and late) is ``buffered``."""


_DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True, slots=True)
class CheckReport:
    """Figures of one probe and the verdict. Seconds; ``None`` where there were no events."""

    events: int
    """Content events compared."""
    total: float
    """Client-observed time from request sent to end of stream."""
    ttft: float | None
    """Client-observed time to the first content event."""
    ttft_fraction: float | None
    """``ttft / total``: near 1 when the whole answer arrived at the end."""
    send_spread: float | None
    """Server: first to last content event sent."""
    arrival_spread: float | None
    """Client: first to last content event arrived."""
    spread_ratio: float | None
    """``arrival_spread / send_spread``: about 1 streamed, about 0 buffered."""
    window: float
    """Burst window and lateness tolerance used, in seconds."""
    largest_burst: int
    """Most events that arrived within ``window`` of each other."""
    largest_burst_fraction: float | None
    """``largest_burst / events``."""
    max_send_gap: float | None
    """Longest pause between two consecutive sends."""
    max_arrival_gap: float | None
    """Longest pause between two consecutive arrivals."""
    base_delay: float | None
    """Smallest ``arrival - send``: network delay plus clock offset, the best case."""
    first_event_lag: float | None
    """How much later than the best case the first event arrived (time held back)."""
    max_lag: float | None
    """The longest any event was held back beyond the best case."""
    late_events: int
    """Events held back more than ``window``."""
    late_fraction: float | None
    """``late_events / events``."""
    verdict: Verdict
    """The conclusion."""
    reason: str
    """One sentence: why this verdict."""
    likely_causes: tuple[str, ...]
    """Settings to look at for this verdict (empty when streaming)."""


_CAUSES: dict[Verdict, tuple[str, ...]] = {
    Verdict.STREAMING: (),
    Verdict.BUFFERED: (
        "nginx: proxy_buffering on (the default) and no 'X-Accel-Buffering: no' reaching it;"
        " set 'proxy_buffering off' on the stream location (nginx/streaming.conf)",
        "compression of text/event-stream: nginx gzip_types, GZip/compression middleware"
        " (Starlette/FastAPI, Django, Express), a CDN compression rule",
        "HTTP/1.0 to the upstream (nginx's default proxy_http_version 1.0): no chunked"
        " encoding or keepalive; set 'proxy_http_version 1.1' and an empty Connection header",
        "CDN or edge caching/buffering (Cloudflare, CloudFront, Akamai): bypass the cache and"
        " response buffering for the stream path",
        "serverless or gateway response buffering: AWS API Gateway integrations in BUFFERED"
        " transfer mode, Lambda without RESPONSE_STREAM, functions returning a whole body",
        "a corporate proxy, antivirus or TLS-inspecting middlebox scanning whole responses",
    ),
    Verdict.PARTIALLY_BUFFERED: (
        "a proxy buffering with small buffers: data moves as each buffer fills (nginx"
        " proxy_buffers / proxy_buffer_size with proxy_buffering on, Apache mod_proxy"
        " without flushpackets=on, a Go reverse proxy without FlushInterval -1)",
        "compression flushed per deflate block instead of per event (gzip/brotli"
        " middleware or proxy compression on text/event-stream)",
        "a CDN or load balancer coalescing chunks (check its streaming/buffering setting)",
        "the application writing through a buffered writer without flushing each event",
    ),
    Verdict.INCONCLUSIVE: (
        "probe too short to tell: ask for a longer answer (dozens of events over at least"
        " a second) and run the check again",
    ),
}


def analyze(
    send_offsets: Sequence[float],
    arrival_offsets: Sequence[float],
    *,
    total: float,
    thresholds: Thresholds = _DEFAULT_THRESHOLDS,
) -> CheckReport:
    """Compare when content events were sent with when they arrived; judge the path.

    Raises :class:`ValueError` for sequences of different lengths, non-finite values,
    offsets that go backwards, negative arrival offsets or a negative ``total``.
    """
    sends, arrivals = _validated(send_offsets, arrival_offsets, total)
    n = len(sends)
    send_spread = sends[-1] - sends[0] if n else None
    window = max(thresholds.burst_window, thresholds.burst_window_fraction * (send_spread or 0))
    lags = _lags(sends, arrivals)
    late = sum(1 for lag in lags if lag > window)
    burst = _largest_burst(arrivals, window)
    fig = _Figures(n=n, send_spread=send_spread, window=window, burst=burst, late=late, lags=lags)
    verdict, reason = _judge(fig, thresholds)
    arrival_spread = arrivals[-1] - arrivals[0] if n else None
    return CheckReport(
        events=n,
        total=total,
        ttft=arrivals[0] if n else None,
        ttft_fraction=arrivals[0] / total if n and total > 0 else None,
        send_spread=send_spread,
        arrival_spread=arrival_spread,
        spread_ratio=_ratio(arrival_spread, send_spread),
        window=window,
        largest_burst=burst,
        largest_burst_fraction=burst / n if n else None,
        max_send_gap=_max_gap(sends),
        max_arrival_gap=_max_gap(arrivals),
        base_delay=min(a - s for s, a in zip(sends, arrivals, strict=True)) if n else None,
        first_event_lag=lags[0] if n else None,
        max_lag=max(lags) if n else None,
        late_events=late,
        late_fraction=late / n if n else None,
        verdict=verdict,
        reason=reason,
        likely_causes=_CAUSES[verdict],
    )


def exit_code(report: CheckReport) -> int:
    """Process exit status for ``relay check``: 0 only for a streaming verdict."""
    return EXIT_CODES[report.verdict]


def render_text(report: CheckReport) -> str:
    """The report for a terminal: verdict, reason, figures, likely causes."""
    lines = [f"relay check: {report.verdict.value.upper()}", f"  {report.reason}", ""]
    lines += [f"  {label:<22}{value}" for label, value in _figure_rows(report)]
    if report.verdict is Verdict.INCONCLUSIVE:
        lines += ["", "Next step:"]
    elif report.likely_causes:
        lines += ["", "Likely causes (settings to look at):"]
    lines += [f"  - {cause}" for cause in report.likely_causes]
    if report.verdict in (Verdict.BUFFERED, Verdict.PARTIALLY_BUFFERED):
        lines += ["", "Triage: runbook/streaming-triage.md, runbook/proxy-buffering-checklist.md"]
    return "\n".join(lines) + "\n"


# --- analysis helpers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Figures:
    n: int
    send_spread: float | None
    window: float
    burst: int
    late: int
    lags: list[float]


def _validated(
    send_offsets: Sequence[float], arrival_offsets: Sequence[float], total: float
) -> tuple[list[float], list[float]]:
    sends, arrivals = [float(x) for x in send_offsets], [float(x) for x in arrival_offsets]
    if len(sends) != len(arrivals):
        raise ValueError(f"{len(sends)} send offsets but {len(arrivals)} arrival offsets")
    if not all(math.isfinite(x) for x in (*sends, *arrivals, total)):
        raise ValueError("offsets and total must be finite numbers")
    if total < 0 or any(a < 0 for a in arrivals):
        raise ValueError("arrival offsets and total are times since the request: >= 0")
    for name, seq in (("send", sends), ("arrival", arrivals)):
        if any(b < a for a, b in pairwise(seq)):
            raise ValueError(f"{name} offsets must not decrease (events in stream order)")
    return sends, arrivals


def _lags(sends: list[float], arrivals: list[float]) -> list[float]:
    # An event cannot arrive before it was sent, so the smallest delay is the closest we
    # get to the path's own latency (plus the unknown clock offset, which cancels out).
    delays = [a - s for s, a in zip(sends, arrivals, strict=True)]
    base = min(delays, default=0.0)
    return [d - base for d in delays]


def _largest_burst(arrivals: list[float], window: float) -> int:
    best, start = 0, 0
    for end, t in enumerate(arrivals):
        while t - arrivals[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _max_gap(times: list[float]) -> float | None:
    return max((b - a for a, b in pairwise(times)), default=None)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _judge(fig: _Figures, th: Thresholds) -> tuple[Verdict, str]:
    if fig.n < th.min_events:
        return Verdict.INCONCLUSIVE, (
            f"Only {fig.n} content event(s); at least {th.min_events} are needed to tell"
            " streaming from buffering. Probe with a longer answer."
        )
    assert fig.send_spread is not None  # n >= min_events >= 1
    if fig.send_spread < th.min_send_spread:
        return Verdict.INCONCLUSIVE, (
            f"The server sent all {fig.n} content events within {_ms(fig.send_spread)}; a"
            f" burst at the client cannot be told from one at the source (need"
            f" >= {th.min_send_spread:g} s). Probe with a longer answer."
        )
    late_fraction = fig.late / fig.n
    burst_fraction = fig.burst / fig.n
    if late_fraction <= th.streaming_max_late_fraction:
        return Verdict.STREAMING, (
            f"Content events arrived as they were sent: {fig.late} of {fig.n} held back"
            f" more than {_ms(fig.window)}."
        )
    if burst_fraction >= th.buffered_min_burst_fraction:
        return Verdict.BUFFERED, (
            f"{fig.burst} of {fig.n} content events arrived together within {_ms(fig.window)},"
            f" the first held back {_s(fig.lags[0])}: a hop delivered the answer at the end."
        )
    return Verdict.PARTIALLY_BUFFERED, (
        f"{fig.late} of {fig.n} content events arrived more than {_ms(fig.window)} later"
        f" than sent, in bursts of up to {fig.burst}: a hop passes the stream on in chunks."
    )


# --- rendering helpers ----------------------------------------------------------------


def _figure_rows(r: CheckReport) -> list[tuple[str, str]]:
    return [
        ("content events", str(r.events)),
        (
            "first content event",
            f"{_s(r.ttft)} after the request ({_pct(r.ttft_fraction)} of the {_s(r.total)} total)",
        ),
        ("send spread", f"{_s(r.send_spread)} (server: first to last content event)"),
        (
            "arrival spread",
            f"{_s(r.arrival_spread)} (client; {_pct(r.spread_ratio)} of the send spread)",
        ),
        (
            "largest burst",
            f"{r.largest_burst} events within {_ms(r.window)} ({_pct(r.largest_burst_fraction)})",
        ),
        ("longest gap", f"sent {_s(r.max_send_gap)}, arrived {_s(r.max_arrival_gap)}"),
        ("held back", f"first event {_s(r.first_event_lag)}, at most {_s(r.max_lag)}"),
        (
            "late events",
            f"{r.late_events} of {r.events} ({_pct(r.late_fraction)}) more than"
            f" {_ms(r.window)} later than sent",
        ),
    ]


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"
