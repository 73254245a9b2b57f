"""Run the project's nginx configs with the real nginx binary, as an unprivileged child process.

Used by ``relay capture`` and ``relay bench cancel`` (and, through ``tests/support/nginx.py``,
by the test suites). A prefix directory gets verbatim copies of ``nginx.conf``,
``streaming.conf`` and ``buffering.conf`` from the configs directory (the repository's
``nginx/`` by default). Only the environment file is rendered: ``local.conf`` with the
upstream port and the listen port substituted and the other config's ``server`` line dropped,
so each nginx process serves exactly one config. ``extra_directives`` go to
``conf/stream-overrides/extra.conf``, which the stream locations of both configs include.

Usage::

    with run_nginx("streaming", relay_port, prefix_root=Path("artifacts/nginx")) as nginx:
        ...  # requests to f"{nginx.url}/v1/messages" reach the relay through nginx
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.processes import free_port, port_accepts, stop_process

__all__ = [
    "DEFAULT_CONFIGS_DIR",
    "ConfigName",
    "NginxError",
    "NginxProcess",
    "check_config",
    "diagnostics",
    "free_port",
    "nginx_binary",
    "nginx_version",
    "render_local_conf",
    "render_prefix",
    "run_nginx",
]

ConfigName = Literal["streaming", "buffering"]

DEFAULT_CONFIGS_DIR = Path(__file__).resolve().parents[2] / "nginx"
"""The repository's ``nginx/`` directory, found relative to the package (editable install)."""

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
class NginxProcess:
    """A running nginx serving one config."""

    config: ConfigName
    """Which server body it serves (``streaming`` or ``buffering``)."""
    port: int
    """Listen port on 127.0.0.1."""
    prefix: Path
    """Its prefix directory: rendered ``conf/``, pid file, logs, temp files."""
    pid: int
    """The master process id."""

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        """nginx's ``error.log`` (``notice`` level)."""
        return self.prefix / "error.log"

    @property
    def access_log(self) -> Path:
        """nginx's ``access.log`` in the ``relay`` format (``rt=``, ``uht=``, ``gzip=``)."""
        return self.prefix / "access.log"


def nginx_binary() -> str:
    """Path of the nginx binary: ``$NGINX_BIN``, ``nginx`` on PATH, or Debian's /usr/sbin.

    An ``NGINX_BIN`` that is set but not an executable file is an error (no silent fallback
    to another nginx than the one asked for).
    """
    explicit = os.environ.get("NGINX_BIN")
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise NginxError(f"NGINX_BIN={explicit} is not an executable file")
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise NginxError(
        "nginx not found: install it (`make system-deps` installs Debian's nginx-light)"
        " or point NGINX_BIN at the binary"
    )


