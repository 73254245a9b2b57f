"""Litestar app factory: routes, lifespan, error shapes."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import httpx
import msgspec
import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.enums import MediaType
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response.base import ASGIResponse
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp

from service.client.report import ClientReport, decode_report
from service.config import Settings
from service.errors import RequestError, UpstreamStatusError, error_body
from service.relay import RelayStream
from service.request import RelayRequest, parse_request
from service.responder import StreamResponder
from service.retry import RetryPolicy
from service.streams import StreamRegistry, key_id
from service.telemetry.metrics import RelayMetrics
from service.telemetry.observer import StreamObserver, StreamObserverFactory
from service.telemetry.setup import Telemetry
from service.upstream.base import UpstreamAdapter
from service.upstream.factory import make_adapter
from service.upstream.transport import make_transport
from service.web import WEB_DIR

__all__ = ["RelayState", "create_app"]

log = structlog.get_logger("relay")

_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "timeout_error": 504}


ClientReportSink = Callable[[RelayStream, ClientReport], None]
"""Receives client-observed timings (telemetry turns them into metrics)."""


@dataclass(slots=True)
class RelayState:
    """Everything the handlers share; one per app."""

    settings: Settings
    registry: StreamRegistry
    adapter: UpstreamAdapter
    policy: RetryPolicy
    observer_factory: StreamObserverFactory
    transport: httpx.AsyncBaseTransport | None = None
    client: httpx.AsyncClient | None = field(default=None)
    client_report_sink: ClientReportSink | None = None
    metrics: RelayMetrics | None = None

    def new_observer(self) -> StreamObserver:
        """An observer for a new stream."""
        return self.observer_factory()


def create_app(
    settings: Settings | None = None,
    *,
    telemetry: Telemetry | None = None,
    observer_factory: StreamObserverFactory | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Litestar:
    """Build the relay app.

    ``telemetry`` defaults to tracing without exporters and a fresh metrics registry;
    ``observer_factory`` replaces its per-stream observer (tests); ``transport`` replaces the
    upstream httpx transport that ``settings.upstream_transport`` picks.
    """
    settings = settings or Settings()
    telemetry = telemetry or Telemetry.from_environ({})
    state = RelayState(
        settings=settings,
        registry=StreamRegistry(ttl=settings.replay_ttl),
        adapter=make_adapter(settings),
        policy=RetryPolicy.from_settings(settings),
        observer_factory=observer_factory or telemetry.observer_factory,
        transport=transport,
        client_report_sink=telemetry.record_client_report,
        metrics=telemetry.metrics,
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state.client = httpx.AsyncClient(
            transport=state.transport or make_transport(settings.upstream_transport),
            timeout=httpx.Timeout(
                connect=settings.upstream_connect_timeout,
                read=settings.upstream_read_timeout,
                write=settings.upstream_connect_timeout,
                pool=settings.upstream_connect_timeout,
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        telemetry.instrument(state.client)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await _drain(state)
                await state.client.aclose()
                await anyio.to_thread.run_sync(telemetry.shutdown)

    return Litestar(
        route_handlers=[
            create_message,
            resume_stream,
            cancel_stream,
            client_metrics,
            healthz,
            readyz,
            metrics_endpoint,
            chat_page,
            # Assets live under /web/ so the catch-all file route never shadows API paths
            # (a POST to an unknown route must stay a 404, not a 405).
            create_static_files_router(
                path="/web", directories=[WEB_DIR], name="web", include_in_schema=False
            ),
        ],
        lifespan=[lifespan],
        state=State({"relay": state}),
        exception_handlers={
            RequestError: _request_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        request_max_body_size=settings.max_request_bytes,
        plugins=telemetry.plugins(),
        logging_config=None,
        openapi_config=None,
    )


async def _drain(state: RelayState) -> None:
    """Stop in-flight streams with reason ``shutdown`` and give them time to end."""
    state.registry.begin_shutdown()
    with anyio.move_on_after(state.settings.shutdown_grace):
        for stream in state.registry:
            await stream.done.wait()


def _relay(request: Request[Any, Any, Any]) -> RelayState:
    state: RelayState = request.app.state["relay"]
    return state


# -- errors --------------------------------------------------------------------------------


def _json_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> ASGIResponse:
    return ASGIResponse(
        body=body, status_code=status, media_type="application/json", headers=dict(headers or {})
    )


def _error_response(
    status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> Response[bytes]:
    return Response(
        error_body(error_type, message),
        status_code=status,
        media_type=MediaType.JSON,
        headers=dict(headers or {}),
    )


def _request_error(_: Request[Any, Any, Any], exc: RequestError) -> Response[bytes]:
    return _error_response(exc.status, exc.error_type, exc.message)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    error = RequestError(status, exc.detail or "request failed")
    if status == 404:
        error = RequestError(404, "not found: no such route", "not_found_error")
    elif status == 413:
        error = RequestError(413, "request body exceeds the relay's limit", "request_too_large")
    # Keep the exception's own headers (``Allow`` on 405).
    return _error_response(error.status, error.error_type, error.message, exc.headers)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("relay.internal_error", path=request.url.path, exc_info=exc)
    return _error_response(500, "api_error", "internal relay error")


# -- auth ----------------------------------------------------------------------------------


def _authenticate(state: RelayState, headers: Mapping[str, str]) -> str | None:
    """Returns the caller's key id; raises 401 when keys are configured and none matches."""
    if not state.settings.api_keys:
        return None
    presented = headers.get("x-api-key")
    if presented is None:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            presented = auth[7:].strip()
    if presented is not None:
        for accepted in state.settings.api_keys:
            if hmac.compare_digest(presented.encode(), accepted.encode()):
                return key_id(presented)
    raise RequestError(401, "invalid or missing API key (x-api-key or Authorization: Bearer)")


