"""Contract tests for the hosted APIs: configuration and recorded streams.

The relay is configured exactly as runbook/upstreams.md tells an operator to configure it for
api.anthropic.com and api.openai.com, and each hosted API's recorded streams and error bodies
(tests/fixtures/hosted/, tests/fixtures/openai/openai_*.sse; hand-made from the published
formats) are replayed by a loopback server standing in for the provider. The official
Anthropic SDK reads the relay's answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import msgspec
import pytest

from service.app import create_app
from service.config import Settings
from service.events import TextBlock, ThinkingBlock, ToolUseBlock
from service.upstream.factory import make_adapter
from tests.support.servers import run_uvicorn
from tests.support.stack import record_stream

FIXTURES = Path(__file__).parent / "fixtures"
ANTHROPIC_KEY = "sk-ant-api03-contract-test-key-000000000000"
OPENAI_KEY = "sk-proj-contract-test-key-0000000000000000"
BODY = {
    "model": "claude-contract-test",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Hello"}],
}


# -- configuration ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_hosted_anthropic_configuration() -> None:
    settings = Settings.from_environ(
        {
            "RELAY_UPSTREAM_URL": "https://api.anthropic.com",
            "RELAY_UPSTREAM_PROVIDER": "anthropic",
            "RELAY_UPSTREAM_API_KEY": ANTHROPIC_KEY,
        }
    )
    assert ANTHROPIC_KEY not in repr(settings)
    raw = msgspec.json.encode({**BODY, "stream": True})
    async with httpx.AsyncClient() as client:
        request = make_adapter(settings).build_request(client, BODY, raw, {}, "rs_1")
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == ANTHROPIC_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.content == raw  # passthrough: the client's bytes


@pytest.mark.anyio
@pytest.mark.parametrize("base", ["https://api.openai.com", "https://api.openai.com/v1"])
async def test_hosted_openai_configuration(base: str) -> None:
    settings = Settings.from_environ(
        {
            "RELAY_UPSTREAM_URL": base,
            "RELAY_UPSTREAM_PROVIDER": "openai",
            "RELAY_UPSTREAM_API_KEY": OPENAI_KEY,
        }
    )
    body = {**BODY, "model": "gpt-4o-mini"}
    async with httpx.AsyncClient() as client:
        request = make_adapter(settings).build_request(client, body, None, {}, "rs_1")
    assert str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "x-api-key" not in request.headers
    sent = msgspec.json.decode(request.content)
    assert sent["model"] == "gpt-4o-mini"
    # api.openai.com's reasoning models refuse max_tokens; every current model takes this.
    assert sent["max_completion_tokens"] == 256
    assert "max_tokens" not in sent


# -- a loopback stand-in for the provider -----------------------------------------------

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Replay:
    """Answers every POST with one recorded response; remembers what it was sent."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            self.requests.append((scope["path"], headers, body))
        response_headers = [(b"content-type", self.content_type.encode())]
        response_headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send(
            {"type": "http.response.start", "status": self.status, "headers": response_headers}
        )
        # One SSE block per write, as a provider flushes them.
        for block in self.body.split(b"\n\n"):
            if block:
                await send(
                    {"type": "http.response.body", "body": block + b"\n\n", "more_body": True}
                )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextmanager
def relay_in_front_of(replay: Replay, provider: str, **overrides: Any) -> Iterator[str]:
    with run_uvicorn(replay) as provider_url:
        key = ANTHROPIC_KEY if provider == "anthropic" else OPENAI_KEY
        settings = Settings.from_environ(
            {},
            upstream_url=provider_url,
            upstream_provider=provider,
            upstream_api_key=key,
            **overrides,
        )
        with run_uvicorn(create_app(settings)) as relay_url:
            yield relay_url


def sdk(relay_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=relay_url, api_key="client-key", max_retries=0)


def stream_final(relay_url: str) -> anthropic.types.Message:
    with sdk(relay_url).messages.stream(**BODY) as stream:
        return stream.get_final_message()


# -- recorded streams through the relay ------------------------------------------------


def test_anthropic_text_passes_through_byte_for_byte() -> None:
    recorded = (FIXTURES / "hosted" / "anthropic_text.sse").read_bytes()
    replay = Replay(body=recorded)
    with relay_in_front_of(replay, "anthropic") as relay:
        message = stream_final(relay)
        raw = record_stream(f"{relay}/v1/messages", {**BODY, "stream": True})
    assert message.content[0].text == "Hello! How can I help you today?"
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == (
        "end_turn",
        25,
        15,
    )
    # Every recorded frame reached the client unchanged, each followed by the relay's id line.
    forwarded = [
        b.raw for b in raw.blocks if b.event is not None and not b.event.startswith("relay_")
    ]
    expected = [block for block in recorded.split(b"\n\n") if block]
    assert [f.rsplit(b"\nid: ", 1)[0] for f in forwarded] == expected
    path, headers, _ = replay.requests[0]
    assert (path, headers["x-api-key"]) == ("/v1/messages", ANTHROPIC_KEY)
    assert "client-key" not in json.dumps(headers)


