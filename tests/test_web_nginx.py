"""The chat page through the real nginx with ``nginx/streaming.conf``.

The relay runs without its ``X-Accel-Buffering: no`` header, so only the config keeps the
stream flowing: tokens and progress events must reach the page as they are written, Stop's
cancel must pass the ``/v1/streams/`` location, and the page's own assets the ``/`` location.
The same page behind ``buffering.conf`` receives the answer in one burst at the end, which
shows the incremental check below can tell the two apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser

from service.mock import MockSettings
from tests.support.browser import ChatPage, chromium
from tests.support.ledger import assert_aborted_and_frozen
from tests.support.nginx import run_nginx
from tests.support.stack import Stack, relay_stack

pytestmark = pytest.mark.slow

_MOCK = MockSettings(ttft_ms=150.0, tpot_ms=30.0)
_TEXT = {"tokens": 60, "tpot_ms": 40}


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with relay_stack({"accel_buffering_header": False}, _MOCK) as running:
        yield running


@pytest.fixture(scope="module")
def nginx_url(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prefix = tmp_path_factory.mktemp("nginx")
    with run_nginx("streaming", _port(stack.relay_url), tmp_path=prefix) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def chat(browser: Browser, nginx_url: str) -> Iterator[ChatPage]:
    page = ChatPage.open(browser, nginx_url)
    yield page
    assert page.errors == [], page.errors
    page.close()


def _growth(chat: ChatPage, started: float) -> tuple[int, float, float]:
    """Distinct answer lengths seen, first-text offset and end offset (page clock, ms)."""
    steps: list[tuple[float, int]] = []
    for t, n in chat.samples():
        if n > 0 and (not steps or n != steps[-1][1]):
            steps.append((t, n))
    assert steps, "no text rendered"
    return len(steps), steps[0][0] - started, chat.now() - started


def test_tokens_render_incrementally_through_streaming_conf(chat: ChatPage) -> None:
    started = chat.start_sampling()
    chat.send("Stream through nginx.", mock=_TEXT)
    assert chat.wait_for_state("completed", "error", "stopped") == "completed"
    steps, first_at, ended = _growth(chat, started)
    assert len(chat.answer_text().split()) == 60
    assert steps >= 15
    assert first_at < 0.3 * ended, (first_at, ended)
    # The client-metrics POST went through the /v1/streams/ location too.
    assert chat.wait_for_metrics_report() == "yes"
    chat.screenshot("nginx-1-text-done")


def test_thinking_state_arrives_promptly_through_streaming_conf(chat: ChatPage) -> None:
    chat.send("Think.", model="mock-reasoning", mock={"think_ms": 3000, "tokens": 10})
    chat.wait_for_state("thinking", timeout=10)
    assert chat.answer_text() == ""
    chat.screenshot("nginx-2-thinking")
    assert chat.wait_for_state("completed", "error", "stopped") == "completed"
    perceived = int(chat.data("perceived-ms") or "-1")
    first_text = int(chat.data("first-text-ms") or "-1")
    assert 0 <= perceived < 1000
    assert first_text - perceived > 2000


def test_stop_through_streaming_conf_aborts_the_generation(chat: ChatPage, stack: Stack) -> None:
    chat.start_sampling()
    chat.send("A long one.", mock={"tokens": 3000, "tpot_ms": 30}, max_tokens=4000)
    chat.wait_for("turn.querySelector('.answer').textContent.split(' ').length > 10")
    chat.page.click("#stop")
    chat.wait_for("turn.dataset.cancel", timeout=10)
    assert chat.data("cancel") == "cancelled"
    chat.page.wait_for_timeout(1000)
    stop_at = chat.stop_pressed_at()
    assert stop_at is not None
    after_grace = {n for t, n in chat.samples() if t >= stop_at + 300}
    assert len(after_grace) == 1, "text kept appearing after Stop"
    stream_id = chat.data("stream-id")
    assert stream_id
    assert_aborted_and_frozen(stack.mock_url, stream_id, asked=3000)
    chat.screenshot("nginx-3-stopped")


def test_buffering_conf_delivers_the_answer_in_one_burst(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    with run_nginx("buffering", _port(stack.relay_url), tmp_path=tmp_path) as url:
        chat = ChatPage.open(browser, url)
        try:
            started = chat.start_sampling()
            chat.send("Stream through the stock config.", mock=_TEXT)
            assert chat.wait_for_state("completed", "error", "stopped") == "completed"
            steps, first_at, ended = _growth(chat, started)
        finally:
            chat.close()
    # The whole answer landed at once, at the end: the check above would fail here.
    assert steps <= 3, steps
    assert first_at > 0.8 * ended, (first_at, ended)
