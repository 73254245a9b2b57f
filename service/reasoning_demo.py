"""The demo's reasoning turn: perceived latency beside TTFT and the first answer token.

A reasoning model can think for 10-60 s before its first answer token. What the person at the
screen feels is the *perceived latency*: the time to the first visible progress (a
``relay_progress`` event, thinking text, or a token). This module streams one turn of the
mock's ``thinking`` scenario through the relay with :class:`~service.client.RelayClient` and
reports the three figures side by side, with the differences stated in words:

- perceived latency: first ``relay_progress`` event or first delta (DESIGN.md section 5);
- TTFT: first content delta of any block, so the first *thinking* delta;
- first answer token: first text delta.

The mock stays silent for ``pre_think_ms`` before its first thinking delta (its ``ttft_ms``
option, like a provider that queues the request before the model starts), which is longer
than the relay's progress interval: the relay's ``relay_progress`` events are then the first
thing the client sees, and perceived latency comes in below TTFT.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

import anyio

from service.client import RelayClient, TurnResult

__all__ = [
    "DEFAULT_PRE_THINK_MS",
    "reasoning_body",
    "reasoning_turn",
    "run_reasoning_turn",
    "summarize",
]

DEFAULT_PRE_THINK_MS = 2500.0
"""Mock silence before the first thinking delta: past the relay's 1 s progress interval."""

_ANSWER_TOKENS = 40
_PROMPT = "Think it through: why does a stream relay measure perceived latency?"
# Progress before message_start is a comment for SDK compatibility; this client opts in to
# named relay events everywhere, so a slow upstream counts as progress too.
_HEADERS: Mapping[str, str] = {"x-relay-events": "all"}


def reasoning_body(think_ms: float, pre_think_ms: float = DEFAULT_PRE_THINK_MS) -> dict[str, Any]:
    """The Messages request of the reasoning turn (mock ``thinking`` scenario)."""
    return {
        "model": "mock-reasoning",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": _PROMPT}],
        "mock": {
            "scenario": "thinking",
            "think_ms": think_ms,
            "ttft_ms": pre_think_ms,
            "tokens": _ANSWER_TOKENS,
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.2f} s"


def _statement(perceived: float | None, ttft: float | None, first_text: float | None) -> str:
    if perceived is None or ttft is None or first_text is None:
        return "the turn did not show progress, a thinking delta and an answer token"
    return (
        f"perceived latency {_seconds(perceived)} vs TTFT {_seconds(ttft)} (first thinking "
        f"delta) and first answer token {_seconds(first_text)}: progress was visible "
        f"{_seconds(ttft - perceived)} before TTFT and {_seconds(first_text - perceived)} "
        "before the first answer token"
    )


def summarize(result: TurnResult, think_ms: float, pre_think_ms: float) -> dict[str, Any]:
    """The report of one reasoning turn (JSON-ready)."""
    t = result.timings
    perceived, ttft = _ms(t.perceived_latency), _ms(t.ttft)
    first_text = _ms(t.time_to_first_text)
    server = (result.server_metrics or {}).get("server", {})
    return {
        "scenario": "thinking",
        "stream_id": result.stream_id,
        "think_ms": think_ms,
        "pre_think_ms": pre_think_ms,
        "client": {
            "perceived_ms": perceived,
            "ttft_ms": ttft,
            "first_text_ms": first_text,
            "ttfb_ms": _ms(t.ttfb),
            "tpot_ms": _ms(t.tpot),
            "total_ms": _ms(t.total),
            "output_tokens": t.output_tokens,
        },
        "server": {
            "perceived_ms": server.get("perceived_latency_ms"),
            "ttft_ms": server.get("ttft_ms"),
            "first_text_ms": server.get("time_to_first_text_ms"),
        },
        "ttft_minus_perceived_ms": None
        if ttft is None or perceived is None
        else round(ttft - perceived, 1),
        "first_text_minus_perceived_ms": None
        if first_text is None or perceived is None
        else round(first_text - perceived, 1),
        "statement": _statement(perceived, ttft, first_text),
    }


async def reasoning_turn(
    relay_url: str,
    think_ms: float,
    *,
    pre_think_ms: float = DEFAULT_PRE_THINK_MS,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Stream the reasoning turn through the relay at ``relay_url``; returns :func:`summarize`.

    ``out`` (when given) gets the answer text as it streams and the statement at the end.
    """

    def on_text(text: str) -> None:
        if out is not None:
            out.write(text)
            out.flush()

    async with RelayClient(relay_url) as client:
        result = await client.stream_turn(
            reasoning_body(think_ms, pre_think_ms), headers=_HEADERS, on_text=on_text
        )
    report = summarize(result, think_ms, pre_think_ms)
    if out is not None:
        out.write(f"\n{report['statement']}\n")
    return report


def run_reasoning_turn(
    relay_url: str,
    think_ms: float,
    *,
    pre_think_ms: float = DEFAULT_PRE_THINK_MS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Blocking :func:`reasoning_turn` (for ``relay demo``): prints the answer as it streams
    and the statement to stdout unless ``quiet``; returns the report."""
    out = None if quiet else sys.stdout

    async def main() -> dict[str, Any]:
        return await reasoning_turn(relay_url, think_ms, pre_think_ms=pre_think_ms, out=out)

    return anyio.run(main)
