"""Panel builders on top of grafana-foundation-sdk, with the house style in one place.

Every panel reads from the dashboard's ``$datasource`` variable, gets a stable id (Grafana
keys panel links and library references on it) and ``refId`` A, B, C ... per query, so the
generated JSON does not change between runs unless a panel does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from typing import TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Row
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

__all__ = ["DATASOURCE", "PanelFactory", "Query"]

DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
"""Every panel and variable queries the Prometheus picked in the ``datasource`` variable."""

_P = TypeVar("_P", timeseries.Panel, stat.Panel)

_HEIGHT = 8
_HALF = 12
_THIRD = 8


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    """The PromQL (Grafana variables allowed)."""
    legend: str = ""
    """Legend format, e.g. ``p95`` or ``{{reason}}``."""
    exemplar: bool = False
    """Ask Prometheus for exemplars (trace links on latency panels)."""
    instant: bool = False
    """Instant query (stat panels) instead of a range."""


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(query.expr).ref_id(ref_id).datasource(DATASOURCE)
    if query.legend:
        target = target.legend_format(query.legend)
    if query.exemplar:
        target = target.exemplar(True)
    return target.instant() if query.instant else target.range()


class PanelFactory:
    """Makes panels with consecutive ids; one factory per dashboard."""

    def __init__(self) -> None:
        self._ids = count(1)

    def row(self, title: str) -> Row:
        """A row header."""
        return dashboard.Row(title).id(next(self._ids))

    def timeseries(
        self,
        title: str,
        description: str,
        queries: Sequence[Query],
        *,
        unit: str = "short",
        width: int = _HALF,
        stacked: bool = False,
    ) -> timeseries.Panel:
        """A time series panel, legend as a table with the last and max values."""
        panel = (
            timeseries.Panel()
            .id(next(self._ids))
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .unit(unit)
            .height(_HEIGHT)
            .span(width)
            .line_width(1)
            .fill_opacity(10)
            .legend(
                common_builders.VizLegendOptions()
                .display_mode(common_models.LegendDisplayMode.TABLE)
                .placement(common_models.LegendPlacement.BOTTOM)
                .show_legend(True)
                .calcs(["lastNotNull", "max"])
            )
            .tooltip(
                common_builders.VizTooltipOptions()
                .mode(common_models.TooltipDisplayMode.MULTI)
                .sort(common_models.SortOrder.DESCENDING)
            )
        )
        if stacked:
            panel = panel.stacking(
                common_builders.StackingConfig().mode(common_models.StackingMode.NORMAL)
            )
        return self._with_targets(panel, queries)

    def heatmap(
        self, title: str, description: str, query: Query, *, unit: str = "s"
    ) -> Builder[dashboard_models.Panel]:
        """A heatmap of a Prometheus histogram's buckets (no re-bucketing in Grafana)."""
        return (
            heatmap.Panel()
            .id(next(self._ids))
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .height(_HEIGHT)
            .span(_HALF)
            .calculate(False)
            .cell_gap(1)
            .y_axis(heatmap.YAxisConfig().unit(unit))
            .color(
                heatmap.HeatmapColorOptions()
                .mode(heatmap_models.HeatmapColorMode.SCHEME)
                .scheme("Oranges")
                .fill("dark-orange")
                .scale(heatmap_models.HeatmapColorScale.EXPONENTIAL)
                .exponent(0.5)
                .steps(64)
            )
            .rows_frame(heatmap.RowsHeatmapOptions().layout(common_models.HeatmapCellLayout.LE))
            .show_tooltip()
            .show_y_histogram()
            .exemplars_color("rgba(255,0,255,0.7)")
            .with_target(_target(query, "A").format(prometheus_models.PromQueryFormat.HEATMAP))
        )

    def stat(
        self,
        title: str,
        description: str,
        query: Query,
        *,
        unit: str = "short",
        thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),),
        width: int = _THIRD,
    ) -> stat.Panel:
        """A single-value panel; ``thresholds`` are ``(from value, colour)`` steps."""
        steps = [
            dashboard_models.Threshold(value=value, color=color) for value, color in thresholds
        ]
        panel = (
            stat.Panel()
            .id(next(self._ids))
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .unit(unit)
            .height(_HEIGHT)
            .span(width)
            .color_mode(common_models.BigValueColorMode.VALUE)
            .graph_mode(common_models.BigValueGraphMode.NONE)
            .reduce_options(
                common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
            )
            .thresholds(
                dashboard.ThresholdsConfig()
                .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
                .steps(steps)
            )
        )
        return self._with_targets(panel, [query])

    @staticmethod
    def _with_targets(panel: _P, queries: Sequence[Query]) -> _P:
        for index, query in enumerate(queries):
            panel = panel.with_target(_target(query, chr(ord("A") + index)))
        return panel
