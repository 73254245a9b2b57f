"""``relay serve | mock | chat | demo | check | capture | stack | dashboards | bench``.

Every ``serve``/``mock`` flag is also a ``RELAY_*`` (``RELAY_MOCK_*``) variable; a flag wins.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.server import run_relay

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.upstream is not None:
        overrides["upstream_url"] = args.upstream
    settings = Settings.from_environ(os.environ, **overrides)
    # uvicorn re-raises the SIGINT it handled; the graceful shutdown already ran.
    with contextlib.suppress(KeyboardInterrupt):
        run_relay(settings, environ=os.environ)
    return 0


def _mock(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.mock.settings import MockSettings
    from service.server import run_mock

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = MockSettings.from_environ(os.environ, **overrides)
    # The mock shares the relay's log switches (validated the same way).
    shared = {k: v for k, v in os.environ.items() if k in ("RELAY_LOG_FORMAT", "RELAY_LOG_LEVEL")}
    with contextlib.suppress(KeyboardInterrupt):  # as in _serve
        run_mock(settings, Settings.from_environ(shared).log_format)
    return 0


def _chat(args: argparse.Namespace) -> int:
    from service.chat import ChatOptions, run_chat

    options = ChatOptions(
        url=args.url,
        prompt=args.prompt,
        model=args.model,
        max_tokens=args.max_tokens,
        scenario=args.scenario,
        as_json=args.json,
        api_key=args.api_key or os.environ.get("RELAY_CLIENT_API_KEY"),
    )
    try:
        return anyio.run(run_chat, options)
    except KeyboardInterrupt:
        # The client already asked the relay to cancel the stream (see RelayClient).
        print(
            "\nrelay chat: cancelled; the relay was asked to stop the generation", file=sys.stderr
        )
        return 130


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(report_dir=args.report_dir, think_ms=args.think_s * 1000)


# Modules that add their own subcommands: each has ``register(subparsers)`` that adds a
# parser with ``func`` set to ``(args) -> exit code``. Imported lazily, only to build the parser.
_COMMAND_MODULES: tuple[str, ...] = (
    "service.probe",
    "service.capture",
    "service.stack",
    "service.dashboards",
    "service.realmodel",
)
# Modules adding a subcommand to ``relay bench`` through ``add_bench_command(subparsers)``.
_BENCH_MODULES: tuple[str, ...] = (
    "service.bench.sweep",
    "service.bench.transports",
    "service.bench.overhead",
    "service.bench.cancel",
    "service.bench.memory",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    bench = sub.add_parser("bench", help="benchmarks on real processes (see runbook/)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    for name in _BENCH_MODULES:
        importlib.import_module(name).add_bench_command(bench_sub)

    serve = sub.add_parser("serve", help="run the relay (RELAY_* variables configure it)")
    serve.add_argument("--host", help="listen address (RELAY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (RELAY_PORT, default 8000)")
    serve.add_argument(
        "--upstream", help="provider base URL (RELAY_UPSTREAM_URL, default the mock)"
    )
    serve.set_defaults(func=_serve)

    mock = sub.add_parser("mock", help="run the simulated provider (RELAY_MOCK_* variables)")
    mock.add_argument("--host", help="listen address (RELAY_MOCK_HOST, default 127.0.0.1)")
    mock.add_argument("--port", type=int, help="listen port (RELAY_MOCK_PORT, default 8100)")
    mock.set_defaults(func=_mock)

    chat = sub.add_parser("chat", help="stream one turn and print client-side timings")
    chat.add_argument("prompt")
    chat.add_argument("--url", default=os.environ.get("RELAY_URL", "http://127.0.0.1:8000"))
    chat.add_argument("--model", default="mock-text")
    chat.add_argument("--max-tokens", type=int, default=200)
    chat.add_argument("--scenario", help="mock scenario (sent as the body's mock.scenario)")
    chat.add_argument("--api-key", help="relay client key (RELAY_CLIENT_API_KEY)")
    chat.add_argument("--json", action="store_true", help="print one JSON object")
    chat.set_defaults(func=_chat)

    demo = sub.add_parser("demo", help="mock + relay on loopback, a text and a tool turn")
    demo.add_argument("--report-dir", default="artifacts/demo")
    demo.add_argument(
        "--think-s",
        type=float,
        default=10.0,
        help="thinking phase of the reasoning turn (10-60 s is realistic)",
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relay`` console script."""
    args = _parser().parse_args(argv)
    from service.config import ConfigError

    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
