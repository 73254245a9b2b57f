"""``relay stack``: the compose stack as local processes, for machines without Docker.

Starts, in order: the mock provider, the OpenTelemetry Collector (when a binary able to run
``otel-collector/config.yaml`` is available), the relay (exporting traces to that
Collector), nginx twice (``streaming.conf`` and ``buffering.conf``), and Prometheus with
``prometheus/prometheus.yml`` and ``runbook/alerts.yml``. Prints the URLs, then waits;
Ctrl-C (or SIGTERM) stops everything in reverse order. Grafana and Tempo are not packaged
for this machine kind: use ``docker compose up`` for them. Logs and data go to
``--workdir`` (``artifacts/stack``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from service import otelcol, prom
from service.processes import spawn_service
from service.proxy.nginx import ConfigName, run_nginx

__all__ = ["StackPorts", "main", "register", "run_stack"]

_POLL = 0.5


@dataclass(frozen=True, slots=True)
class StackPorts:
    """Loopback ports of the stack (the compose defaults unless told otherwise)."""

    relay: int = 8000
    """The relay."""
    mock: int = 8100
    """The mock provider."""
    streaming: int = 8080
    """nginx with ``streaming.conf`` (the fix)."""
    buffering: int = 8081
    """nginx with ``buffering.conf`` (the trouble)."""
    prometheus: int = 9090
    """Prometheus UI and API."""
    otlp_grpc: int = 4317
    """Collector OTLP/gRPC receiver."""
    otlp_http: int = 4318
    """Collector OTLP/HTTP receiver (the relay exports here)."""
    collector_metrics: int = 8888
    """The Collector's own Prometheus metrics."""


def _collector_plan(announce: Callable[[str], None]) -> str | None:
    """A Collector binary that can run the project's config, or None (and say why)."""
    try:
        binary = otelcol.binary()
    except otelcol.CollectorError as exc:
        announce(f"collector: not started ({exc})")
        return None
    missing = otelcol.missing_components(binary)
    if missing:
        lacking = "; ".join(
            f"{kind}: {', '.join(sorted(names))}" for kind, names in missing.items()
        )
        announce(
            f"collector: not started: {binary} ({otelcol.version(binary)}) lacks {lacking}"
            " needed by otel-collector/config.yaml. Set OTELCOL_BIN to an otelcol-contrib"
            " build; until then the relay keeps trace ids (logs, exemplars) but exports"
            " no spans."
        )
        return None
    return binary


@contextmanager
def run_stack(
    ports: StackPorts,
    workdir: Path,
    *,
    announce: Callable[[str], None] = print,
    scrape_interval: str = "5s",
) -> Iterator[dict[str, str]]:
    """Start every local piece; yields name -> URL. Everything stops when the block ends."""
    workdir = workdir.resolve()
    urls: dict[str, str] = {}
    with ExitStack() as stack:
        mock_url = f"http://127.0.0.1:{ports.mock}"
        common = {"RELAY_LOG_FORMAT": "json"}
        stack.enter_context(
            spawn_service(
                ["mock", "--port", str(ports.mock)], common, f"{mock_url}/healthz",
                workdir / "mock.log",
            )
        )  # fmt: skip
        urls["mock provider"] = mock_url
        relay_env = {**common, "RELAY_UPSTREAM_URL": mock_url}
        collector = _collector_plan(announce)
        if collector is not None:
            stack.enter_context(_collector(collector, ports, workdir))
            relay_env |= {
                "OTEL_SERVICE_NAME": "llm-stream-relay",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports.otlp_http}",
            }
            urls["collector OTLP/HTTP"] = f"http://127.0.0.1:{ports.otlp_http}"
        relay_url = f"http://127.0.0.1:{ports.relay}"
        stack.enter_context(
            spawn_service(
                ["serve", "--port", str(ports.relay)], relay_env, f"{relay_url}/healthz",
                workdir / "relay.log",
            )
        )  # fmt: skip
        urls["relay"] = relay_url
        sites: tuple[tuple[ConfigName, int], ...] = (
            ("streaming", ports.streaming),
            ("buffering", ports.buffering),
        )
        for name, port in sites:
            nginx = stack.enter_context(
                run_nginx(name, ports.relay, prefix_root=workdir / "nginx", listen_port=port)
            )
            urls[f"nginx {name}"] = nginx.url
        config = prom.render_config(
            _scrape_targets(ports, with_collector=collector is not None),
            runbook_base_url=prom.RUNBOOK_DIR.as_uri(),
            scrape_interval=scrape_interval,
        )
        prometheus = stack.enter_context(
            prom.run_prometheus(config, workdir=workdir / "prometheus", port=ports.prometheus)
        )
        urls["prometheus"] = prometheus.url
        yield urls


