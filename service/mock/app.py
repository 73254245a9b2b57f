"""The mock provider's Litestar app: an Anthropic Messages compatible ``POST /v1/messages``.

Routes:

- ``POST /v1/messages``: plays the selected scenario (see :mod:`service.mock.request`).
- ``POST /v1/chat/completions``: the same scenarios on OpenAI's Chat Completions wire
  (see :mod:`service.mock.openai_app`).
- ``GET /mock/generations`` (``?relay_stream_id=``): the ledger, oldest first.
- ``GET /mock/generations/{id}``: one generation (404 ``not_found_error`` if unknown).
- ``DELETE /mock/generations``: forget generations and attempt counters (for tests).
- ``GET /healthz``.

Every error a client sees has Anthropic's shape (OpenAI's on ``/v1/chat/completions``); none
carries a stack trace.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, Response, delete, get, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp

from service.mock import frames
from service.mock.generation import ERROR_STATUS, GenerationApp, quiet_intentional_drops
from service.mock.ledger import GenerationLedger, GenerationRecord
from service.mock.openai_app import OpenAIWire
from service.mock.openai_request import parse_chat_request
from service.mock.request import MockRequest, MockRequestError, parse_request
from service.mock.scenarios import Step, build_script
from service.mock.settings import MockSettings
from service.mock.wire import MockWire

__all__ = ["create_mock_app"]

_FAILURE_SCENARIOS = frozenset({"error_mid_stream", "drop", "stall", "malformed"})
_STATUS_ERROR_TYPE = {status: error_type for error_type, status in ERROR_STATUS.items()}


def create_mock_app(
    settings: MockSettings | None = None, ledger: GenerationLedger | None = None
) -> Litestar:
    """Build the mock provider app; pass a ``ledger`` to inspect generations in-process."""
    settings = settings or MockSettings()
    ledger = GenerationLedger() if ledger is None else ledger

    @post("/v1/messages", status_code=200)
    async def create_message(request: Request[Any, Any, Any]) -> ASGIApp:
        try:
            parsed = parse_request(await request.body(), request.headers)
        except MockRequestError as exc:
            return _error_response("invalid_request_error", str(exc))
        return _start_generation(parsed, settings, ledger, _ANTHROPIC)

    @post("/v1/chat/completions", status_code=200)
    async def create_chat_completion(request: Request[Any, Any, Any]) -> ASGIApp:
        wire = OpenAIWire(include_usage=False)
        try:
            parsed = parse_chat_request(await request.body(), request.headers)
        except MockRequestError as exc:
            return wire.error_response("invalid_request_error", str(exc))
        wire = OpenAIWire(include_usage=parsed.include_usage)
        return _start_generation(parsed.request, settings, ledger, wire)

    @get("/mock/generations")
    async def list_generations(request: Request[Any, Any, Any]) -> list[GenerationRecord]:
        # Read by hand: works across Litestar 2.x without its parameter-style deprecations.
        return ledger.records(relay_stream_id=request.query_params.get("relay_stream_id"))

    @get("/mock/generations/{generation_id:str}")
    async def get_generation(request: Request[Any, Any, Any]) -> GenerationRecord:
        generation_id: str = request.path_params["generation_id"]
        record = ledger.get(generation_id)
        if record is None:
            raise NotFoundException(f"No generation with id {generation_id!r}")
        return record

    @delete("/mock/generations", status_code=204)
    async def reset_generations() -> None:
        ledger.reset()

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(
        route_handlers=[
            create_message,
            create_chat_completion,
            list_generations,
            get_generation,
            reset_generations,
            healthz,
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=[_lifespan],
        openapi_config=None,
        logging_config=None,  # the process owner configures logging, not an app factory
    )


@asynccontextmanager
async def _lifespan(_app: Litestar) -> AsyncIterator[None]:
    with quiet_intentional_drops():
        yield


class _AnthropicWire:
    """The Messages API face of the mock (see :class:`~service.mock.wire.MockWire`)."""

    def error_response(
        self, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> ASGIResponse:
        return _error_response(error_type, message, headers)

    def generation_app(
        self,
        *,
        record: GenerationRecord,
        script: Iterator[Step],
        ledger: GenerationLedger,
        headers: list[tuple[bytes, bytes]],
    ) -> ASGIApp:
        return GenerationApp(record=record, script=script, ledger=ledger, headers=headers)


_ANTHROPIC: MockWire = _AnthropicWire()


def _start_generation(
    parsed: MockRequest, settings: MockSettings, ledger: GenerationLedger, wire: MockWire
) -> ASGIApp:
    attempt = ledger.count_attempt(parsed.attempt_key)
    record = ledger.start(
        scenario=parsed.scenario,
        model=parsed.model,
        stream=parsed.stream,
        relay_stream_id=parsed.relay_stream_id,
        idempotency_key=parsed.idempotency_key,
        attempt=attempt,
    )
    mock_headers = {"x-mock-generation-id": record.id, "x-mock-scenario": parsed.scenario}
    rejection = _rejection(parsed, attempt)
    if rejection is not None:
        error_type, headers = rejection
        ledger.finish(record, "failed", error_type)
        return wire.error_response(
            error_type, _REJECTION_MESSAGE[error_type], {**headers, **mock_headers}
        )
    fail_times = parsed.options.fail_times
    inject = parsed.scenario in _FAILURE_SCENARIOS and (fail_times is None or attempt <= fail_times)
    return wire.generation_app(
        record=record,
        script=build_script(parsed, settings, record.id, inject_failure=inject),
        ledger=ledger,
        headers=[
            (b"cache-control", b"no-cache"),
            (b"request-id", f"req_mock_{secrets.token_hex(8)}".encode()),
            *((k.encode(), v.encode()) for k, v in mock_headers.items()),
        ],
    )


_REJECTION_MESSAGE = {
    "rate_limit_error": "Number of requests has exceeded your rate limit (simulated).",
    "overloaded_error": "Overloaded",
}


def _rejection(parsed: MockRequest, attempt: int) -> tuple[str, dict[str, str]] | None:
    """The error that rejects this attempt before any byte, if the scenario wants one."""
    opts = parsed.options
    if parsed.scenario == "rate_limited" and attempt <= (
        1 if opts.fail_times is None else opts.fail_times
    ):
        if opts.retry_after is not None:
            seconds = opts.retry_after
        elif opts.retry_after_ms is not None:
            seconds = math.ceil(opts.retry_after_ms / 1000)
        else:
            seconds = 1
        millis = seconds * 1000 if opts.retry_after_ms is None else opts.retry_after_ms
        headers = {
            "retry-after": str(seconds),
            "retry-after-ms": str(millis),
            "x-should-retry": "true",
        }
        return "rate_limit_error", headers
    if parsed.scenario == "overloaded" and attempt <= (
        2 if opts.fail_times is None else opts.fail_times
    ):
        return "overloaded_error", {"x-should-retry": "true"}
    return None


def _error_response(
    error_type: str, message: str, headers: dict[str, str] | None = None
) -> ASGIResponse:
    return ASGIResponse(
        body=msgspec.json.encode(frames.error_body(error_type, message)),
        status_code=ERROR_STATUS.get(error_type, 500),
        media_type="application/json",
        headers={"request-id": f"req_mock_{secrets.token_hex(8)}", **(headers or {})},
    )


def _http_error(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    error_type = _STATUS_ERROR_TYPE.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return Response(
        content=msgspec.json.encode(frames.error_body(error_type, exc.detail)),
        status_code=status,
        media_type="application/json",
        headers=exc.headers,
    )


def _internal_error(_request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    structlog.get_logger("service.mock").error("mock.internal_error", exc_info=exc)
    return Response(
        content=msgspec.json.encode(frames.error_body("api_error", "Internal server error")),
        status_code=500,
        media_type="application/json",
    )
