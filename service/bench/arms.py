"""The arms of ``relay bench sweep``: what each one runs, started as pinned child processes.

Every arm relays the same fast-mock stream (:mod:`service.bench.fastmock`) to the same load
generator. The system under test (relay, nginx, a peer gateway) is pinned with ``taskset`` to
its own CPUs; the fast mock and the load generator share the others, so neither steals the
SUT's core. Arms and what they are compared with:

=====================  ==========================================================  ===========
arm                    what the client talks to                                    baseline
=====================  ==========================================================  ===========
direct-anthropic       the fast mock, Anthropic Messages (no hop: the limit)       -
direct-openai          the fast mock, OpenAI Chat Completions                      -
relay                  the relay as deployed (telemetry on, aiohttp transport)     direct-anthropic
relay-nginx            nginx (``nginx/streaming.conf``) -> the relay               direct-anthropic
relay-telemetry-off    the relay with :meth:`Telemetry.disabled`                   direct-anthropic
relay-httpx            the relay on httpx's own transport (httpcore)               direct-anthropic
relay-openai           the relay translating an OpenAI upstream to Anthropic       direct-openai
litellm                LiteLLM proxy, one worker, no database                      direct-openai
portkey                Portkey's gateway on node                                   direct-openai
=====================  ==========================================================  ===========

``python -m service.bench.arms relay --port N --upstream URL ...`` serves one relay variant.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import httpx

from service.bench import procstat
from service.bench.loadgen import Target
from service.bench.peers import PeerInstall, find_peers, litellm_command, portkey_command
from service.bench.response import Wire
from service.processes import free_port
from service.upstream.transport import TRANSPORTS, TransportName

__all__ = [
    "ARMS",
    "SMOKE_ARMS",
    "ArmDef",
    "RunningArm",
    "Stack",
    "StackOptions",
    "fast_mock",
    "serve_relay",
    "start_stack",
]

_HEALTH_TIMEOUT: Final = 60.0
_PEER_HEALTH_TIMEOUT: Final = 300.0  # LiteLLM imports for a long time on a loaded machine
_STOP_GRACE: Final = 10.0


@dataclass(frozen=True, slots=True)
class ArmDef:
    """One arm's definition."""

    name: str
    description: str
    baseline: str | None
    """The direct arm whose figures this one's are compared with (``None``: it is one)."""
    wire: Wire
    """What its client speaks."""


ARMS: Final[dict[str, ArmDef]] = {
    a.name: a
    for a in (
        ArmDef("direct-anthropic", "fast mock, Anthropic wire, no hop", None, "anthropic"),
        ArmDef("direct-openai", "fast mock, OpenAI wire, no hop", None, "openai"),
        ArmDef(
            "relay",
            "relay as deployed (telemetry on, aiohttp transport)",
            "direct-anthropic",
            "anthropic",
        ),
        ArmDef("relay-nginx", "nginx streaming.conf -> relay", "direct-anthropic", "anthropic"),
        ArmDef("relay-telemetry-off", "relay, telemetry disabled", "direct-anthropic", "anthropic"),
        ArmDef("relay-httpx", "relay on httpx's own transport", "direct-anthropic", "anthropic"),
        ArmDef(
            "relay-openai", "relay translating an OpenAI upstream", "direct-openai", "anthropic"
        ),
        ArmDef("litellm", "LiteLLM proxy, 1 worker, no DB", "direct-openai", "openai"),
        ArmDef("portkey", "Portkey gateway (node)", "direct-openai", "openai"),
    )
}
"""Every arm, in the order a round runs them (rounds rotate the start)."""

SMOKE_ARMS: Final = ("direct-anthropic", "relay", "relay-nginx")
"""What ``--smoke`` runs: enough to exercise every code path of the harness."""


@dataclass(frozen=True, slots=True)
class StackOptions:
    """Where and how the arms run."""

    out_dir: Path
    """Logs, configs and nginx prefixes go here."""
    sut_cpus: tuple[int, ...] | None
    """CPUs of the system under test (``None``: no pinning)."""
    harness_cpus: tuple[int, ...] | None
    """CPUs of the fast mock and the load generator."""
    peers_cache: Path
    """Where LiteLLM and Portkey are installed (:mod:`service.bench.peers`)."""
    max_streams: int = 1000
    """Most streams the sweep holds open at once (sizes nginx's worker_connections)."""


@dataclass(slots=True)
class RunningArm:
    """An arm ready for traffic."""

    name: str
    target: Target
    roots: list[int] = field(default_factory=list)
    """Root pids of its system under test (empty for a direct arm)."""

    def sut_pids(self) -> list[int]:
        """Every live process of the system under test."""
        return procstat.tree(self.roots)