def _lower_headers(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


# -- routes --------------------------------------------------------------------------------


@post("/v1/messages", status_code=200)
async def create_message(request: Request[Any, Any, Any]) -> ASGIApp:
    """Anthropic Messages compatible endpoint: streams when ``"stream": true``."""
    state = _relay(request)
    headers = _lower_headers(request)
    client_key = _authenticate(state, headers)
    relay_request = parse_request(await request.body(), headers)
    state.adapter.check_request(relay_request.body)
    if state.registry.shutting_down:
        raise RequestError(529, "the relay is shutting down; retry", "overloaded_error")
    if relay_request.idempotency_key is not None:
        existing = state.registry.by_idempotency_key(client_key, relay_request.idempotency_key)
        if existing is not None:
            return await _attach_duplicate(existing, relay_request)
    assert state.client is not None
    stream = RelayStream(
        stream_id=f"rs_{secrets.token_hex(12)}",
        request=relay_request,
        settings=state.settings,
        adapter=state.adapter,
        client=state.client,
        observer=state.new_observer(),
        policy=state.policy,
        client_key_id=client_key,
    )
    state.registry.add(stream)
    stream.start()
    if relay_request.streaming:
        return StreamResponder(stream, owner=True)
    return await _run_to_completion(stream, request)


async def _attach_duplicate(existing: RelayStream, relay_request: RelayRequest) -> ASGIApp:
    if existing.request.body != relay_request.body:
        raise RequestError(422, "Idempotency-Key was already used with a different request body")
    log.info("stream.idempotent_attach", stream_id=existing.id)
    replay_header = [(b"x-relay-idempotent-replay", b"true")]
    if relay_request.streaming and existing.buffer is not None:
        return StreamResponder(existing, cursor=0, extra_headers=replay_header)
    await existing.done.wait()
    return _message_response(existing, {"x-relay-idempotent-replay": "true"})


async def _run_to_completion(stream: RelayStream, request: Request[Any, Any, Any]) -> ASGIApp:
    """Non-streaming request: run the upstream stream to its end, answer the message."""

    async def watch_disconnect(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        stream.stop("client_disconnected")
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_disconnect, tg.cancel_scope)
        await stream.run()
        tg.cancel_scope.cancel()
    return _message_response(stream, {})


def _message_response(stream: RelayStream, extra_headers: Mapping[str, str]) -> ASGIApp:
    headers = {"x-relay-stream-id": stream.id, **extra_headers}
    traceparent = stream.observer.traceparent()
    if traceparent:
        headers["traceparent"] = traceparent
    if stream.outcome == "completed":
        body = msgspec.json.encode(stream.accumulator.message)
        return _json_response(200, body, headers)
    error = stream.error
    if error is None:
        reason = stream.outcome or "unknown"
        return _json_response(502, error_body("api_error", f"stream ended: {reason}"), headers)
    status = (
        error.status
        if isinstance(error, UpstreamStatusError)
        else _ERROR_STATUS.get(error.error_type, 502)
    )
    partial = stream.timings.content_deltas > 0
    body = error_body(
        error.error_type,
        error.message,
        relay={"retryable": error.retryable, "partial": partial, "reason": error.reason},
    )
    return _json_response(status, body, headers)


@get("/v1/streams/{stream_id:str}")
async def resume_stream(request: Request[Any, Any, Any], stream_id: FromPath[str]) -> ASGIApp:
    """Resume a stream: replays what followed ``Last-Event-ID`` and continues live."""
    state = _relay(request)
    headers = _lower_headers(request)
    client_key = _authenticate(state, headers)
    stream = state.registry.get(stream_id)
    if stream is None or stream.buffer is None or stream.client_key_id != client_key:
        raise RequestError(404, f"stream {stream_id} is unknown or expired", "not_found_error")
    cursor = _cursor_from_last_event_id(stream_id, headers.get("last-event-id"))
    if cursor < stream.buffer.next_seq - _held_frames(stream):
        raise RequestError(
            410,
            "the replay buffer no longer holds those events; retry the whole turn",
            "not_found_error",
        )
    return StreamResponder(stream, cursor=cursor)


def _held_frames(stream: RelayStream) -> int:
    assert stream.buffer is not None
    return stream.buffer.next_seq - stream.buffer.first_seq


def _cursor_from_last_event_id(stream_id: str, last_event_id: str | None) -> int:
    if not last_event_id:
        return 0
    prefix, _, seq = last_event_id.rpartition(":")
    if prefix != stream_id or not seq.isdigit():
        raise RequestError(400, f"Last-Event-ID {last_event_id!r} does not belong to {stream_id}")
    return int(seq) + 1


@post("/v1/streams/{stream_id:str}/cancel", status_code=200)
async def cancel_stream(request: Request[Any, Any, Any], stream_id: FromPath[str]) -> ASGIApp:
    """Stop a stream and its upstream generation (for when a disconnect cannot propagate)."""
    state = _relay(request)
    client_key = _authenticate(state, _lower_headers(request))
    stream = state.registry.get(stream_id)
    if stream is None or stream.client_key_id != client_key:
        raise RequestError(404, f"stream {stream_id} is unknown or expired", "not_found_error")
    already = stream.done.is_set()
    stream.stop("cancelled")
    if not already:
        with anyio.move_on_after(5):
            await stream.done.wait()
    body = {
        "id": stream_id,
        "type": "stream_cancel",
        "status": "already_finished" if already else "cancelled",
        "outcome": stream.outcome,
    }
    return _json_response(200, msgspec.json.encode(body))


@post("/v1/streams/{stream_id:str}/client-metrics", status_code=202)
async def client_metrics(request: Request[Any, Any, Any], stream_id: FromPath[str]) -> ASGIApp:
    """Record what the client observed, so the upstream / relay / last-mile split shows."""
    state = _relay(request)
    client_key = _authenticate(state, _lower_headers(request))
    stream = state.registry.get(stream_id)
    if stream is None or stream.client_key_id != client_key:
        raise RequestError(404, f"stream {stream_id} is unknown or expired", "not_found_error")
    try:
        report = decode_report(await request.body())
        if state.client_report_sink is not None:
            state.client_report_sink(stream, report)
    except ValueError as exc:
        raise RequestError(400, f"client metrics: {exc}") from None
    server_ttft = stream.timings.summary().ttft
    last_mile = (
        None
        if report.ttft_ms is None or server_ttft is None
        else round(report.ttft_ms - server_ttft * 1000, 3)
    )
    log.info(
        "client.metrics",
        stream_id=stream_id,
        client_ttft_ms=report.ttft_ms,
        server_ttft_ms=None if server_ttft is None else round(server_ttft * 1000, 3),
        last_mile_ms=last_mile,
        client=report.client,
    )
    return _json_response(
        202, msgspec.json.encode({"id": stream_id, "status": "recorded", "last_mile_ms": last_mile})
    )


@get("/metrics")
async def metrics_endpoint(request: Request[Any, Any, Any]) -> ASGIApp:
    """Prometheus exposition; OpenMetrics (with exemplars) when the scraper asks for it."""
    state = _relay(request)
    assert state.metrics is not None
    body, content_type = state.metrics.render(request.headers.get("accept"))
    return ASGIResponse(body=body, status_code=200, media_type=content_type)


@get("/", include_in_schema=False)
async def chat_page() -> ASGIApp:
    """The browser chat page (its modules are under ``/web/``)."""
    body = await anyio.Path(WEB_DIR / "index.html").read_bytes()
    return ASGIResponse(body=body, status_code=200, media_type="text/html")


@get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> ASGIApp:
    """Readiness: not shutting down."""
    state = _relay(request)
    if state.registry.shutting_down:
        return _json_response(503, b'{"status":"shutting_down"}')
    return _json_response(
        200, msgspec.json.encode({"status": "ok", "in_flight": state.registry.in_flight})
    )
