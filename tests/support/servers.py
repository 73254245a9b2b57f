"""Run a real uvicorn server on 127.0.0.1 for a test, in a background thread.

The server owns its own event loop in its thread, so sync and async tests can both use it, and a
client's event loop never shares a scheduler with the server it measures.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["run_uvicorn"]


@contextmanager
def run_uvicorn(
    app: Callable[..., Any],
    *,
    http: str = "auto",
    shutdown_timeout: float = 3.0,
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields ``http://127.0.0.1:<port>``.

    ``http`` picks uvicorn's protocol implementation (``auto``, ``h11``, ``httptools``). On exit
    the server stops accepting, gives in-flight requests ``shutdown_timeout`` seconds, then
    cancels them and runs the app's shutdown; the thread must be gone before this returns.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound before the thread starts: no port race
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        http=http,
        lifespan="on",
        access_log=False,
        log_config=None,  # never reconfigure the test process's logging
        # Typed int, but it only feeds asyncio.wait_for: fractions work and keep tests fast.
        timeout_graceful_shutdown=shutdown_timeout,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        _wait_started(server, thread, startup_timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=shutdown_timeout + 10)
        sock.close()
    if thread.is_alive():
        raise RuntimeError(f"uvicorn on port {port} did not shut down")


def _wait_started(server: uvicorn.Server, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup (see the log above)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start within {timeout} s")
        time.sleep(0.01)
