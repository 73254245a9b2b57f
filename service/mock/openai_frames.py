"""The mock's OpenAI Chat Completions wire format: chunks, errors and the non-streaming body.

The mock plays one script per scenario, written in Anthropic events (:mod:`service.mock.scenarios`).
:class:`ChunkWriter` re-expresses each of those events as the ``chat.completion.chunk`` objects an
OpenAI-compatible server would send for the same generation, so every scenario (timing, words,
tool-call fragments, failures) exists in both formats and the two adapters can be compared:

- ``message_start`` -> the role chunk (``delta: {"role": "assistant", "content": ""}``);
- ``text_delta`` -> ``delta.content``; ``thinking_delta`` -> ``delta.reasoning_content``;
- a ``tool_use`` block -> ``delta.tool_calls`` for its call ``index``: the first fragment's
  chunk carries ``id``, ``type`` and ``function.name``, later ones only ``function.arguments``;
- ``message_delta`` -> the ``finish_reason`` chunk, then (with ``stream_options.include_usage``)
  the usage chunk whose ``choices`` is ``[]``; ``message_stop`` -> ``data: [DONE]``;
- an ``error`` event -> ``data: {"error": {...}}`` then ``data: [DONE]``, as vLLM sends it;
- ``ping``, block starts and stops and ``signature_delta`` have no OpenAI form.

Shapes follow OpenAI's published chunk format (``"usage": null`` on every chunk when usage was
requested, ``logprobs: null``, a ``system_fingerprint``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from service.mock.frames import Payload
from service.sse import encode_event

__all__ = [
    "DONE_FRAME",
    "MALFORMED_CHUNK",
    "ChunkWriter",
    "chat_completion",
    "error_body",
    "error_status",
]

DONE_FRAME = b"data: [DONE]\n\n"
"""The stream's terminator line."""

# A chunk cut off in the middle of its JSON, as a broken server or proxy would send.
MALFORMED_CHUNK = (
    b'data: {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "choices": '
    b'[{"index": 0, "delta": {"content": " trunc\n\n'
)

_ENCODER = msgspec.json.Encoder()
_FINGERPRINT = "fp_mock"
_FINISH = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
_STOP_SEQUENCE = "stop_sequence"
# Anthropic error type -> (HTTP status, OpenAI error type, OpenAI error code).
_ERRORS: dict[str, tuple[int, str, str | None]] = {
    "invalid_request_error": (400, "invalid_request_error", None),
    "authentication_error": (401, "invalid_request_error", "invalid_api_key"),
    "permission_error": (403, "invalid_request_error", None),
    "not_found_error": (404, "invalid_request_error", "model_not_found"),
    "request_too_large": (413, "invalid_request_error", None),
    "rate_limit_error": (429, "requests", "rate_limit_exceeded"),
    "api_error": (500, "server_error", None),
    # OpenAI-compatible servers say "overloaded" with a 503, not Anthropic's 529.
    "overloaded_error": (503, "server_error", None),
}


def error_status(error_type: str) -> int:
    """HTTP status an OpenAI-compatible server uses for an Anthropic ``error_type``."""
    return _ERRORS.get(error_type, (500, "server_error", None))[0]


def error_body(error_type: str, message: str) -> Payload:
    """OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``)."""
    _, kind, code = _ERRORS.get(error_type, (500, "server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _encode(payload: Payload) -> bytes:
    return encode_event(_ENCODER.encode(payload).decode())


class ChunkWriter:
    """Anthropic event payloads of one generation -> OpenAI chunk frames (bytes)."""

    def __init__(
        self, *, completion_id: str, model: str, created: int, include_usage: bool
    ) -> None:
        self._id = completion_id
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._tool: tuple[int, str, str] | None = None
        """The open tool block: (call index, id, name) until its first fragment is sent."""
        self._tool_index = -1
        self._input_tokens = 0

    def frames(self, payload: Payload) -> bytes:
        """The frames for one Anthropic event (``b""`` when it has no OpenAI form)."""
        kind = payload["type"]
        if kind == "message_start":
            self._input_tokens = payload["message"]["usage"]["input_tokens"]
            return _encode(self._chunk({"role": "assistant", "content": ""}))
        if kind == "content_block_start":
            block = payload["content_block"]
            if block["type"] == "tool_use":
                self._tool_index += 1
                self._tool = (self._tool_index, block["id"], block["name"])
            return b""
        if kind == "content_block_delta":
            return self._delta(payload["delta"])
        if kind == "message_delta":
            return self._finish(payload)
        if kind == "message_stop":
            return DONE_FRAME
        if kind == "error":
            error = payload["error"]
            return _encode(_stream_error(error["type"], error["message"])) + DONE_FRAME
        return b""

    def _delta(self, delta: Payload) -> bytes:
        kind = delta["type"]
        if kind == "text_delta":
            return _encode(self._chunk({"content": delta["text"]}))
        if kind == "thinking_delta":
            return _encode(self._chunk({"reasoning_content": delta["thinking"]}))
        if kind == "input_json_delta":
            return _encode(self._chunk({"tool_calls": [self._call(delta["partial_json"])]}))
        return b""

    def _call(self, fragment: str) -> Payload:
        if self._tool is not None:
            index, call_id, name = self._tool
            self._tool = None
            return {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": fragment},
            }
        return {"index": self._tool_index, "function": {"arguments": fragment}}

    def _finish(self, payload: Payload) -> bytes:
        stop = payload["delta"]["stop_reason"]
        finish = "stop" if stop == _STOP_SEQUENCE else _FINISH.get(stop, "stop")
        frames = _encode(self._chunk({}, finish_reason=finish))
        if self._include_usage:
            output = payload["usage"]["output_tokens"]
            usage = _usage(self._input_tokens, output)
            frames += _encode({**self._envelope(), "choices": [], "usage": usage})
        return frames

    def _envelope(self) -> Payload:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": _FINGERPRINT,
        }

    def _chunk(self, delta: Payload, finish_reason: str | None = None) -> Payload:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk: Payload = {**self._envelope(), "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None
        return chunk


def _usage(prompt: int, completion: int) -> Payload:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _stream_error(error_type: str, message: str) -> Payload:
    # vLLM's in-stream error object: the HTTP status it would have used as a numeric code.
    status, kind, _ = _ERRORS.get(error_type, (500, "server_error", None))
    return {"error": {"object": "error", "message": message, "type": kind, "param": None,
                      "code": status}}  # fmt: skip


def chat_completion(message: dict[str, Any], *, created: int) -> Payload:
    """The non-streaming ``chat.completion`` body for an accumulated Anthropic Message."""
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[Payload] = []
    for block in message.get("content", []):
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "thinking":
            reasoning.append(block["thinking"])
        elif block["type"] == "tool_use":
            arguments = _ENCODER.encode(block["input"]).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
    reply: Payload = {"role": "assistant", "content": "".join(texts) if texts else None}
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)
    if calls:
        reply["tool_calls"] = calls
    stop = message.get("stop_reason")
    usage = message.get("usage", {})
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "system_fingerprint": _FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": "stop"
                if stop == _STOP_SEQUENCE
                else _FINISH.get(str(stop), "stop"),
            }
        ],
        "usage": _usage(usage.get("input_tokens", 0), usage.get("output_tokens", 0)),
    }
