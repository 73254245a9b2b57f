"""MessageCollector: the non-streaming fold gives what a stream client would assemble."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.mock import MockSettings
from service.mock.collect import MessageCollector
from service.mock.request import parse_request
from service.mock.scenarios import Emit, build_script
from tests.support.mock_streams import check_events, parse_sse


def _fold(mock: dict[str, Any]) -> tuple[MessageCollector, list[Emit]]:
    body = {
        "model": "claude-test",
        "max_tokens": 12,
        "messages": [{"role": "user", "content": "hi"}],
        "mock": mock,
    }
    request = parse_request(json.dumps(body).encode(), {})
    steps = build_script(request, MockSettings(jitter=0), "msg_mock_x", inject_failure=True)
    emits = [s for s in steps if isinstance(s, Emit)]
    collector = MessageCollector()
    for emit in emits:
        if emit.payload is not None:
            collector.add(emit.payload)
    return collector, emits


@pytest.mark.parametrize(
    "mock",
    [
        {"scenario": "text"},
        {"scenario": "tool_use"},
        {"scenario": "thinking", "think_ms": 300},
        {"scenario": "large", "tokens": 50, "token_bytes": 8},
    ],
)
def test_fold_matches_the_streamed_blocks(mock: dict[str, Any]) -> None:
    collector, emits = _fold(mock)
    summary = check_events(parse_sse(b"".join(e.frame for e in emits)))
    message = collector.message()
    assert collector.error is None
    assert message["id"] == "msg_mock_x"
    assert message["content"] == summary.blocks
    assert message["stop_reason"] == summary.stop_reason
    assert message["usage"]["output_tokens"] == summary.output_tokens
    assert message["usage"]["input_tokens"] >= 1


def test_fold_keeps_the_error() -> None:
    collector, _ = _fold({"scenario": "error_mid_stream", "fail_after": 1})
    assert collector.error == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
