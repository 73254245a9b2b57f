"""Run the project's real nginx configs, with the real nginx binary, in front of a test server.

The prefix directory gets verbatim copies of ``nginx/nginx.conf``, ``streaming.conf`` and
``buffering.conf``. Only the environment file is rendered: ``nginx/local.conf`` with the
upstream port and the listen port substituted and the other config's ``server`` line
dropped, so each nginx process serves the one config under test. ``extra_directives`` go
to ``conf/stream-overrides/test.conf``, which the stream locations of both configs include
(an empty glob by default).

Usage::

    with run_nginx("streaming", upstream_port, tmp_path=tmp_path) as base_url:
        ...  # requests to f"{base_url}/v1/messages" reach the upstream through nginx
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "NGINX_DIR",
    "ConfigName",
    "NginxError",
    "check_config",
    "free_port",
    "nginx_binary",
    "render_local_conf",
    "render_prefix",
    "run_nginx",
]

ConfigName = Literal["streaming", "buffering"]

NGINX_DIR = Path(__file__).resolve().parents[2] / "nginx"
"""The project's nginx/ directory (the configs under test)."""

_COPIED = ("nginx.conf", "streaming.conf", "buffering.conf")
_START_TIMEOUT = 10.0
_QUIT_GRACE = 5.0
_TERM_GRACE = 3.0
_BIND_ATTEMPTS = 3
_LOG_TAIL_LINES = 60
# Indented `server ADDR;` lines are upstream members; top-level `server {` lines are sites.
_UPSTREAM_SERVER = re.compile(r"(?m)^(\s+server\s+)[^\s;]+;")
_SITE_LINE = re.compile(
    r"(?m)^server \{ listen (?P<listen>[^;]+); include (?P<name>\w+)\.conf; \}\n"
)


class NginxError(RuntimeError):
    """nginx could not be found, rejected its config, or did not start."""


@dataclass(frozen=True, slots=True)
class _Running:
    proc: subprocess.Popen[bytes]
    port: int
    prefix: Path


def nginx_binary() -> str:
    """Path of the nginx binary: ``$NGINX_BIN``, ``nginx`` on PATH, or Debian's /usr/sbin."""
    candidates = [os.environ.get("NGINX_BIN"), shutil.which("nginx"), "/usr/sbin/nginx"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise NginxError("nginx not found (install it with `make system-deps`: nginx-light)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nginx cannot listen on port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def render_local_conf(config: ConfigName, upstream_port: int, listen_port: int) -> str:
    """``nginx/local.conf`` with the two addresses substituted and only ``config``'s site."""
    text = (NGINX_DIR / "local.conf").read_text()
    text, upstreams = _UPSTREAM_SERVER.subn(rf"\g<1>127.0.0.1:{upstream_port};", text)
    if upstreams != 1:
        raise NginxError(f"local.conf: expected one upstream server line, found {upstreams}")
    sites = [m for m in _SITE_LINE.finditer(text) if m.group("name") == config]
    if len(sites) != 1:
        raise NginxError(f"local.conf: expected one `server {{ ... {config}.conf; }}` line")
    site = sites[0]
    kept = site.group(0).replace(site.group("listen"), f"127.0.0.1:{listen_port}", 1)
    return _SITE_LINE.sub(lambda m: kept if m.start() == site.start() else "", text)


def render_prefix(
    config: ConfigName,
    upstream_port: int,
    listen_port: int,
    *,
    dest: Path,
    extra_directives: str = "",
) -> Path:
    """Lay out an nginx prefix in ``dest``; returns the main config file to pass to ``-c``."""
    conf_dir = dest / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    for name in _COPIED:
        shutil.copyfile(NGINX_DIR / name, conf_dir / name)
    (conf_dir / "local.conf").write_text(render_local_conf(config, upstream_port, listen_port))
    if extra_directives.strip():
        overrides = conf_dir / "stream-overrides"
        overrides.mkdir(exist_ok=True)
        (overrides / "test.conf").write_text(extra_directives.rstrip() + "\n")
    return conf_dir / "nginx.conf"


def check_config(prefix: Path, conf: Path) -> str:
    """Run ``nginx -t`` on a rendered prefix; returns its output, raises :class:`NginxError`."""
    result = subprocess.run(
        [nginx_binary(), "-t", *_base_args(prefix, conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise NginxError(f"nginx -t failed for {conf}:\n{output}")
    return output


@contextmanager
def run_nginx(
    config: ConfigName,
    upstream_port: int,
    *,
    listen_port: int | None = None,
    extra_directives: str = "",
    tmp_path: Path,
) -> Iterator[str]:
    """Start nginx with ``config`` in front of ``127.0.0.1:upstream_port``; yield its base URL.

    Waits until nginx accepts connections. On exit: SIGQUIT (graceful), then SIGTERM, then
    SIGKILL to nginx's process group. nginx's error log is attached to a start-up failure
    and, as a note, to any exception raised inside the ``with`` block.
    """
    running = _start(config, upstream_port, listen_port, extra_directives, tmp_path)
    try:
        yield f"http://127.0.0.1:{running.port}"
    except Exception as exc:
        exc.add_note(_diagnostics(running.prefix))
        raise
    finally:
        _stop(running.proc)


def _base_args(prefix: Path, conf: Path) -> list[str]:
    args = ["-p", f"{prefix}/", "-c", str(conf)]
    if os.geteuid() == 0:
        # As root, workers would drop to `nobody`, which cannot enter pytest's 0700 tmp dirs.
        args += ["-g", "user root;"]
    return args


def _start(
    config: ConfigName,
    upstream_port: int,
    listen_port: int | None,
    extra_directives: str,
    tmp_path: Path,
) -> _Running:
    attempts = 1 if listen_port is not None else _BIND_ATTEMPTS
    for attempt in range(attempts):
        port = listen_port if listen_port is not None else free_port()
        prefix = tmp_path / f"nginx-{config}-{port}"
        conf = render_prefix(
            config, upstream_port, port, dest=prefix, extra_directives=extra_directives
        )
        with (prefix / "nginx.out").open("wb") as out:
            proc = subprocess.Popen(
                [nginx_binary(), *_base_args(prefix, conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: the last-resort kill stays ours
            )
        try:
            _wait_until_listening(proc, port, prefix)
        except NginxError as exc:
            _stop(proc)
            if "Address already in use" in str(exc) and attempt + 1 < attempts:
                continue
            raise
        return _Running(proc=proc, port=port, prefix=prefix)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, prefix: Path) -> None:
    # The pid file is written after the listen sockets are bound: a connect that succeeds
    # before it exists may have reached some other process on a reused port.
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NginxError(f"nginx exited with {proc.returncode}:\n{_diagnostics(prefix)}")
        if (prefix / "nginx.pid").exists() and _accepts(port):
            return
        time.sleep(0.02)
    raise NginxError(
        f"nginx did not listen on {port} within {_START_TIMEOUT}s:\n{_diagnostics(prefix)}"
    )


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGQUIT, _QUIT_GRACE), (signal.SIGTERM, _TERM_GRACE)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Master and workers share the process group we created; a stuck master takes its
    # workers with it.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=_TERM_GRACE)


def _diagnostics(prefix: Path) -> str:
    parts = []
    for name in ("error.log", "nginx.out"):
        path = prefix / name
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
            parts.append(f"--- nginx {name} ({path}) ---\n" + "\n".join(lines))
    return "\n".join(parts) or f"(no nginx logs in {prefix})"
