"""OpenAI Chat Completions chunks -> Anthropic Messages stream events (as JSON payloads).

:class:`ChunkTranslator` is a pure state machine: feed it each decoded ``chat.completion.chunk``
object and the end of the stream (``data: [DONE]``, or the body's end), and it returns the
Anthropic-shaped event payloads that say the same thing, in order:

- the first chunk opens the message (``message_start``; OpenAI reports input usage only at
  the end, so ``message_start`` carries zeros and ``message_delta`` the real counts);
- ``delta.reasoning_content`` (vLLM, DeepSeek, llama.cpp) or ``delta.reasoning`` (Ollama,
  OpenRouter, newer vLLM) -> a ``thinking`` block (no signature: OpenAI has none);
- ``delta.content`` (and ``delta.refusal``) -> a ``text`` block;
- ``delta.tool_calls`` -> one ``tool_use`` block per call ``index``: ``id`` and ``name`` come
  with the call's first delta, later ``function.arguments`` fragments become
  ``input_json_delta`` events; a server that sends each call whole (Ollama) or repeats ``id``
  on every delta works too;
- a change of kind closes the open block and opens the next (Anthropic blocks never
  interleave); a fragment for a call whose block was already closed cannot be represented
  and is a protocol error;
- ``finish_reason`` closes the open block; the stop reason and the usage chunk (whose
  ``choices`` is ``[]``, ``null`` or missing) are held until the end, then sent as
  ``message_delta`` + ``message_stop``.

A stream that ends without a ``finish_reason`` produces no ``message_stop``, so the relay
reports it as truncated, as it does for an Anthropic stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.errors import UpstreamProtocolError, error_type_for_status

__all__ = [
    "ANTHROPIC_ERROR_TYPES",
    "ChunkTranslator",
    "anthropic_error_type",
    "error_payload",
    "stop_reason_for",
]

Payload = dict[str, Any]

ANTHROPIC_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
        "timeout_error",
        "billing_error",
    }
)
"""``error.type`` values of the Anthropic API; an upstream that already uses one keeps it."""

_FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# OpenAI error.type / error.code words -> Anthropic types (see anthropic_error_type).
_SPECIFIC_ERROR_WORDS = {
    "insufficient_quota": "billing_error",
    "invalid_api_key": "authentication_error",
    "model_not_found": "not_found_error",
    "context_length_exceeded": "invalid_request_error",
    "rate_limit_exceeded": "rate_limit_error",
}
_GENERIC_ERROR_WORDS = {
    "server_error": "api_error",
    "requests": "rate_limit_error",
    "tokens": "rate_limit_error",
}
_REASONING_FIELDS = ("reasoning_content", "reasoning")


def stop_reason_for(finish_reason: str, *, used_tools: bool) -> str:
    """Anthropic ``stop_reason`` for an OpenAI ``finish_reason``.

    A plain ``stop`` after tool calls is ``tool_use``: some servers (older Ollama, llama.cpp
    templates) say ``stop`` there, and Anthropic clients run tools only on ``tool_use``.
    """
    if finish_reason == "stop" and used_tools:
        return "tool_use"
    return _FINISH_TO_STOP.get(finish_reason, "end_turn")


def anthropic_error_type(kind: Any, code: Any, status: int | None = None) -> str:
    """Anthropic ``error.type`` for an OpenAI-style error (``type``, ``code``, HTTP status).

    A specific OpenAI word wins (a 429 for an exhausted quota is a billing problem); then the
    status (a numeric ``code`` in the body, else the HTTP status), since OpenAI calls almost
    every 4xx ``invalid_request_error``; then an Anthropic type name; then generic words.
    """
    words = [word for word in (code, kind) if isinstance(word, str)]
    for word in words:
        if word in _SPECIFIC_ERROR_WORDS:
            return _SPECIFIC_ERROR_WORDS[word]
    number = code if isinstance(code, int) and not isinstance(code, bool) else status
    if number is not None:
        # 503 is how OpenAI-compatible servers say "overloaded" (Anthropic uses 529).
        return "overloaded_error" if number == 503 else error_type_for_status(number)
    for word in words:
        if word in ANTHROPIC_ERROR_TYPES:
            return word
        if word in _GENERIC_ERROR_WORDS:
            return _GENERIC_ERROR_WORDS[word]
    return "api_error"


@dataclass(slots=True)
class _Block:
    index: int
    kind: str
    """``text``, ``thinking`` or ``tool``."""
    tool_index: int | None = None


class ChunkTranslator:
    """Stateful OpenAI chunk -> Anthropic event payload translation for one response."""

    def __init__(self, *, fallback_model: str = "unknown") -> None:
        self._fallback_model = fallback_model
        self._started = False
        self._ended = False
        self._block: _Block | None = None
        self._next_index = 0
        self._tools: dict[int, int] = {}
        """OpenAI tool call index -> Anthropic block index."""
        self._finish: str | None = None
        self._stop_sequence: str | None = None
        self._usage: Mapping[str, Any] | None = None
        self._deltas = 0

    @property
    def started(self) -> bool:
        """Whether ``message_start`` was produced."""
        return self._started

    def chunk(self, chunk: Mapping[str, Any]) -> list[Payload]:
        """Payloads for one decoded chunk (an ``error`` payload for an error chunk)."""
        if "error" in chunk:
            return [error_payload(chunk["error"])]
        if chunk.get("object") == "error":  # older vLLM: the error object is the chunk
            return [error_payload(chunk)]
        out: list[Payload] = []
        if not self._started:
            out.append(self._message_start(chunk))
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = usage
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                # One answer only: the relay never asks for n > 1.
                if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                    self._choice(choice, out)
        return out

    def done(self) -> list[Payload]:
        """Payloads at the end of the stream (``[DONE]`` or end of body); idempotent."""
        if self._ended or self._finish is None:
            return []
        self._ended = True
        out: list[Payload] = []
        self._close_block(out)
        out.append(self._message_delta())
        out.append({"type": "message_stop"})
        return out

    # -- per choice ----------------------------------------------------------------------

    def _choice(self, choice: Mapping[str, Any], out: list[Payload]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            self._delta(delta, out)
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and self._finish is None:
            self._finish = finish
            stop = choice.get("stop_reason")  # vLLM: the stop string that matched
            if finish == "stop" and isinstance(stop, str):
                self._stop_sequence = stop
            self._close_block(out)

    def _delta(self, delta: Mapping[str, Any], out: list[Payload]) -> None:
        for name in _REASONING_FIELDS:
            text = delta.get(name)
            if isinstance(text, str) and text:
                self._append(out, "thinking", {"type": "thinking_delta", "thinking": text})
                break
        for name in ("content", "refusal"):
            text = delta.get(name)
            if isinstance(text, str) and text:
                self._append(out, "text", {"type": "text_delta", "text": text})
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if isinstance(call, Mapping):
                    self._tool_call(call, position, out)

    def _append(self, out: list[Payload], kind: str, delta: Payload) -> None:
        if self._block is None or self._block.kind != kind:
            self._close_block(out)
            block: Payload = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            self._open(out, kind, block)
        assert self._block is not None
        self._content_delta(out, delta)

    def _tool_call(self, call: Mapping[str, Any], position: int, out: list[Payload]) -> None:
        index = call.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            # Servers that omit the index send whole calls: a new id means a new call.
            index = self._implicit_tool_index(call, position)
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        arguments = function.get("arguments")
        if index not in self._tools:
            self._open_tool(index, call, function, out)
        elif self._block is None or self._block.tool_index != index:
            raise UpstreamProtocolError(
                f"tool call {index} continued after another block started (interleaved "
                "tool call fragments cannot be expressed as Anthropic content blocks)"
            )
        if isinstance(arguments, str):
            # Empty fragments too: Anthropic opens every tool input with one, and the
            # accumulator treats an all-empty input as {}.
            self._content_delta(out, {"type": "input_json_delta", "partial_json": arguments})

    def _implicit_tool_index(self, call: Mapping[str, Any], position: int) -> int:
        if call.get("id"):
            return max(self._tools) + 1 if self._tools else position
        if self._block is not None and self._block.tool_index is not None:
            return self._block.tool_index
        return position

    def _open_tool(
        self, index: int, call: Mapping[str, Any], function: Mapping[str, Any], out: list[Payload]
    ) -> None:
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise UpstreamProtocolError(f"tool call {index} started without a function name")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_relay_{index}"
        self._close_block(out)
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        self._open(out, "tool", block, tool_index=index)
        self._tools[index] = self._block.index if self._block is not None else 0

    # -- blocks --------------------------------------------------------------------------

    def _open(
        self, out: list[Payload], kind: str, block: Payload, tool_index: int | None = None
    ) -> None:
        index = self._next_index
        self._next_index += 1
        self._block = _Block(index, kind, tool_index)
        out.append({"type": "content_block_start", "index": index, "content_block": block})

    def _content_delta(self, out: list[Payload], delta: Payload) -> None:
        assert self._block is not None
        self._deltas += 1
        out.append({"type": "content_block_delta", "index": self._block.index, "delta": delta})

    def _close_block(self, out: list[Payload]) -> None:
        if self._block is not None:
            out.append({"type": "content_block_stop", "index": self._block.index})
            self._block = None

    # -- envelope ------------------------------------------------------------------------

    def _message_start(self, chunk: Mapping[str, Any]) -> Payload:
        self._started = True
        chunk_id = chunk.get("id")
        model = chunk.get("model")
        return {
            "type": "message_start",
            "message": {
                "id": chunk_id if isinstance(chunk_id, str) and chunk_id else "msg_relay",
                "type": "message",
                "role": "assistant",
                "model": model if isinstance(model, str) and model else self._fallback_model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                # Unknown until the usage chunk; the SDKs expect both counts to be present.
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        }

    def _message_delta(self) -> Payload:
        assert self._finish is not None
        stop_reason = stop_reason_for(self._finish, used_tools=bool(self._tools))
        if self._stop_sequence is not None:
            stop_reason = "stop_sequence"
        return {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": self._stop_sequence},
            "usage": self._usage_payload(),
        }

    def _usage_payload(self) -> Payload:
        usage = self._usage or {}
        completion = usage.get("completion_tokens")
        # Without a usage chunk, the number of content deltas is the best count there is.
        out: Payload = {
            "output_tokens": completion if isinstance(completion, int) else self._deltas
        }
        prompt = usage.get("prompt_tokens")
        if isinstance(prompt, int):
            details = usage.get("prompt_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
            if isinstance(cached, int) and cached > 0:
                # Anthropic counts cache reads apart from input_tokens; OpenAI includes them.
                out["input_tokens"] = max(0, prompt - cached)
                out["cache_read_input_tokens"] = cached
            else:
                out["input_tokens"] = prompt
        return out


def error_payload(error: Any) -> Payload:
    """The Anthropic ``error`` event payload for an OpenAI error object (or string)."""
    if isinstance(error, Mapping):
        message = error.get("message")
        kind = anthropic_error_type(error.get("type"), error.get("code"))
        text = message if isinstance(message, str) and message else "upstream error"
    else:
        kind, text = "api_error", str(error) or "upstream error"
    return {"type": "error", "error": {"type": kind, "message": text}}
