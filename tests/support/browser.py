"""Headless Chromium (Debian's ``chromium`` package, never a downloaded browser) driving the
chat page with Playwright's sync API.

Usage::

    with chromium() as browser:
        chat = ChatPage.open(browser, relay_url)
        chat.send("hello", model="mock-text", mock={"tokens": 40})
        chat.wait_for_state("completed")
        chat.screenshot("text-done")

Everything the tests read comes from the rendered DOM (the turn's ``data-*`` attributes, the
answer text) or from in-page timestamps (``performance.now()``), never from module state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from playwright.sync_api import Browser, Locator, Page, sync_playwright

__all__ = ["CHROMIUM", "LAUNCH_ARGS", "SCREENSHOTS", "ChatPage", "chromium"]

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium (package ``chromium``)."""
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
"""Where screenshots go (git-ignored; CI keeps them as artifacts)."""

# Records the answer's length every 25 ms with the page's own clock, and the moment Stop is
# pressed (capture phase: before the page's handler runs).
_SAMPLER = """() => {
  window.__samples = [];
  window.__stopAt = null;
  document.getElementById('stop').addEventListener(
    'click', () => { window.__stopAt = performance.now(); }, {capture: true});
  const answer = () => document.querySelector('#conversation > li:last-child .answer');
  window.__sampler = setInterval(() => {
    const node = answer();
    window.__samples.push([performance.now(), node ? node.textContent.length : 0]);
  }, 25);
  return performance.now();
}"""


@contextmanager
def chromium() -> Iterator[Browser]:
    """Launch headless Debian chromium; closed when the block ends."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


class ChatPage:
    """One browser tab on the chat page, with its console lines and page errors collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        page.on("console", lambda message: self.console.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @classmethod
    def open(cls, browser: Browser, base_url: str, **query: str) -> ChatPage:
        """A new tab (fresh context) on ``base_url`` + ``/``; ``query`` prefills the form."""
        context = browser.new_context(viewport={"width": 1200, "height": 820})
        chat = cls(context.new_page())
        suffix = f"?{urlencode(query)}" if query else ""
        chat.page.goto(f"{base_url}/{suffix}")
        chat.page.wait_for_function("() => window.relayChat !== undefined")
        return chat

    def close(self) -> None:
        """Close the tab and its context."""
        self.page.context.close()

    # -- acting ------------------------------------------------------------------------------

    def send(
        self,
        prompt: str,
        *,
        model: str = "mock-text",
        mock: Mapping[str, Any] | None = None,
        max_tokens: int = 200,
    ) -> None:
        """Fill the form and click Send."""
        self.page.fill("#prompt", prompt)
        self.page.fill("#model", model)
        self.page.fill("#max-tokens", str(max_tokens))
        if mock is not None:
            self.page.evaluate("() => { document.querySelector('details.options').open = true; }")
            self.page.fill("#mock-options", json.dumps(dict(mock)))
        self.page.click("#send")

    def start_sampling(self) -> float:
        """Start recording the answer length every 25 ms; returns the page clock (ms)."""
        started: float = self.page.evaluate(_SAMPLER)
        return started

    def samples(self) -> list[tuple[float, int]]:
        """``(page time ms, answer length)`` recorded so far, once the sampler has seen the
        answer as it is now (a turn can complete between two 25 ms ticks, and timers run
        late on a loaded machine)."""
        self.wait_for(
            "(() => { const s = window.__samples; const a = turn.querySelector('.answer');"
            " return s.length > 0 && (!a || s[s.length - 1][1] === a.textContent.length); })()",
            timeout=5.0,
        )
        raw: list[list[float]] = self.page.evaluate("() => window.__samples")
        return [(t, int(n)) for t, n in raw]

    def stop_pressed_at(self) -> float | None:
        """Page time (ms) of the Stop click, if it was pressed since sampling started."""
        value: float | None = self.page.evaluate("() => window.__stopAt")
        return value

    def now(self) -> float:
        """The page clock, ``performance.now()`` in ms."""
        value: float = self.page.evaluate("() => performance.now()")
        return value

    # -- reading -----------------------------------------------------------------------------

    @property
    def turn(self) -> Locator:
        """The latest turn's ``<li>``."""
        return self.page.locator("#conversation > li").last

    def data(self, name: str) -> str | None:
        """A ``data-*`` attribute of the latest turn (``name`` without the prefix)."""
        return self.turn.get_attribute(f"data-{name}")

    def answer_text(self) -> str:
        """The latest turn's answer text (``textContent``: exactly what was appended)."""
        return self.turn.locator(".answer").text_content() or ""

    def wait_for_state(self, *states: str, timeout: float = 30.0) -> str:
        """Wait until the latest turn's ``data-state`` is one of ``states``; returns it."""
        wanted = json.dumps(list(states))
        self.page.wait_for_function(
            f"""() => {{
              const turn = document.querySelector('#conversation > li:last-child');
              return turn !== null && {wanted}.includes(turn.dataset.state);
            }}""",
            timeout=timeout * 1000,
        )
        state = self.data("state")
        assert state is not None
        return state

    def wait_for(self, condition: str, timeout: float = 30.0) -> None:
        """Wait for a JS expression over ``turn`` (the latest turn's element) to be truthy."""
        self.page.wait_for_function(
            f"""() => {{
              const turn = document.querySelector('#conversation > li:last-child');
              return turn !== null && Boolean({condition});
            }}""",
            timeout=timeout * 1000,
        )

    def wait_for_metrics_report(self, timeout: float = 10.0) -> str:
        """Wait until the page posted its client metrics; returns ``yes`` / ``no``."""
        self.wait_for("turn.dataset.metricsReported", timeout)
        value = self.data("metrics-reported")
        assert value is not None
        return value

    def console_lines(self, prefix: str) -> list[str]:
        """Console lines starting with ``prefix``."""
        return [line for line in self.console if line.startswith(prefix)]

    def screenshot(self, name: str) -> Path:
        """Save a full-page screenshot to ``artifacts/screenshots/<name>.png``."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path