def nginx_version() -> str:
    """``nginx -v`` output, e.g. ``nginx/1.22.1``."""
    result = subprocess.run(  # noqa: S603 - the binary found above, fixed arguments
        [nginx_binary(), "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    return (result.stderr or result.stdout).strip().removeprefix("nginx version: ")


def render_local_conf(
    config: ConfigName,
    upstream_port: int,
    listen_port: int,
    *,
    configs_dir: Path = DEFAULT_CONFIGS_DIR,
) -> str:
    """``local.conf`` with the two addresses substituted and only ``config``'s site."""
    text = (configs_dir / "local.conf").read_text()
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
    configs_dir: Path = DEFAULT_CONFIGS_DIR,
) -> Path:
    """Lay out an nginx prefix in ``dest``; returns the main config file to pass to ``-c``."""
    conf_dir = dest / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    for name in _COPIED:
        shutil.copyfile(configs_dir / name, conf_dir / name)
    (conf_dir / "local.conf").write_text(
        render_local_conf(config, upstream_port, listen_port, configs_dir=configs_dir)
    )
    if extra_directives.strip():
        overrides = conf_dir / "stream-overrides"
        overrides.mkdir(exist_ok=True)
        (overrides / "extra.conf").write_text(extra_directives.rstrip() + "\n")
    return conf_dir / "nginx.conf"


def check_config(prefix: Path, conf: Path) -> str:
    """Run ``nginx -t`` on a rendered prefix; returns its output, raises :class:`NginxError`."""
    result = subprocess.run(  # noqa: S603 - the binary found above, our own config paths
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
    prefix_root: Path,
    listen_port: int | None = None,
    extra_directives: str = "",
    configs_dir: Path = DEFAULT_CONFIGS_DIR,
) -> Iterator[NginxProcess]:
    """Start nginx with ``config`` in front of ``127.0.0.1:upstream_port``.

    The prefix is ``prefix_root/nginx-<config>-<port>``. Waits until nginx accepts
    connections. On exit: SIGQUIT (graceful), then SIGTERM, then SIGKILL to nginx's own
    process group. nginx's error log is attached to a start-up failure and, as a note, to
    any exception raised inside the ``with`` block.
    """
    proc, running = _start(
        config, upstream_port, listen_port, extra_directives, prefix_root.resolve(), configs_dir
    )
    try:
        yield running
    except Exception as exc:
        exc.add_note(diagnostics(running.prefix))
        raise
    finally:
        _stop_nginx(proc)


def diagnostics(prefix: Path) -> str:
    """The tail of nginx's error log and console output in ``prefix``, for error messages."""
    parts = []
    for name in ("error.log", "nginx.out"):
        path = prefix / name
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
            parts.append(f"--- nginx {name} ({path}) ---\n" + "\n".join(lines))
    return "\n".join(parts) or f"(no nginx logs in {prefix})"


# --- process management ---------------------------------------------------------------


def _base_args(prefix: Path, conf: Path) -> list[str]:
    args = ["-p", f"{prefix}/", "-c", str(conf)]
    if os.geteuid() == 0:
        # As root, workers would drop to `nobody`, which cannot enter 0700 temp dirs.
        args += ["-g", "user root;"]
    return args


def _start(
    config: ConfigName,
    upstream_port: int,
    listen_port: int | None,
    extra_directives: str,
    prefix_root: Path,
    configs_dir: Path,
) -> tuple[subprocess.Popen[bytes], NginxProcess]:
    # A free port can be taken between the probe and nginx's bind: try a few.
    attempts = 1 if listen_port is not None else _BIND_ATTEMPTS
    for attempt in range(attempts):
        port = listen_port if listen_port is not None else free_port()
        prefix = prefix_root / f"nginx-{config}-{port}"
        conf = render_prefix(
            config,
            upstream_port,
            port,
            dest=prefix,
            extra_directives=extra_directives,
            configs_dir=configs_dir,
        )
        with (prefix / "nginx.out").open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - the binary found above, our own config
                [nginx_binary(), *_base_args(prefix, conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: the last-resort kill stays ours
            )
        running = NginxProcess(config=config, port=port, prefix=prefix, pid=proc.pid)
        try:
            _wait_until_listening(proc, running)
        except NginxError as exc:
            _stop_nginx(proc)
            if "Address already in use" in str(exc) and attempt + 1 < attempts:
                continue
            raise
        return proc, running
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _wait_until_listening(proc: subprocess.Popen[bytes], running: NginxProcess) -> None:
    # The pid file is written after the listen sockets are bound: a connect that succeeds
    # before it exists may have reached some other process on a reused port.
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NginxError(f"nginx exited with {proc.returncode}:\n{diagnostics(running.prefix)}")
        if (running.prefix / "nginx.pid").exists() and port_accepts(running.port)():
            return
        time.sleep(0.02)
    raise NginxError(
        f"nginx did not listen on {running.port} within {_START_TIMEOUT}s:\n"
        f"{diagnostics(running.prefix)}"
    )


def _stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    # SIGQUIT lets open streams finish; master and workers share the process group we
    # created, so the final SIGKILL takes stuck workers with it.
    stop_process(proc, signals=((signal.SIGQUIT, _QUIT_GRACE), (signal.SIGTERM, _TERM_GRACE)))
