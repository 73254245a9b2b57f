"""Tracing setup: a TracerProvider from the standard ``OTEL_*`` variables, the Litestar
server-span plugin and httpx client spans.

Nothing here touches the global OpenTelemetry provider: the provider is passed explicitly to
the plugin, the httpx instrumentation and the stream observer, so tests run on their own
``TracerProvider`` with an in-memory exporter and never see the app's exporters.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote

import httpx
from litestar.enums import ScopeType
from litestar.plugins.opentelemetry import (
    OpenTelemetryConfig,
    OpenTelemetryInstrumentationMiddleware,
    OpenTelemetryPlugin,
)
from litestar.plugins.opentelemetry._utils import get_route_details_from_scope
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.version import __version__ as _sdk_version
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
    get_custom_headers,
)

from service import __version__
from service.telemetry.redact import REDACTED, SENSITIVE_HEADER_PATTERNS, is_sensitive_key

__all__ = [
    "DEFAULT_UNTRACED_PATHS",
    "TracingConfigError",
    "instrument_httpx_client",
    "litestar_otel_plugin",
    "relay_tracer",
    "setup_tracing",
    "shutdown_tracing",
]

DEFAULT_UNTRACED_PATHS: Final = ("/metrics", "/healthz", "/readyz")
"""Paths that get no server span (scrapes and probes would drown the real traffic)."""

_EXPORTERS: Final = frozenset({"otlp", "console", "none"})
_HEADER_ATTRIBUTE_PREFIXES: Final = ("http.request.header.", "http.response.header.")
_BSP_VARIABLES: Final = (
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_EXPORT_TIMEOUT",
)


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable asks for something this build cannot do."""


def setup_tracing(
    environ: Mapping[str, str], *, service_name: str = "llm-stream-relay"
) -> trace.TracerProvider:
    """Build a tracer provider from ``OTEL_*`` variables in ``environ``.

    - ``OTEL_SDK_DISABLED=true``: a no-op provider (no spans, no trace ids).
    - ``OTEL_TRACES_EXPORTER``: comma list of ``otlp``, ``console``, ``none``. Default:
      ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
      is set, else ``none`` (spans and trace ids still exist for logs and exemplars, they are
      just not exported).
    - OTLP is HTTP/protobuf; endpoint and headers come from ``environ``. The exporter's finer
      knobs (timeout, compression, certificates) it reads from the process environment itself.
    - ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER(_ARG)`` and
      ``OTEL_BSP_*`` are honoured.

    Every exporter sits behind a ``BatchSpanProcessor`` so exporting never blocks the event
    loop. The global provider is left alone; call :func:`shutdown_tracing` at shutdown.
    """
    if _truthy(environ.get("OTEL_SDK_DISABLED")):
        return trace.NoOpTracerProvider()
    exporters = [_exporter(name, environ) for name in _exporter_names(environ)]
    provider = SdkTracerProvider(
        resource=_resource(environ, service_name), sampler=_sampler(environ)
    )
    options = _bsp_options(environ)
    for exporter in exporters:
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=options.get("OTEL_BSP_MAX_QUEUE_SIZE"),
                schedule_delay_millis=options.get("OTEL_BSP_SCHEDULE_DELAY"),
                max_export_batch_size=options.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
                export_timeout_millis=options.get("OTEL_BSP_EXPORT_TIMEOUT"),
            )
        )
    return provider


def shutdown_tracing(provider: trace.TracerProvider) -> None:
    """Flush and stop the provider's exporters (blocking: run it in a worker thread)."""
    if isinstance(provider, SdkTracerProvider):
        provider.shutdown()


def relay_tracer(provider: trace.TracerProvider) -> trace.Tracer:
    """The tracer the stream observer uses."""
    return provider.get_tracer("service.relay", __version__)


def instrument_httpx_client(
    client: httpx.AsyncClient, tracer_provider: trace.TracerProvider
) -> None:
    """Give ``client`` OpenTelemetry client spans (one per upstream request).

    Only this client is instrumented (no global monkey-patching). The httpx span ends at the
    response headers; the stream span covers the body. Header attributes captured through
    ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_*`` are scrubbed of credentials
    (``x-api-key``, ``authorization`` ...) whatever the sanitize variable says.
    """
    HTTPXClientInstrumentor.instrument_client(
        client,
        tracer_provider=tracer_provider,
        request_hook=_scrub_request_hook,
        response_hook=_scrub_response_hook,
    )


def litestar_otel_plugin(
    tracer_provider: trace.TracerProvider,
    *,
    untraced_paths: tuple[str, ...] = DEFAULT_UNTRACED_PATHS,
) -> OpenTelemetryPlugin:
    """Litestar's own OpenTelemetry plugin, configured for the relay.

    Server spans are named ``{method} {route template}`` (never the raw path, which holds
    stream ids; unrouted requests keep just ``{method}``), ``untraced_paths`` get none, the
    per-message ASGI ``send``/``receive`` spans are off (a streamed response would make one
    per token), and credential headers are sanitised if header capture is switched on.
    """
    config = OpenTelemetryConfig(
        tracer_provider=tracer_provider,
        exclude=[f"^{re.escape(path)}$" for path in untraced_paths],
        exclude_spans=["receive", "send"],
        scope_span_details_extractor=_initial_span_details,
        http_capture_headers_sanitize_fields=[
            *SENSITIVE_HEADER_PATTERNS,
            *get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS),
        ],
        middleware_class=_RouteNamingMiddleware,
    )
    plugin = OpenTelemetryPlugin(config)
    # The plugin builds its middleware from OpenTelemetryInstrumentationMiddleware unless
    # ``_middleware`` is set; Litestar itself sets it the same way when it adopts a configured
    # middleware. This is how ``config.middleware_class`` takes effect.
    plugin._middleware = config.middleware
    return plugin


