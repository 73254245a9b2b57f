"""Measuring the real local model directly, through the relay and through nginx, and proving Stop.

Used by ``relay real-demo`` (:mod:`service.realdemo`) and ``tests/test_real_model.py``.
Figures follow the project's definitions (service/measure.py): TTFT from the request being
sent to the first content delta, TPOT = (last delta - first delta) / (tokens - 1), measured by
the client at the entry point it used, so "through nginx" includes the relay and the proxy.

The Stop proof (:func:`stop_proof`) leans on two properties of the llama.cpp server: it runs
one generation at a time, so a generation that kept running after Stop would hold the model
and delay the next request by its remaining tokens; and it logs ``Disconnected from client``
when it abandons a generation. Its CPU time in the second after Stop is measured too.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import httpx
import msgspec

from service.realmodel import LlamaServer
from service.sse import SSEDecoder
from service.upstream.openai_request import translate_request

__all__ = [
    "LONG_BIAS",
    "StopEvidence",
    "StreamFigures",
    "control_delay",
    "measure_direct",
    "measure_messages",
    "median_figures",
    "messages_body",
    "stop_proof",
]

LONG_BIAS = {"2": -100.0, "0": -100.0}
"""``logit_bias`` that bans SmolLM2's end tokens (``<|im_end|>`` = 2, ``<|endoftext|>`` = 0),
so a long generation really runs to ``max_tokens`` (passed through the relay untouched)."""

_PROMPT = "Write a few sentences about rivers and the sea."
_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


@dataclass(frozen=True, slots=True)
class StreamFigures:
    """One streamed answer as the client saw it."""

    ttft: float
    """Seconds from sending the request to the first content delta."""
    tpot: float | None
    """Seconds per output token after the first (None for a one-token answer)."""
    tokens: int
    """Output tokens (reported usage, else content deltas)."""
    total: float
    """Seconds from sending the request to the end of the body."""
    text: str
    """The answer's text."""
    stream_id: str | None = None
    """``X-Relay-Stream-Id`` when the answer came through the relay."""
    relay_server: dict[str, Any] | None = None
    """The relay's own view (``relay_metrics.server``), when it came through the relay."""