@dataclass(slots=True)
class Stack:
    """The fast mock, the arms that started and the ones that could not."""

    mock_url: str
    mock_pid: int
    arms: dict[str, RunningArm] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Arm -> why it is not running."""
    peers: PeerInstall | None = None


# -- processes ---------------------------------------------------------------------------------


def _taskset(argv: list[str], cpus: Sequence[int] | None) -> list[str]:
    if not cpus or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", ",".join(map(str, cpus)), *argv]


@contextmanager
def _service(
    argv: list[str],
    *,
    env: dict[str, str],
    log: Path,
    health_url: str,
    cpus: Sequence[int] | None,
    timeout: float = _HEALTH_TIMEOUT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own process group until the block ends; waits for ``health_url``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own modules and the peers' entry points
            _taskset(argv, cpus),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_healthy(proc, health_url, log, timeout)
            yield proc
        finally:
            _stop(proc)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{url}: exited with {proc.returncode} during start-up:\n{tail}")
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s (log: {log})")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's own process group, then SIGKILL to it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_STOP_GRACE)


# -- the arms ----------------------------------------------------------------------------------


def _relay_argv(
    port: int,
    upstream: str,
    *,
    provider: str = "anthropic",
    telemetry: str = "on",
    transport: str = "aiohttp",
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service.bench.arms",
        "relay",
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--provider",
        provider,
        "--telemetry",
        telemetry,
        "--transport",
        transport,
    ]


_RELAY_VARIANTS: Final[dict[str, dict[str, str]]] = {
    "relay": {},
    "relay-nginx": {},
    "relay-telemetry-off": {"telemetry": "off"},
    "relay-httpx": {"transport": "httpx"},
    "relay-openai": {"provider": "openai"},
}


def _start_relay(name: str, stack: Stack, options: StackOptions, exits: ExitStack) -> RunningArm:
    port = free_port()
    proc = exits.enter_context(
        _service(
            _relay_argv(port, stack.mock_url, **_RELAY_VARIANTS[name]),
            env=dict(os.environ),
            log=options.out_dir / "logs" / f"{name}.log",
            health_url=f"http://127.0.0.1:{port}/healthz",
            cpus=options.sut_cpus,
        )
    )
    target = Target("127.0.0.1", port, "/v1/messages", "anthropic")
    arm = RunningArm(name, target, [proc.pid])
    if name == "relay-nginx":
        _front_with_nginx(arm, port, options, exits)
    return arm


def _front_with_nginx(
    arm: RunningArm, relay_port: int, options: StackOptions, exits: ExitStack
) -> None:
    from service.proxy.nginx import run_nginx

    nginx = exits.enter_context(
        run_nginx(
            "streaming",
            relay_port,
            prefix_root=options.out_dir / "nginx",
            configs_dir=_nginx_configs(options),
        )
    )
    arm.roots.append(nginx.pid)
    if options.sut_cpus:
        procstat.pin(procstat.tree([nginx.pid]), options.sut_cpus)
    arm.target = Target("127.0.0.1", nginx.port, "/v1/messages", "anthropic")


def _nginx_configs(options: StackOptions) -> Path:
    """The repository's nginx configs, with room for the sweep's connections.

    ``nginx.conf`` allows 256 connections per worker; a stream through nginx holds two
    (client and upstream), so the copy raises ``worker_connections`` to fit the largest
    level. Nothing else changes.
    """
    from service.proxy.nginx import DEFAULT_CONFIGS_DIR

    dest = options.out_dir / "nginx-configs"
    dest.mkdir(parents=True, exist_ok=True)
    for conf in DEFAULT_CONFIGS_DIR.glob("*.conf"):
        shutil.copyfile(conf, dest / conf.name)
    connections = max(256, 2 * options.max_streams + 64)
    main = dest / "nginx.conf"
    main.write_text(
        re.sub(r"worker_connections\s+\d+;", f"worker_connections {connections};", main.read_text())
    )
    return dest


def _start_peer(name: str, stack: Stack, options: StackOptions, exits: ExitStack) -> RunningArm:
    peers = stack.peers
    assert peers is not None
    port = free_port()
    log = options.out_dir / "logs" / f"{name}.log"
    if name == "litellm":
        key = f"sk-bench-{secrets.token_hex(24)}"
        workdir = options.out_dir / "litellm"
        workdir.mkdir(parents=True, exist_ok=True)
        argv, env = litellm_command(peers, port, stack.mock_url, workdir, key)
        health = f"http://127.0.0.1:{port}/health/liveliness"
        headers: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {key}"),)
    else:
        argv, env = portkey_command(peers, port)
        health = f"http://127.0.0.1:{port}/"
        headers = (
            ("x-portkey-provider", "openai"),
            ("x-portkey-custom-host", f"{stack.mock_url}/v1"),
            ("authorization", "Bearer bench"),
        )
    proc = exits.enter_context(
        _service(
            argv,
            env=env,
            log=log,
            health_url=health,
            cpus=options.sut_cpus,
            timeout=_PEER_HEALTH_TIMEOUT,
        )
    )
    target = Target("127.0.0.1", port, "/v1/chat/completions", "openai", headers=headers)
    return RunningArm(name, target, [proc.pid])


def _start_arm(name: str, stack: Stack, options: StackOptions, exits: ExitStack) -> RunningArm:
    host, port = "127.0.0.1", int(stack.mock_url.rsplit(":", 1)[1])
    if name == "direct-anthropic":
        return RunningArm(name, Target(host, port, "/v1/messages", "anthropic"))
    if name == "direct-openai":
        return RunningArm(name, Target(host, port, "/v1/chat/completions", "openai"))
    if name in _RELAY_VARIANTS:
        return _start_relay(name, stack, options, exits)
    return _start_peer(name, stack, options, exits)


def _unavailable_reason(name: str, stack: Stack) -> str | None:
    if name == "relay-nginx":
        from service.proxy.nginx import NginxError, nginx_binary

        try:
            nginx_binary()
        except NginxError as exc:
            return str(exc)
    if name in ("litellm", "portkey") and stack.peers is not None:
        return stack.peers.missing.get(name)
    return None


@contextmanager
def fast_mock(log: Path, cpus: Sequence[int] | None = None) -> Iterator[tuple[str, int]]:
    """The fast mock as a child process (pinned to ``cpus``); yields its URL and pid."""
    port = free_port()
    argv = [sys.executable, "-m", "service.bench.fastmock", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with _service(
        argv, env=dict(os.environ), log=log, health_url=f"{url}/healthz", cpus=cpus
    ) as proc:
        yield url, proc.pid


@contextmanager
def start_stack(names: Sequence[str], options: StackOptions) -> Iterator[Stack]:
    """Start the fast mock and every arm in ``names`` that can run here.

    An arm that cannot run (nginx or a peer missing, a peer that fails to start) is left out
    with its reason in :attr:`Stack.unavailable`; the others go on.
    """
    with ExitStack() as exits:
        url, pid = exits.enter_context(
            fast_mock(options.out_dir / "logs" / "fastmock.log", options.harness_cpus)
        )
        stack = Stack(mock_url=url, mock_pid=pid)
        if any(n in ("litellm", "portkey") for n in names):
            stack.peers = find_peers(options.peers_cache)
        for name in names:
            reason = _unavailable_reason(name, stack)
            if reason is not None:
                stack.unavailable[name] = reason
                continue
            try:
                stack.arms[name] = _start_arm(name, stack, options, exits)
            except RuntimeError as exc:  # NginxError is one too
                stack.unavailable[name] = f"failed to start: {str(exc)[:400]}"
        yield stack


# -- the relay variants' entry point -----------------------------------------------------------


def serve_relay(
    port: int,
    upstream: str,
    *,
    provider: Literal["anthropic", "openai"] = "anthropic",
    telemetry: str = "on",
    transport: TransportName = "aiohttp",
) -> None:
    """Serve one relay variant until SIGTERM (JSON logs on stderr at ``info``, as deployed)."""
    import uvicorn

    from service.app import create_app
    from service.config import Settings
    from service.server import RelayServer
    from service.telemetry.logging import configure_logging
    from service.telemetry.setup import Telemetry

    settings = Settings.from_environ(
        {},
        port=port,
        upstream_url=upstream,
        upstream_provider=provider,
        upstream_transport=transport,
        log_format="json",
    )
    configure_logging("json", settings.log_level)
    tel = Telemetry.from_environ(os.environ) if telemetry == "on" else Telemetry.disabled()
    app = create_app(settings, telemetry=tel)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 1,
    )
    RelayServer(config, app.state["relay"]).run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.bench.arms relay --port N --upstream URL [...]``."""
    parser = argparse.ArgumentParser(prog="python -m service.bench.arms")
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="serve one relay variant")
    relay.add_argument("--port", type=int, required=True)
    relay.add_argument("--upstream", required=True)
    relay.add_argument("--provider", choices=("anthropic", "openai"), default="anthropic")
    relay.add_argument("--telemetry", choices=("on", "off"), default="on")
    relay.add_argument("--transport", choices=TRANSPORTS, default="aiohttp")
    args = parser.parse_args(argv)
    with suppress(KeyboardInterrupt):
        serve_relay(
            args.port,
            args.upstream,
            provider=args.provider,
            telemetry=args.telemetry,
            transport=args.transport,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
