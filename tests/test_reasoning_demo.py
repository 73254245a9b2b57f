"""The demo's reasoning turn: perceived latency measured beside TTFT, difference stated."""

from __future__ import annotations

import io

import anyio
import pytest

from service.reasoning_demo import reasoning_body, reasoning_turn, run_reasoning_turn
from tests.support.stack import relay_stack


def test_reasoning_body_selects_the_thinking_scenario() -> None:
    body = reasoning_body(12_000, 900)
    assert body["model"] == "mock-reasoning"
    assert body["mock"] == {
        "scenario": "thinking",
        "think_ms": 12_000,
        "ttft_ms": 900,
        "tokens": 40,
    }


@pytest.mark.slow
def test_progress_comes_before_ttft_and_long_before_the_answer() -> None:
    # The mock is silent for 1.6 s before thinking: the relay's 1 s progress event comes first.
    with relay_stack() as stack:
        out = io.StringIO()
        report = anyio.run(
            lambda: reasoning_turn(stack.relay_url, 1500, pre_think_ms=1600, out=out)
        )
    client = report["client"]
    assert client["perceived_ms"] < client["ttft_ms"] < client["first_text_ms"]
    # Thinking lasts 1.5 s: the answer comes well after the first progress signal.
    assert report["first_text_minus_perceived_ms"] > 1000
    assert report["ttft_minus_perceived_ms"] == pytest.approx(
        client["ttft_ms"] - client["perceived_ms"], abs=0.2
    )
    assert report["server"]["perceived_ms"] < report["server"]["first_text_ms"]
    assert "before the first answer token" in report["statement"]
    assert report["statement"] in out.getvalue()
    assert report["stream_id"].startswith("rs_")


@pytest.mark.slow
def test_run_reasoning_turn_is_blocking_and_quiet_on_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with relay_stack() as stack:
        report = run_reasoning_turn(stack.relay_url, 300, pre_think_ms=0, quiet=True)
    # The relay's own log lines go to stdout too; the turn itself printed nothing.
    assert "perceived latency" not in capsys.readouterr().out
    assert report["client"]["output_tokens"] > 40  # thinking chunks count as output tokens
    assert report["client"]["perceived_ms"] <= report["client"]["first_text_ms"]
