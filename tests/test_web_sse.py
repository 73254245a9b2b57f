"""The page's SSE parser (service/web/sse.js), run in real Chromium and checked against the
relay's own Python decoder (service/sse.py) on the same bytes split at every offset.

The module is imported from the relay's static route, as the page imports it, so the test
also proves it is served with a JavaScript MIME type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page

from service.app import create_app
from service.config import Settings
from service.sse import SSEDecoder
from tests.support.browser import chromium
from tests.support.servers import run_uvicorn
from tests.support.stack import record_stream, relay_stack

pytestmark = pytest.mark.slow

# Every rule of the WHATWG interpretation the relay's streams (and others) can exercise.
_TRICKY = b"".join(
    [
        b"\xef\xbb\xbf",  # a leading BOM is ignored
        b": opening comment\r\n",
        b"retry: 1500\r\n\r\n",  # a block with no data dispatches nothing (retry still read)
        b"event: first\nid: a:1\ndata: one\n\n",
        b"data: crlf one\r\ndata: crlf two\r\n\r\n",  # a CRLF split must stay one line end
        b"data:no space\rdata:  two spaces\r\r",  # CR line ends; only one space is stripped
        b"data\ndata:\n\n",  # a field without a colon, an empty value: data "\n"
        b"event: named\nevent:\ndata: empty event name means message\n\n",
        b"id: with\x00nul\ndata: id ignored, previous kept\n\n",
        b"id\ndata: empty id resets the buffer\n\n",
        b"id: b:2\nretry: 12a\nretry: 250\nunknown: field\ndata: x\n\n",
        b"event: no-data\n\n",  # dispatches nothing, and the type does not leak
        "data: caf\u00e9 \u6771\u4eac \U0001f324\r\n\r\n".encode(),
        "id: \u00e9:3\ndata: multi\ndata: line\ndata:\n\n".encode(),
        b"data: ends with a lone CR\r\r",
        b"data: never terminated, never dispatched\n",
    ]
)


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    settings = Settings.from_environ({})
    with run_uvicorn(create_app(settings)) as url, chromium() as browser:
        tab = browser.new_page()
        tab.goto(f"{url}/")
        yield tab


def _expected(data: bytes) -> list[list[Any]]:
    decoder = SSEDecoder()
    events = decoder.feed(data) + decoder.close()
    return [[e.event, e.data, e.id, e.retry] for e in events]


_SPLITS = """async ({bytes, expected, pairs}) => {
  const { SSEParser } = await import('/web/sse.js');
  const data = new Uint8Array(bytes);
  const run = (chunks) => {
    const parser = new SSEParser();
    const out = [];
    for (const chunk of chunks) out.push(...parser.feed(chunk));
    out.push(...parser.end());
    return JSON.stringify(out.map((e) => [e.event, e.data, e.id, e.retry]));
  };
  const want = JSON.stringify(expected);
  const bad = [];
  let runs = 0;
  const check = (label, chunks) => {
    runs += 1;
    const got = run(chunks);
    if (got !== want && bad.length < 5) bad.push([label, got]);
  };
  check('whole', [data]);
  check('bytes', Array.from(data, (_, i) => data.subarray(i, i + 1)));
  for (let i = 0; i <= data.length; i++) check(i, [data.subarray(0, i), data.subarray(i)]);
  if (pairs) {
    for (let i = 0; i <= data.length; i++)
      for (let j = i; j <= data.length; j++)
        check([i, j], [data.subarray(0, i), data.subarray(i, j), data.subarray(j)]);
  }
  return { bad, runs };
}"""


def _check_all_splits(page: Page, data: bytes, *, pairs: bool) -> int:
    expected = _expected(data)
    result = page.evaluate(_SPLITS, {"bytes": list(data), "expected": expected, "pairs": pairs})
    assert result["bad"] == [], result["bad"]
    runs: int = result["runs"]
    return runs


def test_tricky_stream_matches_python_decoder_at_every_split(page: Page) -> None:
    expected = _expected(_TRICKY)
    # The corpus really exercises the rules (the oracle itself is tests/test_sse.py's job).
    assert [e[0] for e in expected] == ["first"] + ["message"] * 10
    assert expected[1][1] == "crlf one\ncrlf two"
    assert expected[2][1] == "no space\n two spaces"
    assert expected[6][2] == ""  # an empty id resets the cursor
    assert expected[7][2:] == ["b:2", 250]
    assert expected[-1][1] == "ends with a lone CR"
    runs = _check_all_splits(page, _TRICKY, pairs=True)
    assert runs > len(_TRICKY) ** 2 / 2  # every two-cut split ran


def test_real_relay_stream_matches_at_every_split(page: Page) -> None:
    # A real recording: opening comment + retry, ids on every event, multi-byte tool input.
    body = {
        "model": "mock-tool_use",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "weather?"}],
        "mock": {"tpot_ms": 0, "ttft_ms": 0},
    }
    with relay_stack() as stack:
        recording = record_stream(
            f"{stack.relay_url}/v1/messages", body, headers={"x-relay-events": "all"}
        )
    assert recording.status == 200
    data = recording.body
    assert "東".encode() in data or b"\\u6771" in data
    expected = _expected(data)
    assert expected[0][0] == "message_start"
    assert expected[-1][0] == "relay_metrics"
    _check_all_splits(page, data, pairs=False)


def test_text_chunks_reset_and_line_bound(page: Page) -> None:
    result = page.evaluate(
        """async () => {
          const { SSEParser, SSEParseError } = await import('/web/sse.js');
          const out = {};
          // Text input: BOM stripped once, CRLF split across chunks, surrogate pair split.
          const text = '\\ufeffid: 7\\r';
          const p = new SSEParser();
          const events = [
            ...p.feed(text), ...p.feed('\\ndata: \\ud83c'), ...p.feed('\\udf24\\n\\n'),
          ];
          out.text = events.map((e) => [e.event, e.data, e.id]);
          // reset(): partial bytes of the dropped connection go, the resume cursor stays.
          p.feed('data: half of an event that was cut');
          p.reset();
          out.afterReset = p.feed('data: fresh\\n\\n').map((e) => [e.data, e.id]);
          out.lastEventId = p.lastEventId;
          out.reconnection = new SSEParser().feed('retry: 900\\n\\n').length;
          // A line that never ends cannot grow without bound.
          const small = new SSEParser({ maxLineLength: 16 });
          try {
            small.feed('data: ' + 'a'.repeat(32));
            out.bounded = 'no error';
          } catch (err) {
            out.bounded = err instanceof SSEParseError ? 'SSEParseError' : String(err);
          }
          return out;
        }"""
    )
    assert result["text"] == [["message", "\U0001f324", "7"]]
    assert result["afterReset"] == [["fresh", "7"]]
    assert result["lastEventId"] == "7"
    assert result["reconnection"] == 0
    assert result["bounded"] == "SSEParseError"


def test_module_is_served_as_javascript(page: Page) -> None:
    content_type = page.evaluate(
        "async () => (await fetch('/web/sse.js')).headers.get('content-type')"
    )
    assert json.dumps(content_type).startswith('"text/javascript')
