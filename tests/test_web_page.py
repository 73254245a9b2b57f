"""The chat page in real headless Chromium against the real relay and mock on loopback.

What a person watching the page would check: tokens render as they arrive, Stop stops the
text *and* the provider, tool arguments appear only once complete (parsed once), a reasoning
model shows a thinking state with a clock long before its answer, a dropped connection is
resumed without a gap, and a failed stream offers a whole-turn Retry. Screenshots of each
stage go to artifacts/screenshots/.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser

from service.mock import MockSettings
from service.mock.scenarios import TOOL_INPUT
from tests.support.browser import ChatPage, chromium
from tests.support.ledger import assert_aborted_and_frozen, generation, wait_for_end
from tests.support.stack import Stack, relay_stack
from tests.support.tcpproxy import cuttable_proxy

pytestmark = pytest.mark.slow

_MOCK = MockSettings(ttft_ms=150.0, tpot_ms=30.0)
_GRACE_MS = 300.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with relay_stack(mock_settings=_MOCK) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def chat(browser: Browser, stack: Stack) -> Iterator[ChatPage]:
    page = ChatPage.open(browser, stack.relay_url)
    yield page
    assert page.errors == [], page.errors
    page.close()


def _steps(samples: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The samples at which the answer's length changed."""
    out: list[tuple[float, int]] = []
    for t, n in samples:
        if not out or n != out[-1][1]:
            out.append((t, n))
    return out


def _words(text: str) -> list[str]:
    return text.split()


def test_tokens_render_incrementally_with_live_figures(chat: ChatPage, stack: Stack) -> None:
    started = chat.start_sampling()
    chat.send("Tell me about stream relays.", mock={"tokens": 80, "tpot_ms": 40})
    chat.wait_for("turn.querySelector('.answer').textContent.split(' ').length > 25")
    live = chat.page.locator('[data-metric="tpot_ms"]').inner_text()
    itl = chat.page.locator('[data-metric="itl_last_ms"]').inner_text()
    chat.screenshot("web-01-text-streaming")
    assert chat.wait_for_state("completed", "error", "stopped") == "completed"
    ended = chat.now()
    steps = [(t, n) for t, n in _steps(chat.samples()) if n > 0]

    assert len(_words(chat.answer_text())) == 80
    assert len(steps) >= 15, steps  # many visible steps, not one burst
    assert all(b[1] > a[1] for a, b in itertools.pairwise(steps))
    first_at = steps[0][0] - started
    # The first words show in the first quarter of the turn (80 x 40 ms of tokens follow).
    assert first_at < 0.25 * (ended - started), (first_at, ended - started)
    assert re.fullmatch(r"\d+\.\d ms", live), live  # TPOT shown while streaming
    assert re.fullmatch(r"\d+ ms", itl), itl
    chat.screenshot("web-02-text-done")

    # The page posted what it observed, and the relay recorded it as a browser report.
    assert chat.wait_for_metrics_report() == "yes"
    assert chat.page.locator('[data-server="outcome"]').inner_text() == "completed"
    assert re.fullmatch(r"-?\d+ ms", chat.page.locator('[data-server="last_mile_ms"]').inner_text())
    exposition = httpx.get(f"{stack.relay_url}/metrics").text
    assert re.search(
        r'relay_client_time_to_first_token_seconds_count\{[^}]*client="browser"', exposition
    )


def test_stop_freezes_the_text_and_aborts_the_generation(chat: ChatPage, stack: Stack) -> None:
    chat.start_sampling()
    chat.send("Write a very long answer.", mock={"tokens": 3000, "tpot_ms": 30}, max_tokens=4000)
    chat.wait_for("turn.querySelector('.answer').textContent.split(' ').length > 15")
    chat.page.click("#stop")
    chat.wait_for_state("stopped", timeout=10)
    time.sleep(1.2)  # keep sampling: nothing may appear after the grace period
    stop_at = chat.stop_pressed_at()
    assert stop_at is not None
    samples = chat.samples()
    before = [n for t, n in samples if t < stop_at]
    after_grace = [n for t, n in samples if t >= stop_at + _GRACE_MS]
    assert before[-1] > 0
    assert len(after_grace) >= 20, "the sampler must cover about a second after Stop"
    assert len(set(after_grace)) == 1, "text kept appearing after Stop"
    assert after_grace[-1] == len(chat.answer_text())
    chat.screenshot("web-03-stopped")

    stream_id = chat.data("stream-id")
    assert stream_id
    # Stop called the cancel endpoint, and the provider's generation stopped for good.
    chat.wait_for("turn.dataset.cancel")
    assert chat.data("cancel") == "cancelled"
    tokens = assert_aborted_and_frozen(stack.mock_url, stream_id, asked=3000)
    assert tokens < 3000
    assert chat.console_lines(f"stream.cancel stream_id={stream_id}")