def _scrape_targets(ports: StackPorts, *, with_collector: bool) -> dict[str, list[str]]:
    targets = {
        "relay": [f"127.0.0.1:{ports.relay}"],
        "prometheus": [f"127.0.0.1:{ports.prometheus}"],
    }
    if with_collector:
        targets["otel-collector"] = [f"127.0.0.1:{ports.collector_metrics}"]
    return targets


def _collector(
    binary: str, ports: StackPorts, workdir: Path
) -> AbstractContextManager[otelcol.CollectorProcess]:
    env = {
        "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{ports.otlp_grpc}",
        "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{ports.otlp_http}",
        "OTELCOL_METRICS_HOST": "127.0.0.1",
        "OTELCOL_METRICS_PORT": str(ports.collector_metrics),
        # No Tempo outside compose: spans go to the Collector's log (debug exporter).
        "OTELCOL_TRACES_EXPORTERS": "[debug]",
    }
    return otelcol.run_collector(
        binary,
        otelcol.COLLECTOR_CONFIG,
        env=env,
        log_path=workdir / "otel-collector.log",
        ready_port=ports.otlp_http,
    )


class _Stop(Exception):
    """SIGTERM, turned into an exception so the ``with`` blocks unwind."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _serve(args: argparse.Namespace) -> int:
    ports = StackPorts(
        relay=args.relay_port,
        mock=args.mock_port,
        streaming=args.streaming_port,
        buffering=args.buffering_port,
        prometheus=args.prometheus_port,
        otlp_grpc=args.otlp_grpc_port,
        otlp_http=args.otlp_http_port,
        collector_metrics=args.collector_metrics_port,
    )
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with run_stack(ports, Path(args.workdir), scrape_interval=args.scrape_interval) as urls:
            width = max(map(len, urls))
            for name, url in urls.items():
                print(f"  {name.ljust(width)}  {url}")
            print(f"logs in {Path(args.workdir).resolve()}; Grafana and Tempo: docker compose up")
            print("stack ready; Ctrl-C stops it", flush=True)
            while True:
                time.sleep(_POLL)
    except (KeyboardInterrupt, _Stop):
        print("stack stopped", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``relay stack`` (ports default to the compose stack's)."""
    parser = subparsers.add_parser(
        "stack", help="run mock, relay, nginx, Collector and Prometheus as local processes"
    )
    defaults = StackPorts()
    for field, help_text in (
        ("relay", "relay"),
        ("mock", "mock provider"),
        ("streaming", "nginx streaming.conf"),
        ("buffering", "nginx buffering.conf"),
        ("prometheus", "Prometheus"),
        ("otlp_grpc", "Collector OTLP/gRPC"),
        ("otlp_http", "Collector OTLP/HTTP"),
        ("collector_metrics", "Collector's own metrics"),
    ):
        option = f"--{field.replace('_', '-')}-port"
        parser.add_argument(
            option, type=int, default=getattr(defaults, field), help=f"{help_text} port"
        )
    parser.add_argument("--workdir", default="artifacts/stack", help="logs and data")
    parser.add_argument("--scrape-interval", default="5s", help="Prometheus scrape interval")
    parser.set_defaults(func=_serve)


def main(argv: list[str] | None = None) -> int:
    """``python -m service.stack``: the same as ``relay stack``."""
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["stack", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
