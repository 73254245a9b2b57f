"""``relay chat``: stream one turn to the terminal and print the client-side figures."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

import msgspec

from service.accumulate import ToolInputParsed
from service.client import RelayClient, RelayStreamError, TurnResult

__all__ = ["ChatOptions", "format_figures", "run_chat"]


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """One ``relay chat`` invocation."""

    url: str
    """Relay base URL."""
    prompt: str
    """The user's message."""
    model: str = "mock-text"
    """Model name (``mock-<scenario>`` picks a mock scenario)."""
    max_tokens: int = 200
    """``max_tokens`` of the request."""
    scenario: str | None = None
    """Mock scenario sent in the body's ``mock`` object."""
    as_json: bool = False
    """Print one JSON object instead of streaming text."""
    api_key: str | None = None
    """Relay client key."""


def _body(options: ChatOptions) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": options.model,
        "max_tokens": options.max_tokens,
        "messages": [{"role": "user", "content": options.prompt}],
    }
    if options.scenario:
        body["mock"] = {"scenario": options.scenario}
    return body


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


def format_figures(result: TurnResult) -> str:
    """The figures block printed after a turn (definitions in service/measure.py)."""
    t = result.timings
    return (
        f"TTFT {_ms(t.ttft)} | TPOT {_ms(t.tpot)} | ITL p50 {_ms(t.itl_p50)} "
        f"p99 {_ms(t.itl_p99)} | total {_ms(t.total)} | "
        f"{t.output_tokens if t.output_tokens is not None else t.content_deltas} tokens"
    )


def _tool_line(parsed: ToolInputParsed) -> str:
    args = msgspec.json.encode(parsed.input).decode()
    return (
        f"[tool {parsed.tool_name}] {args}\n"
        f"  tool_input.parsed tool={parsed.tool_name} fragments={parsed.fragments} "
        f"bytes={parsed.bytes} parse_attempts={parsed.parse_attempts}"
    )


async def run_chat(options: ChatOptions, out: TextIO = sys.stdout) -> int:
    """Stream the turn; returns the process exit code."""

    def on_text(text: str) -> None:
        if not options.as_json:
            out.write(text)
            out.flush()

    def on_tool(parsed: ToolInputParsed) -> None:
        if not options.as_json:
            out.write("\n" + _tool_line(parsed) + "\n")

    def on_notice(message: str) -> None:
        print(f"\n[relay chat] {message}", file=sys.stderr)

    async with RelayClient(options.url, api_key=options.api_key) as client:
        try:
            result = await client.stream_turn(
                _body(options), on_text=on_text, on_tool=on_tool, on_notice=on_notice
            )
        except RelayStreamError as exc:
            print(
                f"\nrelay chat: {exc.error_type}: {exc} (retryable={exc.retryable}, "
                f"partial={exc.partial})",
                file=sys.stderr,
            )
            return 1
    if options.as_json:
        out.write(msgspec.json.encode(result.as_dict()).decode() + "\n")
    else:
        out.write("\n\n" + format_figures(result) + "\n")
    return 0