def test_tool_call_shows_arguments_only_once_complete(chat: ChatPage) -> None:
    chat.send("What's the weather?", model="mock-tool_use", mock={"tpot_ms": 150})
    weather = chat.page.locator('.tool[data-tool-name="get_weather"]')
    chat.wait_for(
        "turn.querySelector('.tool[data-tool-name=\"get_weather\"] .tool-status')"
        "?.textContent.match(/receiving arguments \\([1-9]\\d* bytes\\)/)"
    )
    receiving = weather.locator(".tool-status").inner_text()
    args_hidden_while_receiving = weather.locator(".tool-args").is_hidden()
    state_while_receiving = weather.get_attribute("data-state")
    chat.screenshot("web-04-tool-receiving")
    assert chat.wait_for_state("completed", "error", "stopped") == "completed"

    assert re.fullmatch(r"receiving arguments \(\d+ bytes\)", receiving), receiving
    assert args_hidden_while_receiving
    assert state_while_receiving == "receiving"
    assert weather.get_attribute("data-state") == "done"
    assert json.loads(weather.locator(".tool-args").inner_text()) == TOOL_INPUT
    no_args = chat.page.locator('.tool[data-tool-name="get_time"]')
    assert json.loads(no_args.locator(".tool-args").inner_text()) == {}
    # One parse per tool block, each proven by exactly one console line.
    assert len(chat.console_lines("tool_input.parsed tool=get_weather ")) == 1
    assert len(chat.console_lines("tool_input.parsed tool=get_time ")) == 1
    assert "parse_attempts=1" in chat.console_lines("tool_input.parsed tool=get_weather ")[0]
    assert chat.console_lines("tool_input.parse_failed") == []
    chat.screenshot("web-05-tool-done")


def test_reasoning_shows_thinking_state_long_before_the_answer(chat: ChatPage) -> None:
    chat.send("Think hard.", model="mock-reasoning", mock={"think_ms": 4000, "tokens": 30})
    clicked = time.perf_counter()
    chat.wait_for_state("thinking", timeout=10)
    thinking_seen = time.perf_counter() - clicked
    chat.wait_for("turn.querySelector('.thinking-text').textContent.length > 0")
    activity = chat.turn.locator(".activity").inner_text()
    answer_while_thinking = chat.answer_text()
    chat.page.wait_for_timeout(1500)  # the clock keeps moving while the model thinks
    activity_later = chat.turn.locator(".activity").inner_text()
    chat.screenshot("web-06-reasoning-thinking")
    chat.wait_for("turn.querySelector('.answer').textContent.length > 0", timeout=30)
    answer_seen = time.perf_counter() - clicked
    assert chat.wait_for_state("completed", "error", "stopped") == "completed"

    assert re.fullmatch(r"Thinking · \d+\.\d s", activity), activity
    assert activity_later != activity
    assert answer_while_thinking == ""
    assert thinking_seen < 2.0  # wall clock incl. Playwright polling; the page's own figure:
    perceived = int(chat.data("perceived-ms") or "-1")
    first_text = int(chat.data("first-text-ms") or "-1")
    assert 0 <= perceived < 1000
    assert first_text - perceived > 3000
    assert answer_seen - thinking_seen > 2.5
    assert chat.data("thought-ms") is not None
    assert chat.turn.locator(".thinking-label").inner_text().startswith("Thought for ")
    gap = chat.page.locator("#perceived-gap").inner_text()
    assert re.fullmatch(r"progress shown \d+\.\d s before the first answer token", gap), gap
    chat.screenshot("web-07-reasoning-done")


