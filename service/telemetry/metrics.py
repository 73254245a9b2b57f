"""Prometheus metrics of relayed streams.

Names follow the OpenTelemetry GenAI semantic conventions (v1.41 era) translated to
Prometheus (dots to underscores, unit suffix) where a convention exists, with its advised
bucket boundaries (extended where LLM streams need it); everything else is ``relay_*``.
``runbook/metrics.md`` documents every family; a test keeps it in step with this module.

Each :class:`RelayMetrics` owns its own ``CollectorRegistry`` (tests stay isolated; the
process-wide default registry is never touched). With ``PROMETHEUS_MULTIPROC_DIR`` set in the
process environment *before* ``prometheus_client`` is imported, values live in per-process
files and :meth:`RelayMetrics.render` aggregates every worker (exemplars are lost then; see
the reference page).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
    values,
)
from prometheus_client.exposition import choose_encoder

__all__ = [
    "OTHER",
    "UNKNOWN",
    "Exemplar",
    "MetricsConfig",
    "RelayMetrics",
    "StreamMetrics",
    "clear_multiprocess_dir",
    "exemplar_from_traceparent",
    "multiprocess_registry",
    "render_metrics",
]

Exemplar = dict[str, str]
"""Exemplar labels: ``{"trace_id": <32 hex>, "span_id": <16 hex>}``."""

OTHER: Final = "other"
"""Label value used once a label has seen its limit of distinct values."""
UNKNOWN: Final = "unknown"
"""Label value for an empty or missing value."""

# GenAI semconv advice: gen_ai.server.time_to_first_token, then 15 s .. 120 s because
# reasoning models routinely think for 10-60 s before the first content delta.
TTFT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0,
)  # fmt: skip
# GenAI semconv advice for gen_ai.server.time_per_output_token, with 1-5 ms in front: small
# and cached models (and the mock) decode faster than the advice's first bucket.
TPOT_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
# GenAI semconv advice for gen_ai.server.request.duration, doubled on to cover the 600 s
# default stream deadline.
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    163.84, 327.68, 655.36,
)  # fmt: skip
# GenAI semconv advice for gen_ai.client.token.usage.
TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
# Inter-token gaps: milliseconds for healthy decoding, seconds for tool-input pauses and stalls.
ITL_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
    2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
LAST_MILE_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
ABORT_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_GENAI: Final = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
_PER_MODEL: Final = ("gen_ai_provider_name", "gen_ai_request_model")
_PER_CLIENT: Final = (*_PER_MODEL, "client")
_CLIENT_KINDS: Final = 8  # client kinds are free-form text sent by clients: keep very few
_OPERATION: Final = "chat"
_TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_MODEL_CHARS: Final = re.compile(r"[^A-Za-z0-9._:/@+-]")
_REASON_CHARS: Final = re.compile(r"[^a-z0-9._:-]")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Cardinality bounds of metric labels."""

    model_label_limit: int = 20
    """Distinct ``gen_ai_request_model`` values kept per process; later ones become ``other``."""
    label_value_limit: int = 32
    """Distinct values kept per free-form label (reasons, error types, kinds)."""
    label_max_length: int = 64
    """Longest label value; longer values are truncated."""
    process_metrics: bool = True
    """Also expose ``process_*`` and ``python_*`` (memory, CPU, file descriptors, GC)."""


class _LabelBound:
    """First ``limit`` distinct (cleaned) values pass; later ones become ``other``."""

    __slots__ = ("_chars", "_limit", "_lower", "_max_length", "_seen")

    def __init__(self, limit: int, max_length: int, *, lower: bool) -> None:
        self._limit = limit
        self._max_length = max_length
        self._lower = lower
        self._chars = _REASON_CHARS if lower else _MODEL_CHARS
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return UNKNOWN
        cleaned = value.strip().lower() if self._lower else value.strip()
        cleaned = self._chars.sub("_", cleaned)[: self._max_length] or UNKNOWN
        if cleaned in self._seen:
            return cleaned
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(cleaned)
        return cleaned


