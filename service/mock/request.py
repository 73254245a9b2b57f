"""Parse a Messages request for the mock: validate it and pick the scenario and its options.

Scenario selection, first match wins (names are case-insensitive, ``-`` equals ``_``):

1. the header ``x-mock-scenario: <name>``;
2. the body field ``"mock": {"scenario": "<name>", ...options}`` (SDK users pass it with
   ``extra_body``; the relay forwards request bodies unchanged);
3. the model name ``mock-<name>`` (e.g. ``mock-tool_use``).

None of them, or an unknown name, plays ``text``. The options of the ``"mock"`` object are all
optional and validated; a bad one is a ``400 invalid_request_error``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

__all__ = [
    "SCENARIOS",
    "MockOptions",
    "MockRequest",
    "MockRequestError",
    "parse_request",
    "select_scenario",
]

SCENARIOS = frozenset(
    {
        "text",
        "tool_use",
        "thinking",
        "rate_limited",
        "overloaded",
        "error_mid_stream",
        "drop",
        "stall",
        "malformed",
        "large",
    }
)
_ALIASES = {"reasoning": "thinking"}
_MODEL_PREFIX = "mock-"

_Ms = Annotated[float, Meta(ge=0, le=3_600_000)]
_Count = Annotated[int, Meta(ge=0, le=10_000_000)]


class MockOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body's ``"mock"`` object. Every option is optional; None means "scenario default"."""

    scenario: str | None = None
    """Scenario name (the ``x-mock-scenario`` header wins over it)."""
    tokens: Annotated[int, Meta(ge=1, le=10_000_000)] | None = None
    """Text tokens to generate; stop reason ``end_turn``. Default: ``max_tokens`` (stop reason
    ``max_tokens``), or 20000 for ``large``. Ignored by ``tool_use``."""
    ttft_ms: _Ms | None = None
    """Milliseconds from ``message_start`` to the first content delta."""
    tpot_ms: _Ms | None = None
    """Milliseconds between content deltas (``large`` defaults to 0)."""
    jitter: Annotated[float, Meta(ge=0, le=1)] | None = None
    """Spread of every delay as a fraction."""
    seed: int | None = None
    """Seed of the word and jitter generators."""
    think_ms: _Ms | None = None
    """``thinking``: milliseconds the thinking deltas are spread over (default 1500)."""
    fail_times: Annotated[int, Meta(ge=0, le=1000)] | None = None
    """Attempts that fail before one succeeds (``rate_limited`` 1, ``overloaded`` 2, the
    mid-stream failures: every attempt fails unless given)."""
    fail_after: _Count | None = None
    """Tokens sent before a mid-stream failure (default 10)."""
    retry_after: Annotated[int, Meta(ge=0, le=3600)] | None = None
    """``retry-after`` header in seconds for ``rate_limited`` (default 1)."""
    retry_after_ms: Annotated[int, Meta(ge=0, le=3_600_000)] | None = None
    """``retry-after-ms`` header (default: ``retry_after`` in milliseconds)."""
    stall_ms: _Ms | None = None
    """``stall``: milliseconds of silence after ``fail_after`` tokens (default 300000)."""
    token_bytes: Annotated[int, Meta(ge=1, le=65536)] | None = None
    """``large``: bytes of text per token (default 512)."""
    key: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    """Attempt-counting key; default: a hash of the raw request body (a retry resends it)."""


class _Message(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[Any]


class _Body(msgspec.Struct):
    # Only what the mock reads; every other Messages field (tools, temperature, ...) is accepted.
    model: Annotated[str, Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[_Message], Meta(min_length=1)]
    stream: bool = False
    system: str | list[Any] | None = None
    mock: MockOptions | None = None


class MockRequestError(ValueError):
    """The request cannot be served; the message is safe to show to the client."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MockRequest:
    """A validated request and everything derived from it."""

    model: str
    """Model name, echoed in the response."""
    max_tokens: int
    """The request's ``max_tokens``."""
    stream: bool
    """SSE stream (True) or one Message JSON (False)."""
    scenario: str
    """Resolved scenario name, one of :data:`SCENARIOS`."""
    options: MockOptions
    """The ``"mock"`` options (all None when absent)."""
    input_tokens: int
    """A rough estimate (JSON bytes / 4) reported as ``usage.input_tokens``."""
    prompt_digest: str
    """Hash of system + messages: with the seed it decides the generated words."""
    attempt_key: str
    """Key of the attempt counter: the ``key`` option or a hash of the raw body."""
    relay_stream_id: str | None
    """``x-relay-stream-id`` request header."""
    idempotency_key: str | None
    """``idempotency-key`` request header."""


_DECODER = msgspec.json.Decoder(_Body)
_T = TypeVar("_T")


def parse_request(raw: bytes, headers: Mapping[str, str]) -> MockRequest:
    """Validate a ``POST /v1/messages`` body; ``headers`` must be case-insensitive (lowercase)."""
    body = decode_body(_DECODER, raw)
    return mock_request(
        raw, headers, model=body.model, max_tokens=body.max_tokens, stream=body.stream,
        options=body.mock or MockOptions(), system=body.system, messages=body.messages,
    )  # fmt: skip


def decode_body(decoder: msgspec.json.Decoder[_T], raw: bytes) -> _T:
    """Decode a request body; shape and JSON errors become :class:`MockRequestError`."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise MockRequestError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MockRequestError(f"Request body is not valid JSON: {exc}") from None


def mock_request(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    model: str,
    max_tokens: int,
    stream: bool,
    options: MockOptions,
    system: object,
    messages: object,
) -> MockRequest:
    """The player's view of a request, whatever its wire format: the same prompt (in the
    Messages API's shape) gives the same input-token estimate and the same words."""
    system_json = msgspec.json.encode(system)
    messages_json = msgspec.json.encode(messages)
    return MockRequest(
        model=model,
        max_tokens=max_tokens,
        stream=stream,
        scenario=select_scenario(headers.get("x-mock-scenario"), options.scenario, model),
        options=options,
        input_tokens=max(1, math.ceil((len(system_json) + len(messages_json)) / 4)),
        prompt_digest=hashlib.sha256(system_json + b"\0" + messages_json).hexdigest(),
        attempt_key=options.key or hashlib.sha256(raw).hexdigest(),
        relay_stream_id=headers.get("x-relay-stream-id"),
        idempotency_key=headers.get("idempotency-key"),
    )


def select_scenario(header: str | None, option: str | None, model: str) -> str:
    """Resolve the scenario: header, else body option, else ``mock-<name>`` model, else text."""
    if header is not None and header.strip():
        return _normalize(header)
    if option is not None and option.strip():
        return _normalize(option)
    if model.lower().startswith(_MODEL_PREFIX):
        return _normalize(model[len(_MODEL_PREFIX) :])
    return "text"


def _normalize(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    return key if key in SCENARIOS else "text"
