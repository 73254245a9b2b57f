"""Where a benchmark ran, for its results page: the CPU model and the relay stack's versions."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Final

__all__ = ["RELAY_PACKAGES", "cpu_model", "package_versions"]

RELAY_PACKAGES: Final = (
    "uvicorn",
    "httptools",
    "uvloop",
    "h11",
    "httpx",
    "httpcore",
    "httpx-aiohttp",
    "aiohttp",
    "anyio",
    "litestar",
    "msgspec",
)
"""The packages a relayed event goes through (server, upstream client, event loop)."""


def cpu_model() -> str:
    """``model name`` from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_versions(names: Iterable[str] = RELAY_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (``None`` when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