class RelayMetrics:
    """The relay's metric families on a registry of their own.

    The observer calls the small methods below; :meth:`stream` resolves the per-stream
    label children once so the per-token path is a single histogram observe.
    """

    def __init__(self, config: MetricsConfig | None = None) -> None:
        self.config = config or MetricsConfig()
        self.registry = CollectorRegistry()
        self.multiprocess_dir = _multiprocess_dir()
        """Directory of the multiprocess value files, or ``None`` in single-process mode."""
        cfg = self.config
        self._model = _LabelBound(cfg.model_label_limit, cfg.label_max_length, lower=False)
        self._provider = _LabelBound(cfg.label_value_limit, cfg.label_max_length, lower=True)
        self._error_type = _LabelBound(cfg.label_value_limit, cfg.label_max_length, lower=True)
        self._client = _LabelBound(_CLIENT_KINDS, cfg.label_max_length, lower=True)
        self._bounds: dict[str, _LabelBound] = {}
        self._define()
        if cfg.process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _define(self) -> None:
        r = self.registry
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token",
            "Time from request received to the first content delta of any block.",
            _GENAI, unit="seconds", buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token",
            "(last token - first token) / (output tokens - 1), per stream.",
            _GENAI, unit="seconds", buckets=TPOT_BUCKETS, registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "gen_ai_server_request_duration",
            "Whole stream duration, request received to last byte, by error type.",
            (*_GENAI, "error_type"), unit="seconds", buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Input and output tokens per stream, as reported by the provider's usage.",
            (*_GENAI, "gen_ai_token_type"), buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "relay_inter_token_latency",
            "Gap between consecutive content deltas of a stream.",
            _PER_MODEL, unit="seconds", buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_ttft = Histogram(
            "relay_upstream_time_to_first_token",
            "Time from the relay's (final) upstream request to the first content delta.",
            _PER_MODEL, unit="seconds", buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.first_progress = Histogram(
            "relay_time_to_first_progress",
            "Time from request received to the first visible progress (progress signal, "
            "thinking text or token): perceived latency.",
            _PER_MODEL, unit="seconds", buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self._define_client_and_counters()

    def _define_client_and_counters(self) -> None:
        r = self.registry
        self.client_ttft = Histogram(
            "relay_client_time_to_first_token",
            "Client-observed TTFT (request sent to first content delta), reported by clients.",
            _PER_CLIENT, unit="seconds", buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.client_perceived = Histogram(
            "relay_client_perceived_latency",
            "Client-observed time to first visible progress, reported by clients.",
            _PER_CLIENT, unit="seconds", buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.last_mile = Histogram(
            "relay_client_last_mile",
            "Client-observed TTFT minus the relay's TTFT for the same stream: time lost "
            "between relay and client (a buffering proxy shows up here).",
            _PER_CLIENT, unit="seconds", buckets=LAST_MILE_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "relay_streams_in_flight", "Streams currently being relayed.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.queued = Gauge(
            "relay_queued", "Bytes waiting in reader->writer queues, all streams.",
            unit="bytes", registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.outcomes = self._counter(
            "relay_stream_outcomes", "Streams ended, by outcome.", "outcome"
        )
        self.cancellations = self._counter(
            "relay_cancellations", "Streams cancelled, by reason.", "reason"
        )
        self.upstream_aborts = self._counter(
            "relay_upstream_aborts",
            "Upstream responses closed before their end, by reason.",
            "reason",
        )
        self.abort_latency = Histogram(
            "relay_upstream_abort_latency",
            "Time from the cancel decision to the upstream connection being closed.",
            ("reason",), unit="seconds", buckets=ABORT_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.retries = self._counter(
            "relay_retries", "Upstream attempts retried before the first byte, by reason.", "reason"
        )
        self.upstream_errors = self._counter(
            "relay_upstream_errors", "Errors reported on streams, by error type.", "error_type"
        )
        self.heartbeats = self._counter("relay_heartbeats", "Heartbeats written, by kind.", "kind")
        self.telemetry_errors = self._counter(
            "relay_telemetry_errors",
            "Telemetry hooks that failed (the stream went on), by hook.",
            "hook",
        )

    def _counter(self, name: str, documentation: str, label: str) -> Counter:
        self._bounds[name] = _LabelBound(
            self.config.label_value_limit, self.config.label_max_length, lower=True
        )
        return Counter(name, documentation, (label,), registry=self.registry)

    def _label(self, family: str, value: str | None) -> str:
        return self._bounds[family](value)

    def error_type_label(self, error_type: str | None) -> str:
        """Bounded value of the duration histogram's ``error_type`` label."""
        return self._error_type(error_type)

    # -- per stream -------------------------------------------------------------------

    def stream(self, provider: str, model: str) -> StreamMetrics:
        """Label children for one stream (bounded labels resolved once, not per token)."""
        return StreamMetrics(self, self._provider(provider), self._model(model))

    def stream_started(self) -> None:
        """A stream began: one more in flight."""
        self.in_flight.inc()

    def stream_ended(self, outcome: str) -> None:
        """A started stream ended: one fewer in flight, one more ``outcome``."""
        self.in_flight.dec()
        self.count_outcome(outcome)

    def count_outcome(self, outcome: str) -> None:
        """One more stream ended with ``outcome`` (also for streams that never started)."""
        self.outcomes.labels(self._label("relay_stream_outcomes", outcome)).inc()

    def queued_bytes(self, delta: int) -> None:
        """Bytes entered (+) or left (-) a reader->writer queue."""
        self.queued.inc(delta)

    def cancellation(self, reason: str) -> None:
        """A stream was cancelled for ``reason``."""
        self.cancellations.labels(self._label("relay_cancellations", reason)).inc()

    def upstream_abort(self, reason: str, latency: float, exemplar: Exemplar | None) -> None:
        """The upstream was closed early; ``latency`` from cancel decision to close."""
        label = self._label("relay_upstream_aborts", reason)
        self.upstream_aborts.labels(label).inc()
        self.abort_latency.labels(label).observe(max(0.0, latency), exemplar)

    def retry(self, reason: str) -> None:
        """An upstream attempt is retried."""
        self.retries.labels(self._label("relay_retries", reason)).inc()

    def upstream_error(self, error_type: str) -> None:
        """An error was reported on a stream."""
        self.upstream_errors.labels(self._label("relay_upstream_errors", error_type)).inc()

    def heartbeat(self, kind: str) -> None:
        """A heartbeat (``comment`` or ``typed``) was written."""
        self.heartbeats.labels(self._label("relay_heartbeats", kind)).inc()

    def telemetry_error(self, hook: str) -> None:
        """A telemetry hook failed; the stream itself went on."""
        self.telemetry_errors.labels(self._label("relay_telemetry_errors", hook)).inc()

    # -- client reports ---------------------------------------------------------------

    def observe_client_report(
        self,
        ttft: float | None,
        perceived: float | None,
        *,
        provider: str,
        model: str,
        client: str | None = None,
        server_ttft: float | None = None,
        exemplar: Exemplar | None = None,
    ) -> None:
        """Record timings (seconds) a client measured for one stream (``.../client-metrics``).

        ``client`` is the reporting client's kind (``python``, ``browser``; bounded label).
        ``server_ttft`` is the relay's own TTFT of that stream when still known; with it the
        last-mile histogram gets ``ttft - server_ttft``. Raises :class:`ValueError` for a
        negative, non-finite or absurd (over a day) value so the endpoint can answer 400.
        """
        for name, value in (("ttft", ttft), ("perceived", perceived)):
            if value is not None and not (math.isfinite(value) and 0 <= value <= 86_400):
                raise ValueError(f"{name} must be a number of seconds between 0 and 86400")
        labels = (self._provider(provider), self._model(model), self._client(client))
        if ttft is not None:
            self.client_ttft.labels(*labels).observe(ttft, exemplar)
            if server_ttft is not None and math.isfinite(server_ttft):
                # Clocks differ (client vs server start), so clamp a small negative to 0.
                self.last_mile.labels(*labels).observe(max(0.0, ttft - server_ttft), exemplar)
        if perceived is not None:
            self.client_perceived.labels(*labels).observe(perceived, exemplar)

    # -- exposition -------------------------------------------------------------------

    def exposition_registry(self) -> CollectorRegistry:
        """What ``/metrics`` serves: this registry, or every worker's files in multiprocess mode."""
        if self.multiprocess_dir is None:
            return self.registry
        return multiprocess_registry(self.multiprocess_dir)

    def render(self, accept_header: str | None) -> tuple[bytes, str]:
        """Body and content type for ``GET /metrics`` (see :func:`render_metrics`)."""
        return render_metrics(self.exposition_registry(), accept_header)

    def close(self) -> None:
        """Call at worker shutdown: in multiprocess mode drop this process's live gauges."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


class StreamMetrics:
    """One stream's label children; every method is a single cheap observation."""

    __slots__ = ("_first_progress", "_itl", "_metrics", "_model", "_provider", "_tokens_in",
                 "_tokens_out", "_tpot", "_ttft", "_upstream_ttft")  # fmt: skip

    def __init__(self, metrics: RelayMetrics, provider: str, model: str) -> None:
        self._metrics = metrics
        self._provider = provider
        self._model = model
        genai = (_OPERATION, provider, model)
        self._ttft = metrics.ttft.labels(*genai)
        self._tpot = metrics.tpot.labels(*genai)
        self._tokens_in = metrics.token_usage.labels(*genai, "input")
        self._tokens_out = metrics.token_usage.labels(*genai, "output")
        self._itl = metrics.itl.labels(provider, model)
        self._upstream_ttft = metrics.upstream_ttft.labels(provider, model)
        self._first_progress = metrics.first_progress.labels(provider, model)

    @property
    def provider(self) -> str:
        """Bounded provider label value."""
        return self._provider

    @property
    def model(self) -> str:
        """Bounded model label value."""
        return self._model

    def first_token(self, seconds: float, exemplar: Exemplar | None) -> None:
        """Server TTFT."""
        self._ttft.observe(max(0.0, seconds), exemplar)

    def upstream_first_token(self, seconds: float, exemplar: Exemplar | None) -> None:
        """Upstream TTFT (the relay as the provider's client)."""
        self._upstream_ttft.observe(max(0.0, seconds), exemplar)

    def gap(self, seconds: float, exemplar: Exemplar | None) -> None:
        """One inter-token gap (hot path)."""
        self._itl.observe(seconds, exemplar)

    def tpot(self, seconds: float, exemplar: Exemplar | None) -> None:
        """Time per output token of the finished stream."""
        self._tpot.observe(max(0.0, seconds), exemplar)

    def first_progress(self, seconds: float, exemplar: Exemplar | None) -> None:
        """Time to first visible progress."""
        self._first_progress.observe(max(0.0, seconds), exemplar)

    def tokens(self, input_tokens: int | None, output_tokens: int | None,
               exemplar: Exemplar | None) -> None:  # fmt: skip
        """Token usage of the finished stream (each side only when known)."""
        if input_tokens is not None:
            self._tokens_in.observe(input_tokens, exemplar)
        if output_tokens is not None:
            self._tokens_out.observe(output_tokens, exemplar)

    def duration(self, seconds: float, error_type: str | None, exemplar: Exemplar | None) -> None:
        """Whole-stream duration; ``error_type`` empty for streams that did not fail."""
        label = self._metrics.error_type_label(error_type) if error_type else ""
        self._metrics.duration.labels(_OPERATION, self._provider, self._model, label).observe(
            max(0.0, seconds), exemplar
        )


def render_metrics(registry: CollectorRegistry, accept_header: str | None) -> tuple[bytes, str]:
    """Serialise ``registry`` for ``GET /metrics`` with content negotiation.

    OpenMetrics (the format that carries exemplars) when the ``Accept`` header asks for
    ``application/openmetrics-text``, as Prometheus does; the classic text format otherwise.
    Returns the body and the ``Content-Type`` to answer with.
    """
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(registry), content_type


def exemplar_from_traceparent(traceparent: str | None) -> Exemplar | None:
    """Exemplar labels from a W3C ``traceparent`` (the stream's, e.g. for a client report);
    ``None`` when absent, malformed, all zeros or not sampled."""
    match = _TRACEPARENT.fullmatch(traceparent.strip().lower()) if traceparent else None
    if match is None or int(match[3], 16) & 1 == 0 or int(match[1], 16) == 0:
        return None
    return {"trace_id": match[1], "span_id": match[2]}


def multiprocess_registry(path: str | os.PathLike[str]) -> CollectorRegistry:
    """A fresh registry aggregating every process's value files under ``path``."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.fspath(path))  # type: ignore[no-untyped-call]
    return registry


def clear_multiprocess_dir(path: str | os.PathLike[str]) -> None:
    """Delete stale value files; run once in the parent before the workers start."""
    for file in Path(path).glob("*.db"):
        file.unlink(missing_ok=True)


def _multiprocess_dir() -> str | None:
    # prometheus_client picks its value class from the environment when it is imported;
    # follow what it decided rather than re-reading a variable that may have changed since.
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    # (prometheus_client copies the deprecated lower-case spelling over when it sees it.)
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
