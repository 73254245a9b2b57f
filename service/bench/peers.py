"""The peer gateways: LiteLLM proxy and Portkey's gateway, installed apart from the relay.

Both are systems under test, not dependencies, so they live in a cache directory (git-ignored
``artifacts/bench/peers`` by default) and never touch the project's virtualenv:

- LiteLLM: a virtualenv of its own with ``litellm[proxy]`` (its pins would otherwise move the
  relay's own httpx, uvicorn and pydantic); run as ``litellm --config <yaml> --num_workers 1``
  with no database (no ``DATABASE_URL``), the bundled model cost map
  (``LITELLM_LOCAL_MODEL_COST_MAP=True``, so start-up fetches nothing) and telemetry off.
- Portkey: ``npm install @portkey-ai/gateway`` into the cache; run with node as
  ``build/start-server.js --port=N --headless``, routed per request with
  ``x-portkey-provider: openai`` and ``x-portkey-custom-host`` (loopback is on its default
  trusted-hosts list).

Both relay the fast mock's OpenAI Chat Completions stream; the client speaks OpenAI to them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_CACHE",
    "LITELLM_VERSION",
    "PORTKEY_VERSION",
    "PeerInstall",
    "find_peers",
    "install_peers",
    "litellm_command",
    "portkey_command",
]

DEFAULT_CACHE: Final = Path("artifacts/bench/peers")
"""Where peers are installed unless told otherwise (git-ignored)."""

LITELLM_VERSION: Final = "1.108.7"
"""Pinned so a rerun measures the same peer; bump it deliberately."""
PORTKEY_VERSION: Final = "1.15.2"
"""Pinned likewise."""
_LITELLM_SPEC: Final = f"litellm[proxy]=={LITELLM_VERSION}"
# Portkey 1.15.2 fails every streamed chat completion on node with "TypeError: immutable"
# when npm resolves @hono/node-server >= 1.14.2 (Portkey-AI/gateway#1389: the lightweight
# Response keeps fetch's immutable Headers and Portkey appends x-portkey-* headers to it).
# The last versions that copy the headers are pinned through npm overrides.
_PORTKEY_PACKAGE: Final = {
    "name": "relay-bench-portkey",
    "private": True,
    "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
    "overrides": {"@hono/node-server": "1.14.1", "@hono/node-ws": "1.2.0"},
}
_INSTALL_TIMEOUT: Final = 1800


@dataclass(frozen=True, slots=True)
class PeerInstall:
    """What was found in the cache (``None`` where a peer is missing, with the reason)."""

    litellm_bin: Path | None
    litellm_version: str | None
    portkey_script: Path | None
    portkey_version: str | None
    node: str | None
    portkey_hono: str | None
    """The @hono/node-server Portkey resolved (see ``_PORTKEY_PACKAGE``)."""
    missing: dict[str, str]
    """Peer name -> why it cannot run."""


def _litellm_paths(cache: Path) -> tuple[Path, Path]:
    venv = cache / "litellm-venv"
    return venv / "bin" / "litellm", venv / "bin" / "python"


def _portkey_dir(cache: Path) -> Path:
    return cache / "portkey" / "node_modules" / "@portkey-ai" / "gateway"


def find_peers(cache: Path = DEFAULT_CACHE) -> PeerInstall:
    """Look for both peers in ``cache`` (no network)."""
    missing: dict[str, str] = {}
    litellm_bin, python = _litellm_paths(cache)
    litellm_version = None
    if litellm_bin.exists():
        litellm_version = _python_version_of(python, "litellm")
    else:
        missing["litellm"] = f"not installed ({litellm_bin} missing; run with --install-peers)"
    node = shutil.which("node")
    gateway = _portkey_dir(cache)
    script = gateway / "build" / "start-server.js"
    portkey_version = hono = None
    hono_package = cache / "portkey" / "node_modules" / "@hono" / "node-server" / "package.json"
    if hono_package.exists():
        hono = json.loads(hono_package.read_text())["version"]
    if node is None:
        missing["portkey"] = "node is not installed (Debian package nodejs)"
    elif not script.exists():
        missing["portkey"] = f"not installed ({script} missing; run with --install-peers)"
    else:
        portkey_version = json.loads((gateway / "package.json").read_text())["version"]
    return PeerInstall(
        litellm_bin=litellm_bin if "litellm" not in missing else None,
        litellm_version=litellm_version,
        portkey_script=script if "portkey" not in missing else None,
        portkey_version=portkey_version,
        node=node,
        portkey_hono=hono,
        missing=missing,
    )


def _python_version_of(python: Path, package: str) -> str | None:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    result = subprocess.run(  # noqa: S603 - the peer's own interpreter, fixed code
        [str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout.strip() or None


def install_peers(cache: Path = DEFAULT_CACHE) -> list[str]:
    """Install whatever is missing into ``cache`` (PyPI and npm); returns what it did.

    A failed install is reported, not raised: the sweep then marks that peer not installed.
    """
    cache.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    litellm_bin, python = _litellm_paths(cache)
    if not litellm_bin.exists():
        venv = python.parent.parent
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "-q", _LITELLM_SPEC],
        ]
        done.append(_run_steps("litellm", steps, cache / "litellm-install.log"))
    if shutil.which("npm") and not (_portkey_dir(cache) / "build").exists():
        prefix = cache / "portkey"
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "package.json").write_text(json.dumps(_PORTKEY_PACKAGE, indent=2) + "\n")
        steps = [["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund"]]
        done.append(_run_steps("portkey", steps, cache / "portkey-install.log"))
    return done


def _run_steps(name: str, steps: list[list[str]], log: Path) -> str:
    with log.open("w") as out:
        for step in steps:
            result = subprocess.run(  # noqa: S603 - fixed installer commands
                step, stdout=out, stderr=subprocess.STDOUT, timeout=_INSTALL_TIMEOUT, check=False
            )
            if result.returncode != 0:
                return f"{name}: `{' '.join(step)}` failed ({result.returncode}); see {log}"
    return f"{name}: installed (log {log})"


def litellm_command(
    install: PeerInstall, port: int, upstream_url: str, workdir: Path, master_key: str
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a one-worker LiteLLM proxy relaying the fast mock.

    LiteLLM refuses to start without a strong master key; clients send it as
    ``Authorization: Bearer <master_key>`` (checked in memory, there is no database).
    """
    assert install.litellm_bin is not None
    config = workdir / "litellm.yaml"
    # JSON is YAML: no YAML writer needed.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "mock-text",
                        "litellm_params": {
                            "model": "openai/mock-text",
                            "api_base": f"{upstream_url}/v1",
                            "api_key": "bench",
                            "stream_timeout": 600,
                            "max_retries": 0,
                        },
                    }
                ],
                "litellm_settings": {
                    "telemetry": False,
                    "drop_params": True,
                    "num_retries": 0,
                    "request_timeout": 600,
                    "json_logs": False,
                },
                "general_settings": {},
            },
            indent=2,
        )
    )
    argv = [
        str(install.litellm_bin),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "DISABLE_SCHEMA_UPDATE": "True",
        "HOME": str(workdir),
        "LITELLM_MASTER_KEY": master_key,
    }
    # No database: LiteLLM runs keyless and stateless when DATABASE_URL is unset.
    env = {**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, **env}
    return argv, env


def portkey_command(install: PeerInstall, port: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of Portkey's gateway on node (headless: no UI routes)."""
    assert install.portkey_script is not None
    assert install.node is not None
    return [install.node, str(install.portkey_script), f"--port={port}", "--headless"], dict(
        os.environ
    )
