"""Helper-process management: readiness, start-up failures, escalating stops."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.processes import ProcessStartError, log_tail, port_accepts, stop_process, wait_ready


def _python(code: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_a_process_that_exits_during_start_up_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    proc = _python("print('boom: bad config'); raise SystemExit(3)", log)
    with pytest.raises(ProcessStartError, match="exited with 3") as info:
        wait_ready(proc, lambda: False, name="p", timeout=10, log_path=log)
    assert "boom: bad config" in str(info.value)


def test_not_ready_in_time_stops_the_process() -> None:
    proc = _python("import time; time.sleep(60)")
    with pytest.raises(ProcessStartError, match="not ready within"):
        wait_ready(proc, lambda: False, name="p", timeout=0.3)
    assert proc.poll() is not None, "a process that never got ready must not be left running"


def test_stop_escalates_to_sigkill_when_the_signal_is_ignored() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
    stop_process(proc, signals=((signal.SIGTERM, 0.3),))
    assert proc.returncode == -signal.SIGKILL


def test_a_listening_port_is_seen(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_accepts(port)()
    assert not port_accepts(port)()
    assert "no log" in log_tail(tmp_path / "missing.log")
