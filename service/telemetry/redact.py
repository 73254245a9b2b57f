"""Keeping secrets out of logs and spans.

One definition of "sensitive" shared by the log redaction processor and the span header
scrubbing, so a key that is masked in a log line is also masked in a span attribute.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "REDACTED",
    "SENSITIVE_HEADER_PATTERNS",
    "is_sensitive_key",
    "redact",
    "redact_text",
]

REDACTED: Final = "[REDACTED]"
"""What a masked value is replaced with."""

_SENSITIVE_EXACT: Final = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "password",
        "passwd",
        "secret",
        "bearer",
        "access_token",
        "refresh_token",
        "id_token",
        "session_token",
        "auth_token",
        "x_auth_token",
    }
)
# Substrings that make any key sensitive: ``x-api-key``, ``upstream_api_key``, ``api_keys``,
# ``client_secret`` ... Token *counts* (``output_tokens``) are deliberately not matched.
_SENSITIVE_PARTS: Final = ("api_key", "apikey", "secret", "password")

SENSITIVE_HEADER_PATTERNS: Final = (
    r"api[-_]?key",
    r"authorization",
    r"cookie",
    r"secret",
    r"token",
    r"password",
)
"""Case-insensitive regexes (matched anywhere in a header name) whose header values the
OpenTelemetry HTTP instrumentations must replace with ``[REDACTED]``."""

# Values that look like credentials even under an innocent key (an error message quoting a
# header, a URL with a key in it). Kept narrow so ordinary text is never mangled.
_SECRET_VALUE: Final = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|sk-(?:ant-)?[A-Za-z0-9_-]{16,}"
    r"|((?:api[-_]?key|x-api-key)[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._~+/=-]{8,}"
)


def is_sensitive_key(name: str) -> bool:
    """True when a key or header name carries a credential (case and ``-``/``_`` ignored)."""
    key = name.strip().lower().replace("-", "_")
    return key in _SENSITIVE_EXACT or any(part in key for part in _SENSITIVE_PARTS)


def redact_text(text: str) -> str:
    """Mask credential-looking substrings (bearer tokens, ``sk-...`` keys) in free text."""
    return _SECRET_VALUE.sub(_mask_match, text)


def redact(value: Any) -> Any:
    """Copy of ``value`` with sensitive keys masked anywhere inside it.

    Walks mappings, lists, tuples and sets; a list of ``(name, value)`` pairs (the shape of
    HTTP headers) is treated like a mapping. Strings are scanned with :func:`redact_text`.
    The input is never mutated: log callers often pass live request objects.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_item(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_redact_pair(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, set | frozenset):
        return type(value)(redact(v) for v in value)
    return value


def _redact_item(key: object, value: Any) -> Any:
    if isinstance(key, str) and is_sensitive_key(key) and value is not None:
        return REDACTED
    return redact(value)


def _redact_pair(value: Any) -> Any:
    # Header lists: [("x-api-key", "..."), ...] or [[b"authorization", b"..."], ...].
    if isinstance(value, list | tuple) and len(value) == 2:
        name = value[0].decode("latin-1") if isinstance(value[0], bytes) else value[0]
        if isinstance(name, str) and is_sensitive_key(name):
            return [value[0], REDACTED] if isinstance(value, list) else (value[0], REDACTED)
    return redact(value)


def _mask_match(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(2) or ""
    return prefix + REDACTED
