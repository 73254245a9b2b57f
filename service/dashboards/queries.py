"""PromQL of the dashboards, and the SLO numbers they share with ``runbook/alerts.yml``.

Grafana substitutes the ``$model`` template variable (a regex over
``gen_ai_request_model``), ``$__rate_interval`` and ``$__range``; tests substitute them the
same way before evaluating every query against a real Prometheus.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "MODEL",
    "TTFT_SLO_BUCKET",
    "TTFT_SLO_SECONDS",
    "TTFT_SLO_TARGET",
    "by_label_rate",
    "heatmap",
    "quantile",
    "ratio",
]

TTFT_SLO_SECONDS: Final = 2.5
"""The TTFT objective: first content delta within this many seconds of the request."""
TTFT_SLO_TARGET: Final = 0.95
"""Fraction of streams that must meet :data:`TTFT_SLO_SECONDS`."""
TTFT_SLO_BUCKET: Final = "2.5"
"""The ``le`` label value of the TTFT histogram bucket at the objective (a bucket
boundary, so attainment is exact rather than interpolated)."""

MODEL: Final = 'gen_ai_request_model=~"$model"'
"""Label matcher of the ``model`` template variable (``All`` is ``.*``)."""


def quantile(q: float, metric: str, matcher: str = MODEL, by: str = "") -> str:
    """``histogram_quantile`` of ``metric`` (a histogram's base name) over
    ``$__rate_interval``, aggregated over everything but ``le`` and ``by``."""
    labels = f"le, {by}" if by else "le"
    selector = f"{metric}_bucket{{{matcher}}}" if matcher else f"{metric}_bucket"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({selector}[$__rate_interval])))"


def heatmap(metric: str, matcher: str = MODEL) -> str:
    """Per-bucket counts of ``metric`` per interval, for a Grafana heatmap panel."""
    selector = f"{metric}_bucket{{{matcher}}}" if matcher else f"{metric}_bucket"
    return f"sum by (le) (increase({selector}[$__rate_interval]))"


def by_label_rate(metric: str, label: str, matcher: str = "") -> str:
    """Per-second rate of counter ``metric`` split by ``label``."""
    selector = f"{metric}{{{matcher}}}" if matcher else metric
    return f"sum by ({label}) (rate({selector}[$__rate_interval]))"


def ratio(numerator: str, denominator: str, window: str = "$__rate_interval") -> str:
    """``sum(rate(numerator)) / sum(rate(denominator))`` over ``window`` (selectors)."""
    return f"sum(rate({numerator}[{window}])) / sum(rate({denominator}[{window}]))"