def test_anthropic_tool_use_and_thinking_recordings() -> None:
    tool = Replay(body=(FIXTURES / "hosted" / "anthropic_tool_use.sse").read_bytes())
    with relay_in_front_of(tool, "anthropic") as relay:
        message = stream_final(relay)
    block = message.content[1]
    assert (block.type, block.name) == ("tool_use", "get_weather")
    assert block.input == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert message.stop_reason == "tool_use"
    thinking = Replay(body=(FIXTURES / "hosted" / "anthropic_thinking.sse").read_bytes())
    with relay_in_front_of(thinking, "anthropic") as relay:
        message = stream_final(relay)
    assert message.content[0].type == "thinking"
    assert message.content[0].signature.startswith("EqQBCgIYAhIM")
    assert message.content[1].text == "The greatest common divisor of 1071 and 462 is **21**."


def test_openai_text_recording_through_the_translation() -> None:
    replay = Replay(body=(FIXTURES / "openai" / "openai_text_usage.sse").read_bytes())
    with relay_in_front_of(replay, "openai") as relay:
        message = stream_final(relay)
    assert message.content[0].text == "Server-sent events stream text \u2013 café ☕."
    assert message.model == "gpt-4o-mini-2024-07-18"
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (
        179,
        1024,
        8,
    )
    path, headers, body = replay.requests[0]
    assert (path, headers["authorization"]) == ("/v1/chat/completions", f"Bearer {OPENAI_KEY}")
    assert "x-api-key" not in headers
    assert json.loads(body)["messages"] == [{"role": "user", "content": "Hello"}]


def test_openai_parallel_tool_calls_recording_reaches_the_sdk_as_tool_use() -> None:
    replay = Replay(body=(FIXTURES / "openai" / "openai_parallel_tools.sse").read_bytes())
    with relay_in_front_of(replay, "openai") as relay:
        message = stream_final(relay)
        created = sdk(relay).messages.create(**BODY)  # non-streaming: the same message
    tools = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert tools == [
        ("call_q8DKmBd0xT4mNRJ2sPz7hVwE", "get_weather", {"location": "Paris, France"}),
        (
            "call_Zr3LxYb9eQ1uTcA6nK0dFpGs",
            "get_weather",
            {"location": "東京, Japan", "unit": "celsius"},
        ),
    ]
    assert message.stop_reason == "tool_use"
    assert created.model_dump()["content"] == message.model_dump()["content"]


# -- error contracts ------------------------------------------------------------------


def _error_event(relay_url: str) -> dict[str, Any]:
    recording = record_stream(f"{relay_url}/v1/messages", {**BODY, "stream": True})
    return json.loads(recording.first_event("error").data or "{}")


@pytest.mark.parametrize(
    ("provider", "fixture", "error_type"),
    [
        ("anthropic", "hosted/anthropic_overloaded_midstream.sse", "overloaded_error"),
        ("openai", "openai/openai_error_midstream.sse", "api_error"),
    ],
)
def test_mid_stream_errors(provider: str, fixture: str, error_type: str) -> None:
    replay = Replay(body=(FIXTURES / fixture).read_bytes())
    with relay_in_front_of(replay, provider) as relay:
        error = _error_event(relay)
    assert error["error"]["type"] == error_type
    assert error["relay"]["partial"] is True  # content was forwarded: the client retries the turn
    assert error["relay"]["retryable"] is True
    assert len(replay.requests) == 1  # never retried inside the relay after content


@pytest.mark.parametrize(
    ("provider", "status", "body", "error_type", "retried"),
    [
        (
            "anthropic",
            529,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "overloaded_error",
            True,
        ),
        (
            "anthropic",
            401,
            {
                "type": "error",
                "error": {"type": "authentication_error", "message": "invalid x-api-key"},
            },
            "authentication_error",
            False,
        ),
        (
            "openai",
            429,
            {
                "error": {
                    "message": "Rate limit reached for gpt-4o-mini",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            "rate_limit_error",
            True,
        ),
        (
            "openai",
            429,
            {
                "error": {
                    "message": "You exceeded your current quota",
                    "type": "insufficient_quota",
                    "param": None,
                    "code": "insufficient_quota",
                }
            },
            "billing_error",
            False,
        ),
        (
            "openai",
            401,
            {
                "error": {
                    "message": f"Incorrect API key provided: {OPENAI_KEY}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            "authentication_error",
            False,
        ),
    ],
    ids=["anthropic-529", "anthropic-401", "openai-429-rate", "openai-429-quota", "openai-401"],
)
def test_status_errors(
    provider: str, status: int, body: dict[str, Any], error_type: str, retried: bool
) -> None:
    replay = Replay(status=status, body=msgspec.json.encode(body), content_type="application/json")
    overrides = {"retry_max_attempts": 2, "retry_base_delay": 0.01, "retry_max_delay": 0.02}
    with relay_in_front_of(replay, provider, **overrides) as relay:
        error = _error_event(relay)
    assert error["error"]["type"] == error_type
    assert error["relay"]["partial"] is False
    assert len(replay.requests) == (2 if retried else 1)
    assert OPENAI_KEY not in json.dumps(error)  # a quoted key never reaches the client


def test_typed_blocks_are_what_the_relay_accumulates() -> None:
    # The non-streaming answer is the relay's own accumulation of the translated stream.
    replay = Replay(body=(FIXTURES / "openai" / "vllm_reasoning_tools.sse").read_bytes())
    with relay_in_front_of(replay, "openai") as relay:
        response = httpx.post(f"{relay}/v1/messages", json=BODY, timeout=30)
    message = response.json()
    kinds = [block["type"] for block in message["content"]]
    assert kinds == [ThinkingBlock.type, TextBlock.type, ToolUseBlock.type]
    assert message["stop_reason"] == "tool_use"
