"""``relay demo``: the main job on built-in defaults.

Starts the simulated provider and the relay as real processes on loopback, streams a text
turn, a tool-call turn and a reasoning turn (a thinking phase before the answer: perceived
latency against TTFT) through the relay, prints what the client measured beside what the
relay measured, and writes the figures to ``<report_dir>/demo.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from service.chat import format_figures
from service.client import RelayClient, TurnResult
from service.processes import free_port, spawn_service
from service.reasoning_demo import run_reasoning_turn

__all__ = ["run_demo"]


def _turn_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }


async def _turns(relay_url: str) -> list[tuple[str, TurnResult]]:
    results = []
    async with RelayClient(relay_url) as client:
        print("\n== text turn (mock-text, 60 tokens) ==")
        text = await client.stream_turn(
            _turn_body("mock-text", "Tell me about stream relays.", 60),
            on_text=lambda t: print(t, end="", flush=True),
        )
        print("\n" + format_figures(text))
        results.append(("text", text))
        print("\n== tool-call turn (mock-tool_use) ==")
        tool = await client.stream_turn(
            _turn_body("mock-tool_use", "What's the weather in San Francisco?", 200),
            on_text=lambda t: print(t, end="", flush=True),
            on_tool=lambda p: print(
                f"\n[tool {p.tool_name}] {json.dumps(p.input, ensure_ascii=False)}"
                f"\n  tool_input.parsed tool={p.tool_name} fragments={p.fragments} "
                f"bytes={p.bytes} parse_attempts={p.parse_attempts}"
            ),
        )
        print("\n" + format_figures(tool))
        results.append(("tool_use", tool))
    return results


def run_demo(report_dir: str = "artifacts/demo", think_ms: float = 10_000) -> int:
    """Run the demo; returns the exit code."""
    out = Path(report_dir)
    mock_port, relay_port = free_port(8100), free_port(8000)
    mock_url, relay_url = f"http://127.0.0.1:{mock_port}", f"http://127.0.0.1:{relay_port}"
    env = {"RELAY_LOG_FORMAT": "json", "RELAY_UPSTREAM_URL": mock_url}
    print(f"mock provider on {mock_url}, relay on {relay_url} (logs in {out}/)")
    with (
        spawn_service(
            ["mock", "--port", str(mock_port)], env, f"{mock_url}/healthz", out / "mock.log"
        ),
        spawn_service(
            ["serve", "--port", str(relay_port)], env, f"{relay_url}/healthz", out / "relay.log"
        ),
    ):
        results = anyio.run(_turns, relay_url)
        print(f"\n== reasoning turn (mock-reasoning, thinking {think_ms / 1000:.0f} s) ==")
        reasoning = run_reasoning_turn(relay_url, think_ms)
    report: dict[str, Any] = {name: r.as_dict() for name, r in results}
    report["reasoning"] = reasoning
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures written to {out / 'demo.json'}")
    return 0
