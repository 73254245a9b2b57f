"""Run the project's Prometheus configuration with the real Prometheus binary, locally.

``prometheus/prometheus.yml`` is written for docker compose (targets ``relay:8000`` ...,
rules mounted beside it). :func:`render_config` keeps everything else and rewrites only
what differs outside compose: the scrape targets, the rule file path, the evaluation and
scrape intervals, and the ``runbook_base_url`` external label that every alert's
``runbook_url`` starts with. :func:`run_prometheus` starts the binary as a child process
with its own data directory and stops it again. ``relay stack`` and the dashboard tests use
both.

Usage::

    config = render_config({"relay": ["127.0.0.1:8000"]}, scrape_interval="1s")
    with run_prometheus(config, workdir=Path("artifacts/stack/prometheus")) as prom:
        httpx.get(f"{prom.url}/api/v1/query", params={"query": "up"})
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from service.processes import free_port, http_ok, stop_process, wait_ready
from service.processes import log_tail as _log_tail

__all__ = [
    "ALERT_RULES",
    "PROMETHEUS_CONFIG",
    "RUNBOOK_DIR",
    "PrometheusError",
    "PrometheusProcess",
    "binary",
    "free_port",
    "log_tail",
    "render_config",
    "run_prometheus",
]

_REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = _REPO / "prometheus" / "prometheus.yml"
"""The compose configuration every rendering starts from."""
ALERT_RULES = _REPO / "runbook" / "alerts.yml"
"""The alerting and recording rules."""
RUNBOOK_DIR = _REPO / "runbook" / "alerts"
"""One page per alert, named ``<alertname>.md``."""

_START_TIMEOUT = 30.0
_STOP_GRACE = 10.0
_LOG_TAIL_LINES = 40


class PrometheusError(RuntimeError):
    """Prometheus could not be found or did not start."""


@dataclass(frozen=True, slots=True)
class PrometheusProcess:
    """A running Prometheus."""

    port: int
    """HTTP port on 127.0.0.1 (UI and API)."""
    workdir: Path
    """Holds ``prometheus.yml``, ``data/`` and ``prometheus.log``."""
    pid: int
    """Process id."""

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """Prometheus's own log (stdout and stderr)."""
        return self.workdir / "prometheus.log"


def binary(name: str = "prometheus") -> str:
    """Path of ``prometheus`` or ``promtool``: ``$PROMETHEUS_BIN``/``$PROMTOOL_BIN``, PATH,
    or Debian's /usr/bin."""
    override = os.environ.get(f"{name.upper()}_BIN")
    for candidate in (override, shutil.which(name), f"/usr/bin/{name}"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise PrometheusError(
        f"{name} not found: install Debian's `prometheus` package (`make system-deps`)"
        f" or point {name.upper()}_BIN at the binary"
    )


def render_config(
    targets: Mapping[str, Sequence[str]],
    *,
    rules: Path | None = ALERT_RULES,
    runbook_base_url: str | None = None,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    source: Path = PROMETHEUS_CONFIG,
) -> dict[str, Any]:
    """The compose configuration with local ``targets`` per job name.

    Jobs not named in ``targets`` are dropped (there is nothing to scrape for them).
    ``rules`` becomes the only rule file (absolute path; ``None`` loads no rules).
    ``runbook_base_url`` (e.g. ``file:///.../runbook/alerts``) sets the external label the
    alerts' ``runbook_url`` starts with. ``scrape_interval`` applies to every kept job.
    """
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    jobs = []
    for job in config.get("scrape_configs", []):
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
            if scrape_interval is not None:
                job["scrape_interval"] = scrape_interval
            jobs.append(job)
    unknown = set(targets) - {job["job_name"] for job in jobs}
    if unknown:
        raise PrometheusError(f"no job named {sorted(unknown)} in {source}")
    config["scrape_configs"] = jobs
    config["rule_files"] = [str(rules)] if rules is not None else []
    glob = config.setdefault("global", {})
    if scrape_interval is not None:
        glob["scrape_interval"] = scrape_interval
    if evaluation_interval is not None:
        glob["evaluation_interval"] = evaluation_interval
    if runbook_base_url is not None:
        glob.setdefault("external_labels", {})["runbook_base_url"] = runbook_base_url
    return config


@contextmanager
def run_prometheus(
    config: Mapping[str, Any],
    *,
    workdir: Path,
    port: int | None = None,
    retention: str = "1d",
) -> Iterator[PrometheusProcess]:
    """Write ``config`` to ``workdir/prometheus.yml`` and serve it on 127.0.0.1.

    Exemplar storage is on (the relay's histograms carry trace ids). Waits for
    ``/-/ready``; on exit SIGTERM (Prometheus flushes its head block), then SIGKILL to its
    own process group. The log tail is attached to start-up failures.
    """
    workdir = workdir.resolve()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    port = free_port() if port is None else port
    args = [
        binary(),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
        "--web.enable-lifecycle",
    ]
    running = PrometheusProcess(port=port, workdir=workdir, pid=0)
    with running.log.open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - the binary found above, our own arguments
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: the last-resort kill stays ours
        )
    running = PrometheusProcess(port=port, workdir=workdir, pid=proc.pid)
    try:
        wait_ready(
            proc,
            http_ok(f"{running.url}/-/ready"),
            name="prometheus",
            timeout=_START_TIMEOUT,
            log_path=running.log,
            error=PrometheusError,
        )
        yield running
    finally:
        stop_process(proc, signals=((signal.SIGTERM, _STOP_GRACE),))


def log_tail(process: PrometheusProcess) -> str:
    """The last lines of Prometheus's log, for error messages."""
    return _log_tail(process.log, _LOG_TAIL_LINES)
