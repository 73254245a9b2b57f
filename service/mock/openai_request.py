"""Parse a Chat Completions request for the mock into the same :class:`MockRequest`.

Scenario selection and the ``"mock"`` options work as on ``/v1/messages`` (header, body
``mock`` object, ``mock-<name>`` model). The prompt is read back into the Messages shape
(system text apart, tool calls and results as blocks) before it is hashed, so a plain-text
prompt sent through the relay's OpenAI adapter gives the mock the same seed, the same words
and the same ``input_tokens`` estimate as the same prompt sent to ``/v1/messages``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from service.mock.request import MockOptions, MockRequest, decode_body, mock_request

__all__ = ["DEFAULT_MAX_TOKENS", "ChatRequest", "parse_chat_request"]

DEFAULT_MAX_TOKENS = 256
"""``max_tokens`` when the request gives none (Chat Completions makes it optional)."""

_Role = Literal["system", "developer", "user", "assistant", "tool"]


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _ChatMessage(msgspec.Struct):
    role: _Role
    content: str | list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _ChatBody(msgspec.Struct):
    # Only what the mock reads; every other field (tools, temperature, ...) is accepted.
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[_ChatMessage], Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    mock: MockOptions | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated Chat Completions request."""

    request: MockRequest
    """What the scenario player needs (shared with ``/v1/messages``)."""
    include_usage: bool
    """``stream_options.include_usage``: send the usage chunk before ``[DONE]``."""


_DECODER = msgspec.json.Decoder(_ChatBody)


def parse_chat_request(raw: bytes, headers: Mapping[str, str]) -> ChatRequest:
    """Validate a ``POST /v1/chat/completions`` body; ``headers`` lowercase-keyed."""
    body = decode_body(_DECODER, raw)
    system, messages = _as_messages_api(body.messages)
    request = mock_request(
        raw, headers, model=body.model,
        max_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        stream=body.stream, options=body.mock or MockOptions(), system=system, messages=messages,
    )  # fmt: skip
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return ChatRequest(request=request, include_usage=include_usage)


def _as_messages_api(chat: list[_ChatMessage]) -> tuple[str | None, list[dict[str, Any]]]:
    """``(system, messages)`` in the Messages API's shape (best effort, for hashing only)."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    pending_results: list[dict[str, Any]] = []
    for message in chat:
        if message.role in ("system", "developer"):
            system.append(_text(message.content))
        elif message.role == "tool":
            pending_results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id,
                    "content": _text(message.content),
                }
            )
        elif message.role == "user":
            messages.append(_user(message.content, pending_results))
            pending_results = []
        else:
            messages.append(_assistant(message))
    if pending_results:
        messages.append({"role": "user", "content": pending_results})
    return ("\n\n".join(system) if system else None), messages


def _text(content: str | list[Any] | None) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content or ""


def _user(content: str | list[Any] | None, results: list[dict[str, Any]]) -> dict[str, Any]:
    if not results:
        return {"role": "user", "content": content if content is not None else ""}
    blocks = list(results)
    if content:
        blocks.append({"type": "text", "text": _text(content)})
    return {"role": "user", "content": blocks}


def _assistant(message: _ChatMessage) -> dict[str, Any]:
    if not message.tool_calls:
        return {"role": "assistant", "content": _text(message.content)}
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": _text(message.content)})
    for call in message.tool_calls:
        function = call.get("function") or {}
        try:
            arguments = msgspec.json.decode(function.get("arguments") or "{}")
        except msgspec.DecodeError:
            arguments = {}
        blocks.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
             "input": arguments}
        )  # fmt: skip
    return {"role": "assistant", "content": blocks}
