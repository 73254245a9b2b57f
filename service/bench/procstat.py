"""Process trees on Linux: their members, resident memory, CPU time and CPU affinity.

A system under test can be several processes (nginx's master and worker beside the relay;
LiteLLM's or node's helpers), so every figure is taken over the whole tree under each root.
Everything reads ``/proc``; a process that exits between two reads is simply not counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

__all__ = ["cpu_seconds", "pin", "rss_kib", "tree"]

_PROC: Final = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Field 2 (the command name) may hold spaces and parentheses: split after the last ")".
    return stat.rsplit(")", 1)[1].split()


def tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    seen: list[int] = []
    pending = [r for r in roots if (_PROC / str(r)).exists()]
    while pending:
        pid = pending.pop()
        if pid not in seen:
            seen.append(pid)
            pending.extend(children.get(pid, []))
    return seen


def rss_kib(pids: Iterable[int]) -> int:
    """Summed ``VmRSS`` of ``pids`` in KiB."""
    total = 0
    for pid in pids:
        try:
            lines = (_PROC / str(pid) / "status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """Summed user + system CPU time of ``pids`` (all their threads) in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def pin(pids: Iterable[int], cpus: Sequence[int]) -> None:
    """Set the CPU affinity of every thread of ``pids`` (for processes not started by taskset)."""
    for pid in pids:
        try:
            threads = [int(t.name) for t in (_PROC / str(pid) / "task").iterdir()]
        except OSError:
            continue
        for tid in threads:
            try:
                os.sched_setaffinity(tid, set(cpus))
            except OSError:
                continue
