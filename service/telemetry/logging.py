"""structlog configuration: JSON lines in production, readable lines on a terminal.

Every line carries ``trace_id``/``span_id`` of the current OpenTelemetry span (unless already
bound) and passes a redaction processor, so no provider or client key reaches a log. Standard
library records (uvicorn, litestar, httpx) go through the same processors and renderer.

A stream binds ``stream_id``/``trace_id``/``span_id`` with :func:`bind_stream_context`; the
binding lives in contextvars, so it covers the request task and the reader/writer tasks it
starts (child tasks copy the context when they are created).
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Literal, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from service.telemetry.redact import redact

__all__ = [
    "LogFormat",
    "add_trace_context",
    "bind_stream_context",
    "configure_logging",
    "redact_secrets",
    "shared_processors",
    "unbind_stream_context",
]

LogFormat = Literal["auto", "json", "console"]

_STREAM_KEYS: Final = ("stream_id", "trace_id", "span_id")
_ADOPTED_LOGGERS: Final = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "litestar",
    "httpx",
    "httpcore",
)
"""Libraries that install handlers of their own; their records are routed to the root
handler instead, so one stream carries one format."""


class _RelayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler we installed, so reconfiguring replaces it instead of adding."""


def configure_logging(
    fmt: LogFormat = "auto", level: str = "info", *, stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library root logger (safe to call repeatedly).

    ``json`` writes one JSON object per line with an ISO-8601 UTC ``timestamp``;
    ``console`` renders for humans; ``auto`` picks console when ``stream`` is a terminal.
    ``stream`` defaults to standard error, like uvicorn's own logs. uvicorn's and
    litestar's loggers are routed to the root handler installed here; run uvicorn with
    ``log_config=None`` and Litestar with ``logging_config=None`` so they do not reinstall
    handlers of their own afterwards.
    """
    out = stream if stream is not None else sys.stderr
    numeric = _level(level)
    renderer = _renderer(fmt, out)
    shared = shared_processors()
    structlog.configure(
        processors=[*shared, *_exception_processors(renderer), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(out),
        # Not cached: reconfiguring (tests, CLI subcommands) must reach existing loggers.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_exception_processors(renderer),
            renderer,
        ],
    )
    handler = _RelayHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RelayHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _ADOPTED_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
        library.setLevel(logging.NOTSET)


def shared_processors() -> list[Processor]:
    """Processors every line passes, structlog's own and foreign (stdlib) alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_trace_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact_secrets,
    ]


def add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add ``trace_id``/``span_id`` of the current span unless the line already has them."""
    if "trace_id" in event_dict:
        return event_dict
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask credentials (``api_key``, ``x-api-key``, ``authorization`` ...) anywhere in a line."""
    cleaned: EventDict = redact(event_dict)
    return cleaned


def bind_stream_context(*, stream_id: str, trace_id: str | None, span_id: str | None) -> None:
    """Bind a stream's ids to every log line of the current context (and tasks it starts)."""
    values = {"stream_id": stream_id, "trace_id": trace_id, "span_id": span_id}
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v})


def unbind_stream_context() -> None:
    """Drop the stream's ids from the current context."""
    structlog.contextvars.unbind_contextvars(*_STREAM_KEYS)


def _renderer(fmt: LogFormat, stream: TextIO) -> Processor:
    console = fmt == "console" or (fmt == "auto" and _isatty(stream))
    if console:
        return structlog.dev.ConsoleRenderer(colors=_isatty(stream))
    return structlog.processors.JSONRenderer(default=str)


def _exception_processors(renderer: Processor) -> list[Processor]:
    # JSON gets structured tracebacks; the console renderer formats exceptions itself.
    if isinstance(renderer, structlog.dev.ConsoleRenderer):
        return []
    return [structlog.processors.dict_tracebacks]


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _level(level: str) -> int:
    numeric = logging.getLevelNamesMapping().get(level.strip().upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    return numeric