class _RouteNamingMiddleware(OpenTelemetryInstrumentationMiddleware):
    """The instrumentation middleware, renaming its server span once the route is known.

    It wraps Litestar's router, so the span starts before routing; the router then writes
    ``path_template`` into the shared scope, read when the response starts.
    """

    def __init__(self, app: ASGIApp, config: OpenTelemetryConfig) -> None:
        super().__init__(app=_name_span_after_routing(app), config=config)


def _name_span_after_routing(app: ASGIApp) -> ASGIApp:
    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        server_span = trace.get_current_span()  # we run inside the server span's context

        async def send_named(message: Message) -> None:
            # By the response start the router has set ``path_template``; the span must be
            # renamed before the instrumentation ends it with the last body message.
            if message["type"] == "http.response.start":
                _name_server_span(server_span, scope)
            await send(message)

        await app(scope, receive, send_named)

    return routed


def _name_server_span(span: trace.Span, scope: Scope) -> None:
    template = scope.get("path_template")
    method = scope.get("method")
    if template and method and span.is_recording():
        span.update_name(f"{method} {template}")
        span.set_attribute(HTTP_ROUTE, template)


def _initial_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    method = scope.get("method")
    if scope["type"] == ScopeType.HTTP and method:
        return str(method), {}
    return get_route_details_from_scope(scope)


async def _scrub_request_hook(span: trace.Span, request: object) -> None:
    _scrub_header_attributes(span)


async def _scrub_response_hook(span: trace.Span, request: object, response: object) -> None:
    _scrub_header_attributes(span)


def _scrub_header_attributes(span: trace.Span) -> None:
    attributes = getattr(span, "attributes", None)  # SDK spans only; no-op spans have none
    if not isinstance(attributes, Mapping):
        return
    for key in list(attributes):
        if key.startswith(_HEADER_ATTRIBUTE_PREFIXES):
            header = key.split(".", 3)[3]
            if is_sensitive_key(header):
                span.set_attribute(key, [REDACTED])


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        endpoint_set = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint_set else []
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = sorted(set(names) - _EXPORTERS)
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: unsupported {', '.join(unknown)} (use otlp, console or none)"
        )
    return [name for name in dict.fromkeys(names) if name != "none"]


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stdout)  # the stream current now, not at import
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip() != "http/protobuf":
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only http/protobuf is installed "
            "(point it at the Collector's 4318 port)"
        )
    return OTLPSpanExporter(endpoint=_otlp_endpoint(environ), headers=_otlp_headers(environ))


def _otlp_endpoint(environ: Mapping[str, str]) -> str:
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces  # the signal-specific endpoint is used as given, per the spec
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def _otlp_headers(environ: Mapping[str, str]) -> dict[str, str]:
    raw = environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or environ.get(
        "OTEL_EXPORTER_OTLP_HEADERS", ""
    )
    return _key_values(raw)


def _resource(environ: Mapping[str, str], service_name: str) -> Resource:
    # Built from ``environ`` alone (Resource.create would also read os.environ).
    attributes: dict[str, str] = {
        TELEMETRY_SDK_LANGUAGE: "python",
        TELEMETRY_SDK_NAME: "opentelemetry",
        TELEMETRY_SDK_VERSION: _sdk_version,
        SERVICE_NAME: service_name,
        SERVICE_VERSION: __version__,
    }
    attributes.update(_key_values(environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    name = environ.get("OTEL_SERVICE_NAME", "").strip()
    if name:
        attributes[SERVICE_NAME] = name
    return Resource(attributes)


def _sampler(environ: Mapping[str, str]) -> sampling.Sampler:
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(arg) if arg else 1.0
    except ValueError:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a number") from None
    samplers: dict[str, sampling.Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={name}: unsupported sampler")
    return samplers[name]


def _bsp_options(environ: Mapping[str, str]) -> dict[str, int]:
    # Unset ones stay None so the processor falls back to its defaults.
    options: dict[str, int] = {}
    for variable in _BSP_VARIABLES:
        raw = environ.get(variable, "").strip()
        if raw:
            try:
                options[variable] = int(raw)
            except ValueError:
                raise TracingConfigError(f"{variable}={raw!r} is not an integer") from None
    return options


def _key_values(raw: str) -> dict[str, str]:
    """Parse the W3C-baggage-like ``k=v,k2=v2`` format of OTEL_* list variables."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


def _truthy(raw: str | None) -> bool:
    return (raw or "").strip().lower() == "true"
