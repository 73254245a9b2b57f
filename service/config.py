"""One frozen settings object, built from a ``RELAY_*`` environment mapping.

Every field maps to ``RELAY_<FIELD_NAME_UPPER>``; tests pass their own mapping instead of
mutating ``os.environ``. Provider keys are kept out of ``repr`` so they never reach a log.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "Settings", "UpstreamTransport"]

Provider = Literal["anthropic", "openai"]
UpstreamTransport = Literal["aiohttp", "httpx"]
LogFormat = Literal["auto", "json", "console"]


class ConfigError(ValueError):
    """A ``RELAY_*`` variable holds a value that cannot be used."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Relay settings. Defaults run everything offline against the built-in mock provider."""

    host: str = "127.0.0.1"
    """Interface the relay listens on."""
    port: int = 8000
    """Port the relay listens on."""
    upstream_url: str = "http://127.0.0.1:8100"
    """Base URL of the provider; ``/v1/messages`` (or ``/v1/chat/completions``) is appended."""
    upstream_provider: Provider = "anthropic"
    """Wire format of the upstream: ``anthropic`` (passthrough) or ``openai`` (translated)."""
    upstream_transport: UpstreamTransport = "aiohttp"
    """HTTP client transport for the upstream: ``aiohttp`` (httpx over aiohttp, the faster)
    or ``httpx`` (httpx's own, on httpcore). Same semantics: ``service/upstream/transport.py``."""
    upstream_api_key: str | None = field(default=None, repr=False)
    """Provider key; sent only to the provider, never logged."""
    anthropic_version: str = "2023-06-01"
    """``anthropic-version`` header sent upstream when the client did not send one."""
    api_keys: frozenset[str] = field(default=frozenset(), repr=False)
    """Client keys accepted as ``x-api-key`` or ``Authorization: Bearer``; empty disables auth."""
    max_request_bytes: int = 8 * 1024 * 1024
    """Largest accepted request body; larger ones get ``413 request_too_large``."""
    max_event_bytes: int = 4 * 1024 * 1024
    """Largest single upstream SSE event (and line) the decoder accepts."""
    heartbeat_interval: float = 15.0
    """Seconds without any write after which a ``: ping`` comment is sent."""
    typed_heartbeats: bool = False
    """Send ``event: ping`` (Anthropic's keepalive shape) instead of comments after
    ``message_start``, for clients whose watchdogs ignore comments."""
    progress_interval: float = 1.0
    """Seconds between progress signals while no content flows (model thinking, slow upstream)."""
    accel_buffering_header: bool = True
    """Send ``X-Accel-Buffering: no``. Turn off only to reproduce proxy buffering."""
    max_queued_bytes: int = 1024 * 1024
    """Bound of the byte queue between upstream reader and client writer (backpressure)."""
    client_stall_timeout: float = 30.0
    """A stream whose queue stays full this long ends with reason ``slow_client``."""
    upstream_connect_timeout: float = 10.0
    """Connect timeout for the upstream."""
    upstream_read_timeout: float = 90.0
    """Longest silence from the upstream (no bytes at all) before reason ``upstream_stall``."""
    stream_deadline: float = 600.0
    """Hard limit on one stream's duration (reason ``deadline``)."""
    retry_max_attempts: int = 3
    """Upstream attempts before the first forwarded byte (1 disables retries)."""
    retry_base_delay: float = 0.5
    """Base of the exponential backoff (full jitter)."""
    retry_max_delay: float = 8.0
    """Cap of one backoff delay."""
    retry_after_cap: float = 20.0
    """Cap on a provider's ``retry-after`` / ``retry-after-ms``."""
    retry_deadline: float = 30.0
    """Total time budget for retries before the first byte."""
    replay_buffer_bytes: int = 4 * 1024 * 1024
    """Bytes of sent frames kept per stream for resume with ``Last-Event-ID``."""
    replay_ttl: float = 300.0
    """Seconds a finished stream stays resumable / attachable by idempotency key."""
    resume_grace: float = 10.0
    """Seconds a resumable stream (one with an ``Idempotency-Key``) keeps generating after its
    client vanished, waiting for a resume, before the upstream is closed."""
    shutdown_grace: float = 5.0
    """Seconds in-flight streams get on shutdown before they end with reason ``shutdown``."""
    log_format: LogFormat = "auto"
    """``json`` lines, ``console`` rendering, or ``auto`` (console on a terminal)."""
    log_level: str = "info"
    """Minimum log level."""
    log_tool_input: bool = False
    """Put each tool call's parsed input in its ``tool_input.parsed`` log line. Off by default:
    tool arguments carry user and model content; the line then has the input's keys and a
    SHA-256 of its canonical JSON, enough to match it against an expected object."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``RELAY_*`` variables; ``overrides`` win over the mapping."""
        values: dict[str, Any] = {}
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = f"RELAY_{f.name.upper()}"
            if name in environ:
                values[f.name] = _parse(name, environ[name], hints[f.name])
        values.update(overrides)
        settings = cls(**values)
        settings._validate()
        return settings

    def _validate(self) -> None:
        positive = (
            "heartbeat_interval",
            "max_queued_bytes",
            "client_stall_timeout",
            "stream_deadline",
            "max_request_bytes",
            "max_event_bytes",
            "progress_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"RELAY_{name.upper()} must be > 0")
        if self.retry_max_attempts < 1:
            raise ConfigError("RELAY_RETRY_MAX_ATTEMPTS must be >= 1")


def _parse(name: str, raw: str, hint: Any) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (types.UnionType,) and type(None) in args:
        if raw.strip() == "":
            return None
        (hint,) = (a for a in args if a is not type(None))
        origin, args = get_origin(hint), get_args(hint)
    try:
        if hint is bool:
            return _parse_bool(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if origin is frozenset:
            return frozenset(p.strip() for p in raw.split(",") if p.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None
    if origin is Literal and raw not in args:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(args)}")
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected a boolean (true/false)")
