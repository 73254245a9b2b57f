"""Read and check Anthropic Messages streams in tests: a tiny SSE splitter and a validator.

The splitter is deliberately naive (frames end with a blank line, ``\\n`` line ends only): it
reads the mock's own output, not arbitrary SSE. The validator enforces the ordering rules a
client relies on and returns what the stream said.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StreamSummary", "check_events", "parse_sse"]

_DELTA_FOR_BLOCK = {
    "text": {"text_delta"},
    "tool_use": {"input_json_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
}
_DELTA_TEXT = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}


def parse_sse(raw: bytes) -> list[tuple[str | None, Any]]:
    """Split SSE bytes into ``(event name, parsed data)``; data that is not JSON stays a str."""
    events: list[tuple[str | None, Any]] = []
    for frame in raw.decode().split("\n\n"):
        if not frame.strip():
            continue
        name: str | None = None
        data: list[str] = []
        for line in frame.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        text = "\n".join(data)
        try:
            events.append((name, json.loads(text)))
        except json.JSONDecodeError:
            events.append((name, text))
    return events


@dataclass
class StreamSummary:
    """What a checked stream contained."""

    names: list[str | None] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    """Content blocks as accumulated (text joined, tool input parsed)."""
    token_deltas: int = 0
    """Deltas other than ``signature_delta``."""
    output_tokens: int | None = None
    """Final cumulative ``usage.output_tokens`` from ``message_delta``."""
    stop_reason: str | None = None
    message_id: str | None = None
    error: dict[str, Any] | None = None
    malformed: int = 0
    complete: bool = False
    """Ended with ``message_stop``."""

    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.blocks if b["type"] == "text")


def check_events(
    events: list[tuple[str | None, Any]], *, allow_malformed: bool = False
) -> StreamSummary:
    """Assert Anthropic's ordering rules; an ``error`` event may end a stream early."""
    summary = StreamSummary(names=[name for name, _ in events])
    state = _State(summary)
    for name, data in events:
        if not isinstance(data, dict):
            assert allow_malformed, f"frame data is not JSON: {data!r}"
            summary.malformed += 1
            continue
        assert name == data["type"], f"event name {name!r} != data type {data['type']!r}"
        state.feed(data)
    if summary.error is None:
        assert summary.complete, "stream ended without message_stop"
    return summary


class _State:
    def __init__(self, summary: StreamSummary) -> None:
        self.s = summary
        self.started = False
        self.open: int | None = None
        self.parts: list[str] = []
        self.delta_seen = False

    def feed(self, data: dict[str, Any]) -> None:
        kind = data["type"]
        assert not self.s.complete, f"{kind} after message_stop"
        assert self.s.error is None, f"{kind} after error"
        if kind == "ping":
            return
        if kind == "error":
            self.s.error = data["error"]
            return
        if kind == "message_start":
            assert not self.started, "second message_start"
            self.started = True
            self.s.message_id = data["message"]["id"]
            assert data["message"]["content"] == []
            assert data["message"]["usage"]["input_tokens"] >= 1
            return
        assert self.started, f"{kind} before message_start"
        getattr(self, "_" + kind)(data)

    def _content_block_start(self, data: dict[str, Any]) -> None:
        assert self.open is None, "block started while another is open"
        assert data["index"] == len(self.s.blocks), "block indexes must count up from 0"
        assert not self.delta_seen, "content block after message_delta"
        self.open = data["index"]
        self.s.blocks.append(dict(data["content_block"]))
        self.parts = []

    def _content_block_delta(self, data: dict[str, Any]) -> None:
        assert self.open is not None and data["index"] == self.open, "delta for a closed block"
        block, delta = self.s.blocks[self.open], data["delta"]
        assert delta["type"] in _DELTA_FOR_BLOCK[block["type"]], "delta type != block type"
        if delta["type"] == "signature_delta":
            block["signature"] = delta["signature"]
            return
        self.s.token_deltas += 1
        self.parts.append(delta[_DELTA_TEXT[delta["type"]]])

    def _content_block_stop(self, data: dict[str, Any]) -> None:
        assert self.open is not None and data["index"] == self.open, "stop for a closed block"
        block, joined = self.s.blocks[self.open], "".join(self.parts)
        if block["type"] == "tool_use":
            block["input"] = json.loads(joined) if joined else {}
        else:
            block[block["type"]] = joined
        self.open = None

    def _message_delta(self, data: dict[str, Any]) -> None:
        assert self.open is None, "message_delta while a block is open"
        tokens = data["usage"]["output_tokens"]
        assert self.s.output_tokens is None or tokens >= self.s.output_tokens, "usage shrank"
        self.s.output_tokens = tokens
        self.s.stop_reason = data["delta"]["stop_reason"]
        self.delta_seen = True

    def _message_stop(self, _data: dict[str, Any]) -> None:
        assert self.delta_seen, "message_stop without message_delta"
        self.s.complete = True
