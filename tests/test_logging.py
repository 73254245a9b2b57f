"""structlog configuration: JSON lines, console rendering, trace ids and redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from service.telemetry.logging import (
    add_trace_context,
    bind_stream_context,
    configure_logging,
    redact_secrets,
    unbind_stream_context,
)
from service.telemetry.redact import REDACTED, is_sensitive_key, redact, redact_text

SECRET = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


LIBRARIES = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "litestar", "httpx", "httpcore")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    saved = [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_with_iso_timestamps() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    structlog.get_logger().info("stream.finished", outcome="completed", ttft=0.25)
    (line,) = lines(out)
    assert line["event"] == "stream.finished"
    assert line["level"] == "info"
    assert line["outcome"] == "completed"
    assert line["ttft"] == 0.25
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() is not None  # UTC, explicit offset
    assert "trace_id" not in line  # no span, no ids


def test_level_filters() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    structlog.get_logger().info("quiet")
    structlog.get_logger().warning("loud")
    logging.getLogger("uvicorn.error").info("quiet too")
    assert [line["event"] for line in lines(out)] == ["loud"]


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "chatty", stream=io.StringIO())


def test_trace_ids_from_the_current_span() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        structlog.get_logger().info("inside")
    context = span.get_span_context()
    (line,) = lines(out)
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_bound_stream_ids_win_over_the_current_span() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    bind_stream_context(stream_id="s-1", trace_id="a" * 32, span_id="b" * 16)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("httpx child"):
        structlog.get_logger().info("during")
    unbind_stream_context()
    structlog.get_logger().info("after")
    during, after = lines(out)
    assert (during["stream_id"], during["trace_id"], during["span_id"]) == (
        "s-1",
        "a" * 32,
        "b" * 16,
    )
    assert "stream_id" not in after


def test_standard_library_records_become_json_lines() -> None:
    # As uvicorn's default log config leaves it: a handler of its own, no propagation.
    access_logger = logging.getLogger("uvicorn.access")
    plain = io.StringIO()
    access_logger.addHandler(logging.StreamHandler(plain))
    access_logger.propagate = False
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    logging.getLogger("uvicorn.access").info("%s %s", "GET", "/metrics")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("litestar").exception("handler failed")
    access, failure = lines(out)
    assert access["event"] == "GET /metrics"
    assert access["logger"] == "uvicorn.access"
    assert failure["level"] == "error"
    assert failure["exception"][0]["exc_type"] == "RuntimeError"
    assert plain.getvalue() == ""  # one format per stream: the library handler is gone


def test_reconfiguring_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", stream=first)
    configure_logging("json", "info", stream=second)
    logging.getLogger("x").info("once")
    structlog.get_logger().info("twice?")
    assert first.getvalue() == ""
    assert [line["event"] for line in lines(second)] == ["once", "twice?"]


def test_console_rendering_for_humans() -> None:
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    structlog.get_logger().info("stream.finished", outcome="completed")
    text = out.getvalue()
    assert "stream.finished" in text
    assert "outcome=completed" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize(("stream", "is_json"), [(io.StringIO(), True), (TTY(), False)])
def test_auto_picks_console_only_on_a_terminal(stream: io.StringIO, is_json: bool) -> None:
    configure_logging("auto", "info", stream=stream)
    structlog.get_logger().info("hello", n=1)
    text = stream.getvalue().strip()
    assert text.startswith("{") is is_json


def test_secrets_never_reach_a_log_line() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    headers = {"x-api-key": SECRET, "content-type": "application/json"}
    structlog.get_logger().info(
        "upstream.request",
        api_key=SECRET,
        headers=headers,
        raw_headers=[(b"authorization", f"Bearer {SECRET}".encode())],
        settings={"upstream_api_key": SECRET, "nested": [{"Authorization": "Bearer abcdefgh12"}]},
        message=f"provider said: invalid x-api-key: {SECRET}",
    )
    logging.getLogger("httpx").warning("header Authorization: Bearer %s", SECRET)
    text = out.getvalue()
    assert SECRET not in text
    line, foreign = lines(out)
    assert line["api_key"] == REDACTED
    assert line["headers"] == {"x-api-key": REDACTED, "content-type": "application/json"}
    assert line["settings"]["upstream_api_key"] == REDACTED
    assert line["settings"]["nested"][0]["Authorization"] == REDACTED
    assert REDACTED in line["message"]
    assert line["message"].startswith("provider said: invalid x-api-key: ")
    assert REDACTED in foreign["event"]
    assert headers["x-api-key"] == SECRET  # the caller's object is untouched


def test_processors_in_isolation() -> None:
    event = {"event": "x", "Authorization": "Bearer token-value-123", "output_tokens": 7}
    assert redact_secrets(None, "info", event) == {
        "event": "x",
        "Authorization": REDACTED,
        "output_tokens": 7,
    }
    assert add_trace_context(None, "info", {"event": "x"}) == {"event": "x"}
    assert add_trace_context(None, "info", {"event": "x", "trace_id": "t"})["trace_id"] == "t"


@pytest.mark.parametrize(
    "key",
    ["api_key", "x-api-key", "X-Api-Key", "authorization", "upstream_api_key", "api_keys",
     "Proxy-Authorization", "cookie", "client_secret", "password"],
)  # fmt: skip
def test_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize(
    "key", ["input_tokens", "output_tokens", "tokens_at_abort", "max_tokens", "model", "event"]
)
def test_ordinary_keys(key: str) -> None:
    assert not is_sensitive_key(key)


def test_redaction_keeps_shapes_and_plain_text() -> None:
    value = {"a": ("x", {"api_key": 1}), "b": {"k"}, "c": None, "api_key": None}
    assert redact(value) == {"a": ("x", {"api_key": REDACTED}), "b": {"k"}, "c": None,
                             "api_key": None}  # fmt: skip
    assert redact_text("time to first token was 0.25 s") == "time to first token was 0.25 s"
    assert redact_text(f"Bearer {SECRET}") == f"Bearer {REDACTED}"
