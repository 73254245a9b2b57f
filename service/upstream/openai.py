"""OpenAI Chat Completions upstream (OpenAI, vLLM, llama.cpp, Ollama, ...), translated.

The relay's clients speak Anthropic Messages; this adapter turns their request into a Chat
Completions request (:mod:`service.upstream.openai_request`) and the provider's chunk stream
back into Anthropic-shaped SSE frames (:mod:`service.upstream.openai_stream`), so the relay's
accounting, replay and SDK compatibility work unchanged. Frames are synthesised: each one is
encoded with :func:`service.sse.encode_event` and decoded with
:func:`service.events.decode_event`, exactly the pair the passthrough adapter sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from service.config import Settings
from service.errors import RequestError, UpstreamProtocolError, UpstreamStatusError
from service.events import EventDecodeError, decode_event
from service.retry import RETRYABLE_STATUSES, parse_retry_after
from service.sse import ServerSentEvent, SSEDecodeError, SSEDecoder, encode_event
from service.telemetry.redact import REDACTED, redact_text
from service.upstream.base import UpstreamFrame, strip_terminator
from service.upstream.openai_request import MaxTokensField, translate_request
from service.upstream.openai_stream import ChunkTranslator, anthropic_error_type

__all__ = ["OpenAIDecoder", "OpenAIUpstream", "chat_completions_url"]

_DONE = "[DONE]"
_OPENAI_HOSTS = frozenset({"api.openai.com"})
_ENCODER = msgspec.json.Encoder()


def chat_completions_url(base_url: str) -> str:
    """``<base>/v1/chat/completions``; a base that already ends in ``/v1`` (the OpenAI SDK's
    ``base_url`` convention) is not given a second one."""
    base = base_url.rstrip("/")
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


class OpenAIDecoder:
    """SSE bytes of a Chat Completions stream -> Anthropic-shaped frames."""

    def __init__(self, *, max_event_bytes: int, fallback_model: str = "unknown") -> None:
        self._sse = SSEDecoder(max_line_bytes=max_event_bytes, max_event_bytes=max_event_bytes)
        self._translator = ChunkTranslator(fallback_model=fallback_model)

    def feed(self, chunk: bytes) -> list[UpstreamFrame]:
        """Frames completed by ``chunk``."""
        try:
            events = self._sse.feed(chunk)
        except SSEDecodeError as exc:
            raise UpstreamProtocolError(f"upstream SSE: {exc}") from exc
        return self._frames(events)

    def close(self) -> list[UpstreamFrame]:
        """End of the body: a stream that had its ``finish_reason`` but no ``[DONE]`` still
        ends cleanly; one without a ``finish_reason`` produces no ``message_stop``."""
        try:
            events = self._sse.close()
        except SSEDecodeError as exc:
            raise UpstreamProtocolError(f"upstream SSE: {exc}") from exc
        frames = self._frames(events)
        frames.extend(_frame(p) for p in self._translator.done())
        return frames

    def _frames(self, events: list[ServerSentEvent]) -> list[UpstreamFrame]:
        frames: list[UpstreamFrame] = []
        for sse in events:
            for payload in self._payloads(sse):
                frames.append(_frame(payload))
        return frames

    def _payloads(self, sse: ServerSentEvent) -> list[dict[str, Any]]:
        data = sse.data.strip()
        if data == _DONE:
            return self._translator.done()
        try:
            chunk = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamProtocolError(f"upstream chunk is not valid JSON ({exc})") from exc
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError("upstream chunk is not a JSON object")
        if sse.event == "error" and "error" not in chunk:
            chunk = {"error": chunk}  # `event: error` with a bare error object
        return self._translator.chunk(chunk)


def _frame(payload: dict[str, Any]) -> UpstreamFrame:
    data = _ENCODER.encode(payload)
    try:
        event = decode_event(data)
    except EventDecodeError as exc:  # a translation bug, reported like a bad upstream frame
        raise UpstreamProtocolError(f"translated event {payload.get('type')!r}: {exc}") from exc
    raw = encode_event(data.decode(), event=str(payload["type"]))
    return UpstreamFrame(strip_terminator(raw), event)


class OpenAIUpstream:
    """Adapter for OpenAI Chat Completions and compatible servers."""

    provider = "openai"

    def __init__(
        self,
        settings: Settings,
        *,
        max_tokens_field: MaxTokensField | None = None,
        model: str | None = None,
    ) -> None:
        """``max_tokens_field`` defaults to ``max_completion_tokens`` for api.openai.com
        (its reasoning models refuse ``max_tokens``) and ``max_tokens`` elsewhere (what
        vLLM, llama.cpp and Ollama all accept). ``model`` overrides the client's model name."""
        self._url = chat_completions_url(settings.upstream_url)
        self._api_key = settings.upstream_api_key
        self._max_event_bytes = settings.max_event_bytes
        host = urlsplit(settings.upstream_url).hostname or ""
        self._max_tokens_field: MaxTokensField = max_tokens_field or (
            "max_completion_tokens" if host in _OPENAI_HOSTS else "max_tokens"
        )
        self._model = model

    @property
    def url(self) -> str:
        """The Chat Completions endpoint requests go to."""
        return self._url

    def translate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The Chat Completions body for a Messages ``body``; raises :class:`RequestError`
        (400) for content an OpenAI upstream cannot represent. Call before streaming starts
        to answer such requests with a plain 400."""
        return translate_request(body, max_tokens_field=self._max_tokens_field, model=self._model)

    def check_request(self, body: Mapping[str, Any]) -> None:
        """Refuse (400) what Chat Completions cannot represent, before streaming starts."""
        self.translate(body)

    def build_request(
        self,
        client: httpx.AsyncClient,
        body: Mapping[str, Any],
        raw_body: bytes | None,
        client_headers: Mapping[str, str],
        stream_id: str,
    ) -> httpx.Request:
        """POST the translated body with ``Authorization: Bearer <provider key>``.

        ``raw_body`` is ignored (it is Anthropic-shaped); client headers are not forwarded
        (``anthropic-*`` headers mean nothing to an OpenAI server).
        """
        try:
            translated = self.translate(body)
        except RequestError as exc:
            # Reached only when the caller did not translate up front: fail the stream
            # without a retry, with the same status and type.
            raise UpstreamStatusError(
                exc.status, exc.message, error_type=exc.error_type, retryable=False
            ) from exc
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "accept-encoding": "identity",
            "x-relay-stream-id": stream_id,
        }
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        content = _ENCODER.encode(translated)
        return client.build_request("POST", self._url, headers=headers, content=content)

    def decoder(self) -> OpenAIDecoder:
        """A fresh decoder for one response."""
        return OpenAIDecoder(max_event_bytes=self._max_event_bytes)

    def status_error(self, response: httpx.Response, body: bytes) -> UpstreamStatusError:
        """OpenAI-style error body -> :class:`UpstreamStatusError` with an Anthropic type.

        Understood shapes: ``{"error": {"message", "type", "code"}}`` (OpenAI, llama.cpp,
        newer vLLM), ``{"object": "error", "message", "type", "code"}`` (older vLLM),
        ``{"error": "text"}`` (Ollama) and ``{"detail": ...}`` (FastAPI servers). A 429 for
        an exhausted quota is not retryable: waiting does not refill it.
        """
        status = response.status_code
        kind, code, message = _error_fields(body)
        # A numeric body code only repeats a status; the HTTP status is the one that counts.
        error_type = anthropic_error_type(kind, code if isinstance(code, str) else None, status)
        return UpstreamStatusError(
            status,
            self._scrub(message or f"upstream answered {status}"),
            error_type=error_type,
            retryable=status in RETRYABLE_STATUSES and error_type != "billing_error",
            retry_after=parse_retry_after(response.headers),
        )

    def _scrub(self, message: str) -> str:
        # Providers quote (part of) a rejected key back; it must not reach a client or a log.
        if self._api_key:
            message = message.replace(self._api_key, REDACTED)
        return redact_text(message)


def _error_fields(body: bytes) -> tuple[Any, Any, str | None]:
    """``(type, code, message)`` from an error body, each ``None`` when absent."""
    try:
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()
        return None, None, text[:500] or None
    if not isinstance(parsed, dict):
        return None, None, None
    error = parsed.get("error", parsed)
    if isinstance(error, str):
        return None, None, error
    if not isinstance(error, dict):
        return None, None, None
    message = error.get("message", error.get("detail"))
    if message is not None and not isinstance(message, str):
        message = msgspec.json.encode(message).decode()
    return error.get("type"), error.get("code"), message
