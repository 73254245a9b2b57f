"""Scenario scripts, checked without a server: event order, usage, timing plan, failures."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from service.mock import MockSettings
from service.mock.frames import MALFORMED_FRAME
from service.mock.request import parse_request
from service.mock.scenarios import TOOL_FRAGMENTS, TOOL_INPUT, Drop, Emit, Pause, Step, build_script
from tests.support.mock_streams import StreamSummary, check_events, parse_sse

_STEADY = MockSettings(ttft_ms=100, tpot_ms=10, jitter=0)


def _steps(
    mock: dict[str, Any] | None = None,
    *,
    max_tokens: int = 12,
    settings: MockSettings = _STEADY,
    inject: bool = True,
    prompt: str = "Hello",
) -> list[Step]:
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    if mock is not None:
        body["mock"] = mock
    request = parse_request(json.dumps(body).encode(), {})
    return list(build_script(request, settings, "msg_mock_test", inject_failure=inject))


def _summary(steps: list[Step], **kwargs: Any) -> StreamSummary:
    raw = b"".join(s.frame for s in steps if isinstance(s, Emit))
    return check_events(parse_sse(raw), **kwargs)


def _token_emits(steps: list[Step]) -> int:
    return sum(1 for s in steps if isinstance(s, Emit) and s.token)


def _pauses_before_tokens(steps: list[Step]) -> list[float]:
    return [
        prev.seconds
        for prev, step in itertools.pairwise(steps)
        if isinstance(step, Emit) and step.token and isinstance(prev, Pause)
    ]


def test_text_fills_max_tokens_by_default() -> None:
    steps = _steps(max_tokens=12)
    summary = _summary(steps)
    assert summary.names[:2] == ["message_start", "ping"]
    assert summary.message_id == "msg_mock_test"
    assert summary.stop_reason == "max_tokens"
    assert summary.output_tokens == summary.token_deltas == _token_emits(steps) == 12
    words = summary.text().split(" ")
    assert words[0] == ""  # every token is one word with a leading space
    assert len(words) == 13


def test_text_tokens_option_ends_the_turn() -> None:
    summary = _summary(_steps({"tokens": 5}, max_tokens=100))
    assert (summary.stop_reason, summary.output_tokens, summary.token_deltas) == ("end_turn", 5, 5)


def test_text_is_deterministic_for_a_seed_and_prompt() -> None:
    first = _summary(_steps({"seed": 1}, max_tokens=30)).text()
    assert first == _summary(_steps({"seed": 1}, max_tokens=30)).text()
    assert first != _summary(_steps({"seed": 2}, max_tokens=30)).text()
    assert first != _summary(_steps({"seed": 1}, max_tokens=30, prompt="Other")).text()
    # Jitter draws from its own generator: timing options never change the words.
    jittery = MockSettings(ttft_ms=100, tpot_ms=10, jitter=0.5)
    assert first == _summary(_steps({"seed": 1}, max_tokens=30, settings=jittery)).text()


def test_ttft_before_the_first_delta_and_tpot_between_deltas() -> None:
    steps = _steps({"ttft_ms": 250, "tpot_ms": 7, "tokens": 4})
    assert _pauses_before_tokens(steps) == [0.25, 0.007, 0.007, 0.007]
    # message_start and ping go out at once; the wait is before content.
    assert isinstance(steps[0], Emit) and isinstance(steps[1], Emit)


def test_jitter_stays_within_its_fraction_and_is_seeded() -> None:
    jittery = MockSettings(ttft_ms=100, tpot_ms=10, jitter=0.2, seed=3)
    pauses = _pauses_before_tokens(_steps({"tokens": 50}, settings=jittery))
    assert 0.08 <= pauses[0] <= 0.12
    assert all(0.008 <= p <= 0.012 for p in pauses[1:])
    assert len(set(pauses[1:])) > 10
    assert pauses == _pauses_before_tokens(_steps({"tokens": 50}, settings=jittery))


def test_tool_use_streams_awkward_fragments_then_a_zero_argument_tool() -> None:
    steps = _steps({"scenario": "tool_use"})
    summary = _summary(steps)
    assert summary.stop_reason == "tool_use"
    assert summary.output_tokens == summary.token_deltas == _token_emits(steps)
    text, weather, clock = summary.blocks
    assert text["type"] == "text" and text["text"].startswith("I'll check the weather")
    assert (weather["type"], weather["name"], weather["input"]) == (
        "tool_use",
        "get_weather",
        TOOL_INPUT,
    )
    assert (clock["name"], clock["input"]) == ("get_time", {})
    assert weather["id"] != clock["id"]
    events = parse_sse(b"".join(s.frame for s in steps if isinstance(s, Emit)))
    fragments = [
        d["delta"]["partial_json"]
        for _, d in events
        if d["type"] == "content_block_delta" and d["index"] == 1
    ]
    assert tuple(fragments) == TOOL_FRAGMENTS
    zero_arg = [d for _, d in events if d["type"] == "content_block_delta" and d["index"] == 2]
    assert [d["delta"]["partial_json"] for d in zero_arg] == [""]


def test_tool_fragments_are_cut_at_awkward_places() -> None:
    assert TOOL_FRAGMENTS[0] == ""
    joined = "".join(TOOL_FRAGMENTS)
    assert json.loads(joined) == TOOL_INPUT
    cuts = [len("".join(TOOL_FRAGMENTS[: i + 1])) for i in range(len(TOOL_FRAGMENTS) - 1)]
    assert any(joined[c - 1] == "\\" for c in cuts), "a cut right after a backslash"
    assert any(joined[c - 3 : c] == "\\u0" for c in cuts), "a cut inside a \\u escape"
    assert any(ord(joined[c - 1]) > 127 and ord(joined[c]) > 127 for c in cuts), (
        "a cut between two multi-byte characters"
    )
    # On the wire: raw UTF-8 next to JSON-escaped escapes (\u0 cut short in its fragment).
    raw = b"".join(s.frame for s in _steps({"scenario": "tool_use"}) if isinstance(s, Emit))
    assert "東".encode() in raw
    assert b'caf\\\\u0"' in raw


def test_thinking_spreads_deltas_over_think_ms_then_signs_and_answers() -> None:
    steps = _steps({"scenario": "thinking", "think_ms": 600, "ttft_ms": 50, "tokens": 3})
    summary = _summary(steps)
    thinking, answer = summary.blocks
    assert thinking["type"] == "thinking" and thinking["thinking"].startswith("Let me think.")
    assert thinking["signature"]
    assert answer["type"] == "text"
    chunks = 4  # 600 ms at one chunk per 150 ms
    assert summary.output_tokens == summary.token_deltas == chunks + 3
    assert summary.stop_reason == "end_turn"
    assert _pauses_before_tokens(steps)[:chunks] == [0.05, 0.15, 0.15, 0.15]
    names = [
        d["delta"]["type"]
        for s in steps
        if isinstance(s, Emit) and (d := s.payload) and d["type"] == "content_block_delta"
    ]
    assert names.index("signature_delta") == chunks


def test_thinking_counts_toward_max_tokens() -> None:
    summary = _summary(_steps({"scenario": "reasoning", "think_ms": 300}, max_tokens=10))
    assert (summary.output_tokens, summary.stop_reason) == (10, "max_tokens")


def test_error_mid_stream_after_fail_after_tokens() -> None:
    summary = _summary(_steps({"scenario": "error_mid_stream", "fail_after": 3}))
    assert summary.token_deltas == 3
    assert summary.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert not summary.complete and summary.names[-1] == "error"


def test_failure_happens_at_the_end_when_fail_after_exceeds_tokens() -> None:
    summary = _summary(_steps({"scenario": "error_mid_stream", "tokens": 2, "fail_after": 50}))
    assert summary.token_deltas == 2
    assert summary.error is not None


def test_drop_stops_the_script_after_fail_after_tokens() -> None:
    steps = _steps({"scenario": "drop", "fail_after": 4})
    assert isinstance(steps[-1], Drop)
    assert _token_emits(steps) == 4


def test_stall_pauses_then_continues() -> None:
    steps = _steps({"scenario": "stall", "fail_after": 2, "stall_ms": 5000, "tokens": 5})
    assert 5.0 in [s.seconds for s in steps if isinstance(s, Pause)]
    stall_at = next(i for i, s in enumerate(steps) if isinstance(s, Pause) and s.seconds == 5.0)
    assert _token_emits(steps[:stall_at]) == 2
    assert _summary(steps).output_tokens == 5


def test_default_stall_is_five_minutes() -> None:
    steps = _steps({"scenario": "stall"})
    assert max(s.seconds for s in steps if isinstance(s, Pause)) == 300.0


def test_malformed_frame_mid_stream_then_the_stream_goes_on() -> None:
    steps = _steps({"scenario": "malformed", "fail_after": 2, "tokens": 4})
    assert MALFORMED_FRAME in [s.frame for s in steps if isinstance(s, Emit)]
    summary = _summary(steps, allow_malformed=True)
    assert summary.malformed == 1
    assert summary.complete and summary.output_tokens == 4


@pytest.mark.parametrize("scenario", ["error_mid_stream", "drop", "stall", "malformed"])
def test_failure_scenarios_play_clean_when_not_injected(scenario: str) -> None:
    steps = _steps({"scenario": scenario, "tokens": 6}, inject=False)
    assert not any(isinstance(s, Drop) for s in steps)
    summary = _summary(steps)
    assert summary.complete and summary.output_tokens == 6 and summary.malformed == 0


def test_large_reuses_one_precomputed_frame_without_pauses() -> None:
    steps = _steps({"scenario": "large", "tokens": 100, "token_bytes": 64})
    tokens = [s for s in steps if isinstance(s, Emit) and s.token]
    assert len(tokens) == 100
    assert all(t is tokens[0] for t in tokens)
    pauses = [s.seconds for s in steps if isinstance(s, Pause)]
    assert pauses[0] == 0.1  # TTFT still applies
    assert set(pauses[1:]) == {0}
    summary = _summary(steps)
    assert summary.output_tokens == 100
    assert all(len(word) == 64 for word in [summary.text()[:64], summary.text()[-64:]])
    assert len(summary.text()) == 6400


def test_large_defaults_to_twenty_thousand_tokens_of_512_bytes() -> None:
    steps = _steps({"scenario": "large"}, settings=MockSettings(ttft_ms=0))
    tokens = [s for s in steps if isinstance(s, Emit) and s.token]
    assert len(tokens) == 20_000
    payload = tokens[0].payload
    assert payload is not None and len(payload["delta"]["text"].encode()) == 512
    assert all(s.seconds == 0 for s in steps if isinstance(s, Pause))
