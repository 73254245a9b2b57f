"""Grafana dashboards as code: ``relay dashboards`` writes ``dashboards/*.json``,
``relay dashboards --check`` fails when the committed files differ from what the code makes.

The dashboards are built with grafana-foundation-sdk (``service/dashboards/overview.py``)
and serialised deterministically (sorted keys, two-space indent, trailing newline), so a
review diff shows exactly the panels that changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["DASHBOARDS", "DASHBOARDS_DIR", "check", "register", "render", "write"]

DASHBOARDS_DIR = Path(__file__).resolve().parents[2] / "dashboards"
"""The repository's ``dashboards/`` directory (found relative to the package)."""

DASHBOARDS: dict[str, Callable[[], str]] = {}
"""File name -> function returning that file's JSON text."""


def _overview() -> str:
    # Imported here, not at module level: `relay` builds its parser from every command
    # module, and the SDK is only needed to generate (it is a dev dependency).
    from service.dashboards import overview

    return _encode(overview.build().build())


DASHBOARDS["llm-stream-relay.json"] = _overview


def _encode(model: object) -> str:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    # The SDK's encoder turns its model classes into plain JSON; round-tripping through
    # json.loads drops its formatting choices so the output is stable and sorted.
    plain = json.loads(json.dumps(model, cls=JSONEncoder))
    return json.dumps(plain, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every dashboard file name with its JSON text."""
    return {name: make() for name, make in DASHBOARDS.items()}


def write(directory: Path = DASHBOARDS_DIR) -> list[Path]:
    """Write every dashboard into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check(directory: Path = DASHBOARDS_DIR) -> list[str]:
    """Names of dashboards whose file in ``directory`` is missing or differs (empty: fresh)."""
    stale = []
    for name, text in render().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def _run(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.check:
        stale = check(directory)
        for name in stale:
            print(f"stale: {directory / name} (run `relay dashboards`)", file=sys.stderr)
        if not stale:
            print(f"dashboards in {directory} are up to date")
        return 1 if stale else 0
    for path in write(directory):
        print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``relay dashboards [--check] [--dir DIR]``."""
    parser = subparsers.add_parser(
        "dashboards", help="generate the Grafana dashboards (dashboards/*.json) from code"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a committed dashboard differs from the generated one",
    )
    parser.add_argument("--dir", default=str(DASHBOARDS_DIR), help="dashboards directory")
    parser.set_defaults(func=_run)
