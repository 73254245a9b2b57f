"""The real nginx with the project's configs in front of a test server (thin test wrapper).

Process management lives in :mod:`service.proxy.nginx` (``relay capture`` and the benchmarks
use it too); this module adapts it to pytest's ``tmp_path`` and keeps the names the suites
import. ``extra_directives`` go to ``conf/stream-overrides/extra.conf``, which the stream
locations of both configs include (an empty glob by default).

Usage::

    with run_nginx("streaming", upstream_port, tmp_path=tmp_path) as base_url:
        ...  # requests to f"{base_url}/v1/messages" reach the upstream through nginx

    with start_nginx("streaming", upstream_port, tmp_path=tmp_path) as nginx:
        nginx.url, nginx.error_log, nginx.access_log
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.proxy.nginx import (
    DEFAULT_CONFIGS_DIR,
    ConfigName,
    NginxError,
    NginxProcess,
    check_config,
    free_port,
    nginx_binary,
    render_local_conf,
    render_prefix,
)
from service.proxy.nginx import run_nginx as _run_nginx

__all__ = [
    "NGINX_DIR",
    "ConfigName",
    "NginxError",
    "NginxProcess",
    "check_config",
    "free_port",
    "nginx_binary",
    "render_local_conf",
    "render_prefix",
    "run_nginx",
    "start_nginx",
]

NGINX_DIR = DEFAULT_CONFIGS_DIR
"""The project's nginx/ directory (the configs under test)."""


@contextmanager
def start_nginx(
    config: ConfigName,
    upstream_port: int,
    *,
    listen_port: int | None = None,
    extra_directives: str = "",
    tmp_path: Path,
) -> Iterator[NginxProcess]:
    """Start nginx with ``config`` in front of ``127.0.0.1:upstream_port``; yield the process
    (``url``, ``error_log``, ``access_log``). Stopped when the block ends."""
    with _run_nginx(
        config,
        upstream_port,
        prefix_root=tmp_path,
        listen_port=listen_port,
        extra_directives=extra_directives,
    ) as nginx:
        yield nginx


@contextmanager
def run_nginx(
    config: ConfigName,
    upstream_port: int,
    *,
    listen_port: int | None = None,
    extra_directives: str = "",
    tmp_path: Path,
) -> Iterator[str]:
    """Like :func:`start_nginx`, yielding only the base URL ``http://127.0.0.1:<port>``."""
    with start_nginx(
        config,
        upstream_port,
        listen_port=listen_port,
        extra_directives=extra_directives,
        tmp_path=tmp_path,
    ) as nginx:
        yield nginx.url