def messages_body(model: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    """An Anthropic Messages streaming request for the local model (greedy, reproducible)."""
    return {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": _PROMPT}],
        **extra,
    }


class _Timeline:
    """Arrival times of content deltas for one response."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.arrivals: list[float] = []
        self.parts: list[str] = []
        self.usage_tokens: int | None = None

    def delta(self, text: str) -> None:
        self.arrivals.append(time.perf_counter() - self.start)
        self.parts.append(text)

    def figures(self, **extra: Any) -> StreamFigures:
        if not self.arrivals:
            raise RuntimeError("the stream carried no content")
        tokens = self.usage_tokens or len(self.arrivals)
        first, last = self.arrivals[0], self.arrivals[-1]
        tpot = (last - first) / (tokens - 1) if tokens > 1 else None
        total = time.perf_counter() - self.start
        return StreamFigures(first, tpot, tokens, total, "".join(self.parts), **extra)


def _events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    decoder = SSEDecoder()
    for chunk in response.iter_raw():
        for sse in decoder.feed(chunk):
            if sse.data.strip() == "[DONE]":
                return
            yield sse.event, msgspec.json.decode(sse.data)


def measure_direct(llama_url: str, body: Mapping[str, Any]) -> StreamFigures:
    """Stream ``body`` (Messages shape, translated as the relay would) straight from llama."""
    openai_body = translate_request(body)
    timeline = _Timeline()
    with (
        httpx.Client(timeout=_TIMEOUT) as client,
        client.stream("POST", f"{llama_url}/v1/chat/completions", json=openai_body) as resp,
    ):
        resp.raise_for_status()
        for _, chunk in _events(resp):
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    timeline.delta(content)
            if isinstance(chunk.get("usage"), dict):
                timeline.usage_tokens = chunk["usage"].get("completion_tokens")
    return timeline.figures()


def measure_messages(base_url: str, body: Mapping[str, Any]) -> StreamFigures:
    """Stream ``body`` through the relay (or nginx in front of it): ``POST /v1/messages``."""
    timeline = _Timeline()
    server: dict[str, Any] | None = None
    with (
        httpx.Client(timeout=_TIMEOUT) as client,
        client.stream("POST", f"{base_url}/v1/messages", json=dict(body)) as resp,
    ):
        resp.raise_for_status()
        stream_id = resp.headers.get("x-relay-stream-id")
        for name, data in _events(resp):
            if name == "content_block_delta" and data["delta"].get("type") == "text_delta":
                timeline.delta(data["delta"]["text"])
            elif name == "message_delta":
                timeline.usage_tokens = data.get("usage", {}).get("output_tokens")
            elif name == "relay_metrics":
                server = data.get("server")
            elif name == "error":
                raise RuntimeError(f"stream failed: {data}")
    return timeline.figures(stream_id=stream_id, relay_server=server)


def median_figures(runs: list[StreamFigures]) -> dict[str, float | None]:
    """Median TTFT / TPOT in milliseconds and the token count of a series of runs."""
    tpots = [r.tpot for r in runs if r.tpot is not None]
    return {
        "ttft_ms": round(statistics.median(r.ttft for r in runs) * 1000, 1),
        "tpot_ms": round(statistics.median(tpots) * 1000, 2) if tpots else None,
        "tokens": statistics.median(r.tokens for r in runs),
        "runs": len(runs),
    }


# -- Stop -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StopEvidence:
    """What shows that a Stop reached the llama.cpp server and freed it."""

    mode: str
    """``disconnect`` (the client went away) or ``cancel`` (``POST /v1/streams/{id}/cancel``)."""
    max_tokens: int
    """What the stopped request asked for."""
    tokens_before_stop: int
    """Content deltas the client had when it stopped."""
    tpot: float
    """Seconds per token of the stopped stream before the stop."""
    would_run_s: float
    """How long the generation would have gone on: remaining tokens x TPOT."""
    baseline_ttft: float
    """TTFT of a short request on the idle server, just before."""
    next_ttft: float
    """TTFT of the same short request sent right after the stop."""
    server_logged_disconnect: bool
    """The server's log gained a ``Disconnected from client`` line."""
    disconnect_logged_after_s: float | None
    """Seconds from the stop until that line was seen."""
    server_cpu_after_s: float
    """CPU seconds the server used in the second after the next request finished."""
    server_cpu_generating_s: float
    """CPU seconds the server used per second while generating (for comparison)."""
    client_told: str | None = None
    """``cancel`` mode: the ``relay.reason`` of the error event the client received."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)


@contextmanager
def _open_stream(base_url: str, body: Mapping[str, Any]) -> Iterator[httpx.Response]:
    with (
        httpx.Client(timeout=_TIMEOUT) as client,
        client.stream("POST", f"{base_url}/v1/messages", json=dict(body)) as response,
    ):
        response.raise_for_status()
        yield response


def _read_deltas(events: Iterator[tuple[str, Any]], count: int) -> list[float]:
    arrivals: list[float] = []
    for name, data in events:
        if name == "content_block_delta":
            arrivals.append(time.perf_counter())
            if len(arrivals) >= count:
                break
        elif name == "error":
            raise RuntimeError(f"stream failed before the stop: {data}")
    return arrivals


class _LogWatch:
    """Polls the server's log from the moment of the stop for a new disconnect line."""

    def __init__(self, server: LlamaServer, before: int, timeout: float = 10.0) -> None:
        self._server, self._before, self._timeout = server, before, timeout
        self._started = time.perf_counter()
        self.seen_after: float | None = None
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while time.perf_counter() - self._started < self._timeout:
            if self._server.disconnects() > self._before:
                self.seen_after = time.perf_counter() - self._started
                return
            time.sleep(0.01)

    def result(self) -> float | None:
        """Seconds from the stop to the line (None if it never came)."""
        self._thread.join()
        return self.seen_after


def stop_proof(
    base_url: str,
    server: LlamaServer,
    *,
    mode: Literal["disconnect", "cancel"],
    max_tokens: int = 600,
    read_tokens: int = 20,
    short_tokens: int = 8,
) -> StopEvidence:
    """Start a long generation through ``base_url``, stop it after ``read_tokens`` deltas,
    and collect the server-side evidence that it stopped."""
    short = messages_body(server.model_alias, short_tokens)
    baseline = measure_messages(base_url, short)
    before = server.disconnects()
    long_body = messages_body(server.model_alias, max_tokens, logit_bias=LONG_BIAS)
    told: str | None = None
    with _open_stream(base_url, long_body) as response:
        # One events iterator for the whole block: dropping it would close the connection.
        events = _events(response)
        cpu_start, cpu_clock = server.cpu_seconds(), time.perf_counter()
        arrivals = _read_deltas(events, read_tokens)
        cpu_rate = (server.cpu_seconds() - cpu_start) / (time.perf_counter() - cpu_clock)
        watch = _LogWatch(server, before)
        if mode == "cancel":
            stream_id = response.headers["x-relay-stream-id"]
            httpx.post(f"{base_url}/v1/streams/{stream_id}/cancel", timeout=10).raise_for_status()
            told = _told_reason(events)
    # Leaving the block closed the client connection (the disconnect mode's Stop).
    after = measure_messages(base_url, short)
    logged_after = watch.result()
    cpu_before = server.cpu_seconds()
    time.sleep(1.0)
    tpot = (arrivals[-1] - arrivals[0]) / max(len(arrivals) - 1, 1)
    return StopEvidence(
        mode=mode,
        max_tokens=max_tokens,
        tokens_before_stop=len(arrivals),
        tpot=tpot,
        would_run_s=(max_tokens - len(arrivals)) * tpot,
        baseline_ttft=baseline.ttft,
        next_ttft=after.ttft,
        server_logged_disconnect=logged_after is not None,
        disconnect_logged_after_s=logged_after,
        server_cpu_after_s=server.cpu_seconds() - cpu_before,
        server_cpu_generating_s=cpu_rate,
        client_told=told,
    )


def _told_reason(events: Iterator[tuple[str, Any]]) -> str | None:
    """The ``relay.reason`` of the error event a still-connected client gets after a stop."""
    for name, data in events:
        if name == "error":
            reason = (data.get("relay") or {}).get("reason")
            return str(reason) if reason is not None else None
    return None


def control_delay(base_url: str, server: LlamaServer, *, busy_tokens: int = 80) -> float:
    """TTFT of a short request sent while another generation of ``busy_tokens`` is running
    (the control: it shows the server is serial, so a generation left running *would*
    delay the next request)."""
    busy = messages_body(server.model_alias, busy_tokens, logit_bias=LONG_BIAS)
    started = threading.Event()
    failure: list[BaseException] = []

    def run_busy() -> None:
        try:
            with _open_stream(base_url, busy) as response:
                events = _events(response)
                _read_deltas(events, 1)
                started.set()
                for _ in events:
                    pass
        except (httpx.HTTPError, RuntimeError) as exc:
            failure.append(exc)
            started.set()

    worker = threading.Thread(target=run_busy, daemon=True)
    worker.start()
    started.wait(timeout=60)
    ttft = measure_messages(base_url, messages_body(server.model_alias, 4)).ttft
    worker.join(timeout=120)
    if failure:
        raise RuntimeError(f"busy generation failed: {failure[0]}")
    return ttft
