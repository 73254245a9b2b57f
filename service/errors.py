"""The relay's exception tree and the Anthropic error shape.

RelayError
├── RequestError         a client request the relay refuses (4xx, Anthropic shape)
└── UpstreamError        the provider failed; carries whether a retry may help
    ├── UpstreamStatusError   non-2xx before the first byte
    └── UpstreamProtocolError the stream broke its own rules (bad JSON, bad order)
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "RelayError",
    "RequestError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "error_body",
    "error_type_for_status",
]

_STATUS_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int) -> str:
    """Anthropic ``error.type`` for an HTTP status."""
    if status in _STATUS_ERROR_TYPES:
        return _STATUS_ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(error_type: str, message: str, **extra: Any) -> bytes:
    """``{"type": "error", "error": {"type": ..., "message": ...}, **extra}`` as JSON bytes."""
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    body.update(extra)
    return msgspec.json.encode(body)


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class RequestError(RelayError):
    """A request the relay refuses, answered with ``status`` and an Anthropic error body."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for_status(status)


class UpstreamError(RelayError):
    """The provider failed. ``reason`` is a low-cardinality label (metrics, ``relay.reason``)."""

    def __init__(
        self, message: str, *, reason: str, error_type: str = "api_error", retryable: bool
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.error_type = error_type
        self.retryable = retryable


class UpstreamStatusError(UpstreamError):
    """A non-2xx answer before the stream started."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message, reason=f"status_{status}", error_type=error_type, retryable=retryable
        )
        self.status = status
        self.retry_after = retry_after


class UpstreamProtocolError(UpstreamError):
    """The upstream stream was malformed (undecodable frame, events out of order)."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message, reason="upstream_protocol", error_type="api_error", retryable=True
        )