def test_relay_progress_alone_shows_the_thinking_clock(chat: ChatPage) -> None:
    # The model is silent for ~2.5 s before its first thinking delta: only the relay's
    # progress events (every 1 s of silence) can tell the person something is happening.
    mock = {"ttft_ms": 2500, "think_ms": 600, "tokens": 10, "jitter": 0}
    chat.send("Think.", model="mock-reasoning", mock=mock)
    chat.wait_for("turn.dataset.progress", timeout=10)
    activity = chat.turn.locator(".activity").inner_text()
    ttft_then = chat.data("ttft-ms")
    thinking_text_then = chat.turn.locator(".thinking-text").text_content()
    chat.screenshot("web-08-relay-progress")
    assert chat.wait_for_state("completed", "error", "stopped") == "completed"

    assert re.fullmatch(r"Thinking · \d+\.\d s", activity), activity
    assert ttft_then is None
    assert thinking_text_then == ""
    perceived = int(chat.data("perceived-ms") or "-1")
    ttft = int(chat.data("ttft-ms") or "-1")
    assert 0 < perceived < ttft
    assert ttft - perceived > 800


def test_dropped_connection_is_resumed_without_gap(browser: Browser, stack: Stack) -> None:
    mock = {"tokens": 150, "tpot_ms": 30}
    prompt = "Resume me."
    with cuttable_proxy(stack.relay_url) as (proxy_url, proxy):
        chat = ChatPage.open(browser, proxy_url)
        try:
            chat.send(prompt, mock=mock)
            chat.wait_for("turn.querySelector('.answer').textContent.split(' ').length > 20")
            proxy.cut()
            assert chat.wait_for_state("completed", "error", "stopped") == "completed"
            chat.screenshot("web-09-resumed")
            assert chat.errors == []
            text = chat.answer_text()
            resumes = chat.data("resumes")
            stream_id = chat.data("stream-id")
            resume_lines = chat.console_lines("stream.resume ")
        finally:
            chat.close()
    assert resumes is not None and int(resumes) >= 1
    assert resume_lines
    assert stream_id
    # One generation, played to its end: the resume attached to it, nothing was re-generated.
    record = wait_for_end(stack.mock_url, stream_id)
    assert record["state"] == "completed"
    assert record["tokens"] == 150
    # No gap, no duplicate: the exact answer the mock generates for this conversation.
    reference = httpx.post(
        f"{stack.mock_url}/v1/messages",
        json={
            "model": "mock-text",
            "max_tokens": 200,
            "messages": [{"role": "user", "content": prompt}],
            "mock": mock,
        },
    ).json()
    expected = "".join(block["text"] for block in reference["content"])
    assert text.split() == expected.split()


def test_failed_stream_shows_banner_and_retry_runs_the_whole_turn(
    chat: ChatPage, stack: Stack
) -> None:
    key = f"web-retry-{uuid.uuid4().hex}"
    mock = {
        "scenario": "error_mid_stream",
        "fail_after": 5,
        "fail_times": 1,
        "tokens": 20,
        "key": key,
    }
    chat.send("Fail once.", mock=mock)
    assert chat.wait_for_state("error", "completed", "stopped") == "error"
    banner = chat.page.locator("#error-banner")
    assert banner.is_visible()
    assert "overloaded_error" in banner.inner_text()
    assert chat.page.locator("#retry").is_visible()
    partial = chat.answer_text()
    first_stream = chat.data("stream-id")
    chat.screenshot("web-10-error-banner")

    chat.page.click("#retry")
    assert chat.wait_for_state("completed", "error", "stopped") == "completed"
    assert banner.is_hidden()
    assert len(partial.split()) == 5
    assert len(chat.answer_text().split()) == 20  # the partial answer was discarded
    assert chat.data("attempt") == "2"
    second_stream = chat.data("stream-id")
    assert second_stream and second_stream != first_stream
    assert first_stream
    failed = generation(stack.mock_url, first_stream)
    assert (failed["state"], failed["tokens"]) == ("failed", 5)
    assert generation(stack.mock_url, second_stream)["state"] == "completed"
    chat.screenshot("web-11-retried")


def test_rejected_request_shows_the_reason_without_retry(chat: ChatPage) -> None:
    chat.send("Bad options.", mock={"tokens": 0})
    assert chat.wait_for_state("error", "completed", "stopped") == "error"
    banner = chat.page.locator("#error-banner")
    assert banner.is_visible()
    assert "invalid_request_error" in banner.inner_text()
    assert "tokens" in banner.inner_text()  # the mock's message names the field
    assert chat.page.locator("#retry").is_hidden()  # resending the same request cannot help
