"""Fold a generation's events into one Message, for non-streaming requests.

Text is gathered in lists and joined once per block: a ``large`` answer has tens of thousands
of deltas, and repeated string concatenation would be quadratic.
"""

from __future__ import annotations

import json
from typing import Any

from service.mock.frames import Payload

__all__ = ["MessageCollector"]

_DELTA_FIELD = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}


class MessageCollector:
    """Accumulates stream events; :meth:`message` gives the final Message JSON object."""

    def __init__(self) -> None:
        self._message: Payload = {}
        self._blocks: list[Payload] = []
        self._parts: list[list[str]] = []
        self.error: Payload | None = None
        """The ``error`` event's body, if the generation failed."""

    def add(self, event: Payload) -> None:
        """Fold one event in."""
        kind = event["type"]
        if kind == "message_start":
            self._message = dict(event["message"])
        elif kind == "content_block_start":
            self._blocks.append(dict(event["content_block"]))
            self._parts.append([])
        elif kind == "content_block_delta":
            self._delta(event["index"], event["delta"])
        elif kind == "content_block_stop":
            self._stop(event["index"])
        elif kind == "message_delta":
            self._message.update(event["delta"])
            self._message["usage"] = {**self._message.get("usage", {}), **event["usage"]}
        elif kind == "error":
            self.error = event

    def _delta(self, index: int, delta: Payload) -> None:
        kind = delta["type"]
        if kind == "signature_delta":
            self._blocks[index]["signature"] = delta["signature"]
        elif kind in _DELTA_FIELD:
            self._parts[index].append(delta[_DELTA_FIELD[kind]])

    def _stop(self, index: int) -> None:
        block, joined = self._blocks[index], "".join(self._parts[index])
        if block["type"] == "tool_use":
            # Parsed exactly once, at the block's end; an empty input is {}.
            block["input"] = json.loads(joined) if joined else {}
        elif block["type"] in ("text", "thinking"):
            block[block["type"]] = joined
        self._parts[index] = []

    def message(self) -> dict[str, Any]:
        """The accumulated Message (content blocks in index order)."""
        return {**self._message, "content": self._blocks}
