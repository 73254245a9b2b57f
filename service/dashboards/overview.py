"""The "LLM stream relay" dashboard: SLO, latency, client vs server, load, stop paths, errors.

Row titles are referenced by the alerts' descriptions and the runbook pages ("row
Stop paths"); rename them together.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dashboard_models

from service.dashboards.panels import DATASOURCE, PanelFactory, Query
from service.dashboards.queries import (
    MODEL,
    TTFT_SLO_BUCKET,
    TTFT_SLO_TARGET,
    by_label_rate,
    heatmap,
    quantile,
    ratio,
)

__all__ = ["UID", "build"]

UID = "llm-stream-relay"
"""Dashboard uid: stable URLs (``/d/llm-stream-relay``) for runbook links."""

_TTFT = "gen_ai_server_time_to_first_token_seconds"
_TPOT = "gen_ai_server_time_per_output_token_seconds"
_ITL = "relay_inter_token_latency_seconds"
_DURATION = "gen_ai_server_request_duration_seconds"
_CLIENT_TTFT = "relay_client_time_to_first_token_seconds"
_UPSTREAM_TTFT = "relay_upstream_time_to_first_token_seconds"
_LAST_MILE = "relay_client_last_mile_seconds"
_PROGRESS = "relay_time_to_first_progress_seconds"
_CLIENT_PERCEIVED = "relay_client_perceived_latency_seconds"
_ABORT_LATENCY = "relay_upstream_abort_latency_seconds"
_OUTCOMES = "relay_stream_outcomes_total"
_NOT_COMPLETED = 'outcome!="completed"'


def _percentiles(metric: str, legend_prefix: str = "", *, exemplar: bool = False) -> list[Query]:
    return [
        Query(quantile(q, metric), f"{legend_prefix}p{round(q * 100)}", exemplar=exemplar)
        for q in (0.5, 0.95, 0.99)
    ]


def _slo_row(f: PanelFactory, board: dashboard.Dashboard) -> dashboard.Dashboard:
    good = f'{_TTFT}_bucket{{le="{TTFT_SLO_BUCKET}",{MODEL}}}'
    total = f"{_TTFT}_count{{{MODEL}}}"
    attainment = f"sum(increase({good}[$__range])) / sum(increase({total}[$__range]))"
    return (
        board.with_row(f.row("SLO"))
        .with_panel(
            f.stat(
                "TTFT SLO attainment (range)",
                "Share of streams whose first token came within 2.5 s, over the dashboard's "
                "time range. Objective: 95%.",
                Query(attainment, instant=True),
                unit="percentunit",
                thresholds=((None, "red"), (TTFT_SLO_TARGET, "green")),
            )
        )
        .with_panel(
            f.stat(
                "Streams (range)",
                "Streams that ended in the time range, any outcome.",
                Query(f"sum(increase({_OUTCOMES}[$__range]))", instant=True),
            )
        )
        .with_panel(
            f.stat(
                "Telemetry hook failures (range)",
                "Telemetry hooks that raised (RelayTelemetryErrors). Anything but 0 is a bug.",
                Query(
                    "sum(increase(relay_telemetry_errors_total[$__range])) or vector(0)",
                    instant=True,
                ),
                thresholds=((None, "green"), (1, "red")),
            )
        )
        .with_panel(
            f.timeseries(
                "TTFT SLO attainment",
                "Share of streams within the 2.5 s TTFT objective per interval, against the "
                "95% target.",
                [
                    Query(ratio(good, total), "attainment"),
                    Query(f"vector({TTFT_SLO_TARGET})", "objective"),
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            f.timeseries(
                "TTFT error budget burn rate",
                "How fast the 5% error budget burns (1 = exactly on budget). "
                "RelayTTFTBudgetBurnFast fires above 14.4 on both 1h and 5m, "
                "RelayTTFTBudgetBurnSlow above 6 on 6h and 30m. From the recording rules in "
                "runbook/alerts.yml.",
                [
                    Query(f"relay:ttft_slo_errors:ratio_rate{w} / {1 - TTFT_SLO_TARGET:.2f}", w)
                    for w in ("5m", "30m", "1h", "6h")
                ],
            )
        )
    )


def _latency_row(f: PanelFactory, board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(f.row("Latency"))
        .with_panel(
            f.timeseries(
                "TTFT (relay)",
                "Request received to first content delta, percentiles. Exemplars link to "
                "the trace of a stream in that bucket.",
                _percentiles(_TTFT, exemplar=True),
                unit="s",
            )
        )
        .with_panel(
            f.heatmap(
                "TTFT heatmap",
                "Streams per TTFT bucket. Two bands usually mean two populations (models, "
                "retried streams).",
                Query(heatmap(_TTFT)),
            )
        )
        .with_panel(
            f.timeseries(
                "TPOT",
                "(last token - first token) / (output tokens - 1), per stream, percentiles.",
                _percentiles(_TPOT, exemplar=True),
                unit="s",
            )
        )
        .with_panel(f.heatmap("TPOT heatmap", "Streams per TPOT bucket.", Query(heatmap(_TPOT))))
        .with_panel(
            f.timeseries(
                "Inter-token latency (ITL)",
                "Gaps between consecutive content deltas. A fat p99 with a normal p50 means "
                "stalls mid-answer (tool input, provider hiccups).",
                _percentiles(_ITL, exemplar=True),
                unit="s",
            )
        )
        .with_panel(
            f.heatmap("ITL heatmap", "Gaps per ITL bucket, all streams.", Query(heatmap(_ITL)))
        )
        .with_panel(
            f.timeseries(
                "Stream duration",
                "Request received to the end of the stream, percentiles, by error type "
                "(empty: completed or cancelled).",
                [
                    Query(quantile(0.5, _DURATION, by="error_type"), "p50 {{error_type}}"),
                    Query(quantile(0.95, _DURATION, by="error_type"), "p95 {{error_type}}"),
                ],
                unit="s",
            )
        )
        .with_panel(
            f.timeseries(
                "Tokens per second",
                "Input and output tokens per second from the providers' usage.",
                [
                    Query(
                        f"sum by (gen_ai_token_type) "
                        f"(rate(gen_ai_client_token_usage_sum{{{MODEL}}}[$__rate_interval]))",
                        "{{gen_ai_token_type}}",
                    )
                ],
            )
        )
    )


def _client_row(f: PanelFactory, board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(f.row("Client vs server"))
        .with_panel(
            f.timeseries(
                "TTFT p95: client vs relay vs upstream",
                "The same streams measured three times. client >> relay: a hop between relay "
                "and client buffers (RelayProxyBufferingSuspected). relay >> upstream: time "
                "spent in the relay, mostly retries.",
                [
                    Query(quantile(0.95, _CLIENT_TTFT), "client"),
                    Query(quantile(0.95, _TTFT), "relay"),
                    Query(quantile(0.95, _UPSTREAM_TTFT), "upstream"),
                ],
                unit="s",
            )
        )
        .with_panel(
            f.timeseries(
                "Last mile (client TTFT - relay TTFT)",
                "Per stream, the client's TTFT minus the relay's. Milliseconds when healthy; "
                "seconds mean a buffering proxy (runbook/streaming-triage.md).",
                [
                    Query(quantile(0.5, _LAST_MILE, by="client"), "p50 {{client}}"),
                    Query(quantile(0.95, _LAST_MILE, by="client"), "p95 {{client}}"),
                ],
                unit="s",
            )
        )
        .with_panel(
            f.timeseries(
                "Perceived latency p95",
                "Time to the first visible progress (progress event, thinking or token), "
                "relay and client views.",
                [
                    Query(quantile(0.95, _PROGRESS), "relay"),
                    Query(quantile(0.95, _CLIENT_PERCEIVED), "client"),
                ],
                unit="s",
            )
        )
        .with_panel(
            f.timeseries(
                "Client reports per second",
                "Streams whose client posted its timings. Without reports the client panels "
                "are empty and buffering goes unseen.",
                [Query(by_label_rate(f"{_CLIENT_TTFT}_count", "client", MODEL), "{{client}}")],
            )
        )
    )


def _load_row(f: PanelFactory, board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(f.row("Load"))
        .with_panel(
            f.timeseries(
                "Streams in flight",
                "Streams being relayed now, per relay instance (RelayInFlightSaturation).",
                [Query("sum by (instance) (relay_streams_in_flight)", "{{instance}}")],
            )
        )
        .with_panel(
            f.timeseries(
                "Queued bytes",
                "Bytes waiting between upstream readers and client writers: growing means "
                "clients read slower than the provider writes (RelayQueuedBytesHigh).",
                [
                    Query("sum by (instance) (relay_queued_bytes)", "{{instance}}"),
                    Query(
                        "sum by (instance) (relay_queued_bytes) / "
                        "clamp_min(sum by (instance) (relay_streams_in_flight), 1)",
                        "per stream {{instance}}",
                    ),
                ],
                unit="bytes",
            )
        )
    )


def _outcomes_row(f: PanelFactory, board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(f.row("Outcomes"))
        .with_panel(
            f.timeseries(
                "Stream endings by outcome",
                "Streams ended per second: completed, cancelled, client_disconnected, "
                "slow_client, deadline, upstream_* ...",
                [Query(by_label_rate(_OUTCOMES, "outcome"), "{{outcome}}")],
                stacked=True,
            )
        )
        .with_panel(
            f.timeseries(
                "Share of streams not completed",
                "Fraction of stream endings other than completed, by outcome.",
                [
                    Query(
                        by_label_rate(_OUTCOMES, "outcome", _NOT_COMPLETED)
                        + f" / ignoring(outcome) group_left() "
                        f"sum(rate({_OUTCOMES}[$__rate_interval]))",
                        "{{outcome}}",
                    )
                ],
                unit="percentunit",
            )
        )
    )


def _stop_paths_row(f: PanelFactory, board: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        board.with_row(f.row("Stop paths"))
        .with_panel(
            f.timeseries(
                "Cancellations by reason",
                "Streams cancelled per second: client disconnect, cancel endpoint, stall, "
                "deadline, shutdown.",
                [Query(by_label_rate("relay_cancellations_total", "reason"), "{{reason}}")],
                width=8,
            )
        )
        .with_panel(
            f.timeseries(
                "Upstream aborts by reason",
                "Upstream responses closed early so the provider stops generating. Should "
                "track the cancellations (RelayCancellationsNotReachingUpstream).",
                [Query(by_label_rate("relay_upstream_aborts_total", "reason"), "{{reason}}")],
                width=8,
            )
        )
        .with_panel(
            f.timeseries(
                "Aborts per cancellation",
                "Upstream aborts divided by cancellations: near 1 when every cancel reaches "
                "the provider.",
                [
                    Query(
                        "(sum(rate(relay_upstream_aborts_total[$__rate_interval])) or vector(0))"
                        " / sum(rate(relay_cancellations_total[$__rate_interval]))",
                        "aborts / cancellations",
                    )
                ],
                width=8,
            )
        )
        .with_panel(
            f.timeseries(
                "Cancel propagation latency",
                "Cancel decision to upstream connection closed.",
                [
                    Query(quantile(0.5, _ABORT_LATENCY, matcher=""), "p50", exemplar=True),
                    Query(quantile(0.99, _ABORT_LATENCY, matcher=""), "p99", exemplar=True),
                ],
                unit="s",
                width=24,
            )
        )
    )


def _errors_row(f: PanelFactory, board: dashboard.Dashboard) -> dashboard.Dashboard:
    upstream_failures = f'{_OUTCOMES}{{outcome=~"upstream_.*"}}'
    return (
        board.with_row(f.row("Errors and retries"))
        .with_panel(
            f.timeseries(
                "Upstream failure ratio",
                "Share of streams ending with upstream_error, upstream_stall, upstream_dropped "
                "or upstream_truncated (RelayUpstreamErrorRateHigh fires above 5%).",
                [Query(ratio(upstream_failures, _OUTCOMES), "upstream failures")],
                unit="percentunit",
                width=8,
            )
        )
        .with_panel(
            f.timeseries(
                "Errors by type",
                "Errors reported on streams: provider error events, HTTP errors, protocol errors.",
                [
                    Query(
                        by_label_rate("relay_upstream_errors_total", "error_type"),
                        "{{error_type}}",
                    )
                ],
                width=8,
            )
        )
        .with_panel(
            f.timeseries(
                "Retries by reason",
                "Upstream attempts retried before the first forwarded byte, and retries per "
                "finished stream (RelayRetryStorm fires above 0.5).",
                [
                    Query(by_label_rate("relay_retries_total", "reason"), "{{reason}}"),
                    Query(
                        "sum(rate(relay_retries_total[$__rate_interval])) / "
                        f"sum(rate({_OUTCOMES}[$__rate_interval]))",
                        "retries per stream",
                    ),
                ],
                width=8,
            )
        )
    )


def _heartbeats_row(f: PanelFactory, board: dashboard.Dashboard) -> dashboard.Dashboard:
    return board.with_row(f.row("Heartbeats")).with_panel(
        f.timeseries(
            "Heartbeats by kind",
            "Keepalives written while nothing else was sent: comment (`: ping`) or typed "
            "(`event: ping`). Many per stream mean long silences (slow first token, stalls).",
            [Query(by_label_rate("relay_heartbeats_total", "kind"), "{{kind}}")],
            width=24,
        )
    )


def build() -> dashboard.Dashboard:
    """The dashboard builder (call ``.build()`` for the model)."""
    f = PanelFactory()
    board = (
        dashboard.Dashboard("LLM stream relay")
        .uid(UID)
        .description("Streams relayed by the LLM stream relay: SLO, latency, stop paths, errors.")
        .tags(["llm-stream-relay", "generated"])
        .editable()
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
        .with_variable(
            dashboard.QueryVariable("model")
            .label("Model")
            .datasource(DATASOURCE)
            .query(f"label_values({_TTFT}_count, gen_ai_request_model)")
            .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dashboard_models.VariableOption(selected=True, text="All", value="$__all"))
        )
    )
    for add_row in (
        _slo_row,
        _latency_row,
        _client_row,
        _load_row,
        _outcomes_row,
        _stop_paths_row,
        _errors_row,
        _heartbeats_row,
    ):
        board = add_row(f, board)
    return board
