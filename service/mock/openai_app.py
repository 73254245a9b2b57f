"""The mock's ``POST /v1/chat/completions``: the same scenarios on OpenAI's wire format.

:class:`OpenAIWire` plugs into the mock's generation start (:mod:`service.mock.app`): the
scenario script (Anthropic events) is re-expressed chunk by chunk by
:class:`~service.mock.openai_frames.ChunkWriter`, keeping every pause, token count, drop and
failure, so the ledger proves cancellation the same way on both endpoints.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import msgspec
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp

from service.mock.collect import MessageCollector
from service.mock.generation import GenerationApp
from service.mock.ledger import GenerationLedger, GenerationRecord
from service.mock.openai_frames import (
    MALFORMED_CHUNK,
    ChunkWriter,
    chat_completion,
    error_body,
    error_status,
)
from service.mock.scenarios import Emit, Step

__all__ = ["OpenAIGenerationApp", "OpenAIWire", "openai_script"]


def openai_script(steps: Iterator[Step], writer: ChunkWriter) -> Iterator[Step]:
    """``steps`` with each frame re-encoded as OpenAI chunks.

    Each :class:`Emit` keeps its Anthropic payload (the player reads error types and the
    non-streaming collector folds messages from it); only ``frame`` changes. Events with no
    OpenAI form are left out; none of them is a token.
    """
    for step in steps:
        if type(step) is not Emit:
            yield step
        elif step.payload is None:
            yield Emit(MALFORMED_CHUNK, None, step.token)
        else:
            frame = writer.frames(step.payload)
            if frame:
                yield Emit(frame, step.payload, step.token)


class OpenAIGenerationApp(GenerationApp):
    """The generation player with a ``chat.completion`` body for non-streaming requests."""

    def _error_reply(self, error: dict[str, Any]) -> tuple[int, object]:
        detail = error["error"]
        return error_status(detail["type"]), error_body(detail["type"], detail["message"])

    def _message_reply(self, collector: MessageCollector) -> bytes:
        return msgspec.json.encode(chat_completion(collector.message(), created=_now()))


def _now() -> int:
    return int(time.time())


class OpenAIWire:
    """The OpenAI Chat Completions face of the mock, for one request."""

    def __init__(self, *, include_usage: bool) -> None:
        self._include_usage = include_usage

    def error_response(
        self, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> ASGIResponse:
        """OpenAI's error shape, with the status an OpenAI-compatible server would use."""
        return ASGIResponse(
            body=msgspec.json.encode(error_body(error_type, message)),
            status_code=error_status(error_type),
            media_type="application/json",
            headers={"x-request-id": f"req_mock_{secrets.token_hex(8)}", **(headers or {})},
        )

    def generation_app(
        self,
        *,
        record: GenerationRecord,
        script: Iterator[Step],
        ledger: GenerationLedger,
        headers: list[tuple[bytes, bytes]],
    ) -> ASGIApp:
        """Play ``script`` as Chat Completions chunks (or one ``chat.completion`` body)."""
        writer = ChunkWriter(
            completion_id=f"chatcmpl-{record.id}",
            model=record.model,
            created=_now(),
            include_usage=self._include_usage,
        )
        # A non-streaming answer is folded from the Anthropic events themselves.
        played = openai_script(script, writer) if record.stream else script
        return OpenAIGenerationApp(record=record, script=played, ledger=ledger, headers=headers)
