"""One bundle of the relay's telemetry: tracer provider, metrics, observer factory.

Built from ``OTEL_*`` variables by :meth:`Telemetry.from_environ`, or from parts in tests
(an in-memory span exporter, a fresh metrics registry). Process-wide logging is configured
separately by :func:`service.telemetry.logging.configure_logging` (the CLI does it), because
an app factory must not reconfigure the process it is imported into.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from opentelemetry import trace

from service.telemetry.metrics import MetricsConfig, RelayMetrics, exemplar_from_traceparent
from service.telemetry.observer import NullObserver, StreamObserverFactory
from service.telemetry.stream import TelemetryObserverFactory
from service.telemetry.tracing import (
    instrument_httpx_client,
    litestar_otel_plugin,
    relay_tracer,
    setup_tracing,
    shutdown_tracing,
)

if TYPE_CHECKING:
    from service.client.report import ClientReport
    from service.relay import RelayStream

__all__ = ["Telemetry"]


@dataclass(slots=True)
class Telemetry:
    """Everything telemetry the app needs, created once per process."""

    tracer_provider: trace.TracerProvider
    """Source of the server, stream and upstream spans."""
    metrics: RelayMetrics
    """The Prometheus metrics served on ``/metrics``."""
    observer_factory: StreamObserverFactory
    """Makes the per-stream observer (span + metrics + canonical log line)."""
    enabled: bool = True
    """False only for :meth:`disabled`: no server or upstream spans, no per-stream telemetry."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Telemetry:
        """Tracing from ``OTEL_*`` in ``environ``; metrics switch to multiprocess mode when
        ``PROMETHEUS_MULTIPROC_DIR`` is set in the process environment."""
        provider = setup_tracing(environ)
        metrics = RelayMetrics()
        return cls.from_parts(provider, metrics)

    @classmethod
    def from_parts(cls, provider: trace.TracerProvider, metrics: RelayMetrics) -> Telemetry:
        """Assemble from a given provider and metrics (tests pass in-memory ones)."""
        factory = TelemetryObserverFactory(
            relay_tracer(provider), metrics, structlog.get_logger("relay.telemetry")
        )
        return cls(tracer_provider=provider, metrics=metrics, observer_factory=factory)

    @classmethod
    def disabled(cls) -> Telemetry:
        """Telemetry off: the baseline of the overhead benchmark (``relay bench overhead``).

        A no-op tracer provider, a :class:`NullObserver` per stream, no Litestar plugin (no
        server spans, no middleware), no httpx instrumentation, client reports ignored.
        ``/metrics`` still answers, from a registry nothing observes into.
        """
        return cls(
            tracer_provider=trace.NoOpTracerProvider(),
            metrics=RelayMetrics(MetricsConfig(process_metrics=False)),
            observer_factory=NullObserver,
            enabled=False,
        )

    def plugins(self) -> list[Any]:
        """Litestar plugins: server spans from Litestar's own OpenTelemetry plugin."""
        return [litestar_otel_plugin(self.tracer_provider)] if self.enabled else []

    def instrument(self, client: httpx.AsyncClient) -> None:
        """Client spans for the upstream requests."""
        if self.enabled:
            instrument_httpx_client(client, self.tracer_provider)

    def record_client_report(self, stream: RelayStream, report: ClientReport) -> None:
        """Client-observed timings (ms on the wire) into the client-side histograms."""
        if not self.enabled:
            return
        self.metrics.observe_client_report(
            _seconds(report.ttft_ms),
            _seconds(report.perceived_ms),
            provider=stream.provider,
            model=stream.request.model,
            client=report.client,
            server_ttft=stream.timings.summary().ttft,
            exemplar=exemplar_from_traceparent(stream.observer.traceparent()),
        )

    def shutdown(self) -> None:
        """Finish abandoned streams, flush spans, release metric files (blocking)."""
        if isinstance(self.observer_factory, TelemetryObserverFactory):
            self.observer_factory.reap()
        self.metrics.close()
        shutdown_tracing(self.tracer_provider)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000
