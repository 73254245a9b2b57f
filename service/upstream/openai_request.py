"""Anthropic Messages request -> OpenAI Chat Completions request.

The relay's public endpoint speaks Anthropic Messages; an OpenAI-compatible upstream (OpenAI,
vLLM, llama.cpp, Ollama, ...) wants Chat Completions. :func:`translate_request` maps what has
an equivalent and refuses (``400 invalid_request_error``) what would silently change the
meaning of the conversation (documents, server tools). What is dropped or approximated is
listed in ``runbook/upstreams.md``.

Mapping, in short:

- ``system`` (string or text blocks) -> one leading ``system`` message;
- user text / image blocks -> ``content`` (a plain string when the message is text only, since
  many local servers' chat templates only understand strings);
- user ``tool_result`` blocks -> ``tool`` messages placed right after the assistant turn that
  made the calls, as OpenAI requires;
- assistant ``tool_use`` blocks -> ``tool_calls`` (input re-encoded as the arguments string);
  assistant ``thinking`` / ``redacted_thinking`` blocks are dropped (no OpenAI equivalent);
- ``tools`` -> ``functions``; ``tool_choice`` auto/any/tool/none -> auto/required/named/none;
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``;
- ``max_tokens``, ``temperature``, ``top_p``, ``stop_sequences`` -> ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature``, ``top_p``, ``stop``;
- ``stream: true`` and ``stream_options.include_usage`` always (the relay always streams);
- body fields the Messages API does not define pass through unchanged (``extra_body`` of an
  SDK: ``seed``, ``logit_bias``, ``reasoning_effort``, the mock's ``mock`` object, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from service.errors import RequestError

__all__ = ["MaxTokensField", "translate_request"]

MaxTokensField = Literal["max_tokens", "max_completion_tokens"]

# Messages API fields with no Chat Completions equivalent: dropped rather than forwarded, since
# an OpenAI server answers 400 to parameters it does not know.
_DROPPED = frozenset(
    {
        "metadata",
        "thinking",
        "service_tier",
        "top_k",
        "container",
        "mcp_servers",
        "context_management",
    }
)
# Fields translated one by one below.
_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
    }
)


def translate_request(
    body: Mapping[str, Any],
    *,
    max_tokens_field: MaxTokensField = "max_tokens",
    model: str | None = None,
) -> dict[str, Any]:
    """The Chat Completions body for a validated Messages ``body``.

    ``model`` replaces the client's model name when given. Raises :class:`RequestError` (400)
    for content the upstream cannot represent.
    """
    out: dict[str, Any] = {"model": model or body["model"]}
    messages = _system_messages(body.get("system"))
    for message in body["messages"]:
        messages.extend(_message(message))
    out["messages"] = messages
    out[max_tokens_field] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    _tools(body, out)
    for name, value in body.items():
        if name not in _TRANSLATED and name not in _DROPPED:
            out[name] = value
    out["stream"] = True
    options = out.get("stream_options")
    out["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return out


# -- system and messages -------------------------------------------------------------------


def _system_messages(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        texts = [_text_of(block, "system") for block in system]
        return [{"role": "system", "content": "\n\n".join(texts)}]
    raise RequestError(400, "system: must be a string or a list of text blocks")


def _text_of(block: Any, where: str) -> str:
    if (
        isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    ):
        text: str = block["text"]
        return text
    raise RequestError(400, f"{where}: only text blocks are supported by an openai upstream")


def _message(message: Any) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise RequestError(400, "messages: each message must be an object")
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant"):
        raise RequestError(400, f"messages: unsupported role {role!r}")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise RequestError(400, "messages: content must be a string or a list of blocks")
    if role == "assistant":
        return [_assistant(content)]
    return _user(content)


def _assistant(blocks: list[Any]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block, "assistant message"))
        elif kind == "tool_use":
            calls.append(_tool_call(block))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # no Chat Completions equivalent; the model does not need its own thoughts
        else:
            raise _unsupported(kind, "assistant")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    tool_input = block.get("input", {})
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {
            "name": block.get("name"),
            # OpenAI carries arguments as a JSON *string*; compact, keys in the client's order.
            "arguments": msgspec.json.encode(tool_input).decode(),
        },
    }


def _user(blocks: list[Any]) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            tool_messages.append(_tool_result(block))
        elif kind == "text":
            parts.append({"type": "text", "text": _text_of(block, "user message")})
        elif kind == "image":
            parts.append(_image(block))
        else:
            raise _unsupported(kind, "user")
    # Tool results first: OpenAI wants the tool messages right after the assistant's calls.
    out = tool_messages
    if parts:
        out.append({"role": "user", "content": _user_content(parts)})
    return out


def _user_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(part["type"] == "text" for part in parts):
        return "\n\n".join(part["text"] for part in parts)
    return parts


def _tool_result(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content", "")
    if isinstance(content, list):
        content = "\n\n".join(_text_of(part, "tool_result content") for part in content)
    elif not isinstance(content, str):
        raise RequestError(400, "tool_result: content must be a string or text blocks")
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content}


def _image(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif isinstance(source, dict) and source.get("type") == "url":
        url = str(source.get("url"))
    else:
        raise RequestError(400, "image: only base64 and url sources are supported")
    return {"type": "image_url", "image_url": {"url": url}}


def _unsupported(kind: Any, role: str) -> RequestError:
    return RequestError(
        400, f"{role} content block type {kind!r} is not supported by an openai upstream"
    )


# -- tools ---------------------------------------------------------------------------------


def _tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        out["tools"] = [_function(tool) for tool in tools]
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if choice.get("disable_parallel_tool_use") and tools:
        out["parallel_tool_calls"] = False


def _function(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or "input_schema" not in tool:
        name = tool.get("name") if isinstance(tool, dict) else None
        raise RequestError(
            400, f"tool {name!r}: server tools have no equivalent on an openai upstream"
        )
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}
