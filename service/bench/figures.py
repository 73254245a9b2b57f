"""From the sweep's raw samples to its figures: pure functions, no I/O.

Definitions (used by the results page word for word):

- **TTFT**: request written -> first content delta read, at the client.
- **gap**: time between two consecutive content deltas at the client (0 when two arrive in
  one read). The mock sends them ``tpot_ms`` apart on a fixed schedule.
- **added X**: X of the arm minus X of its direct baseline at the same level, percentile by
  percentile (same mock, same client, same rounds).
- **fidelity**: a complete stream has exactly the mock's number of content deltas and their
  concatenated text is byte-identical to the mock's.
- **capacity**: the highest level up to which every level had no failed or unfaithful stream
  and a gap p99 within ``tpot_ms + gap_budget_ms``.
- **CPU per 1,000 events**: CPU time of the SUT's process tree over the batches, per 1,000
  content deltas delivered (ramp and filler streams included, as they ran in the window).
- **RSS per idle stream**: growth of the SUT's resident memory from K/2 to K open idle
  streams, divided by K/2.
- **cancel propagation**: client closes its socket -> the mock sees its own socket close.

Percentiles are nearest-rank (:func:`service.measure.percentile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from service.bench.arms import ARMS
from service.measure import percentile

if TYPE_CHECKING:
    from service.bench.sweep import SweepOptions

__all__ = ["KEY_LEVEL", "Target", "summarise"]

KEY_LEVEL: Final = 64
"""The level the latency targets are stated at (the nearest level run when 64 was not)."""

_RELAY: Final = "relay"
_PEERS: Final = ("litellm", "portkey")


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's targets."""

    name: str
    goal: str
    arm: str
    figure: str
    """Key in the arm's figures (``level`` figures are read at the key level)."""
    limit: float
    higher_is_better: bool = False


_TARGETS: Final = (
    Target("Added TTFT p50 at c=64", "<= 0.5 ms", _RELAY, "added_ttft_p50_ms", 0.5),
    Target("Added TTFT p99 at c=64", "<= 2 ms", _RELAY, "added_ttft_p99_ms", 2.0),
    Target("Added gap p99 at c=64", "<= 1 ms", _RELAY, "added_gap_p99_ms", 1.0),
    Target("Streams at 20 tokens/s on one core", ">= 1000", _RELAY, "capacity", 1000, True),
    Target("RSS per idle stream", "<= 64 KiB", _RELAY, "idle_kib_per_stream", 64.0),
    Target("Cancel propagation p99, direct", "<= 20 ms", _RELAY, "cancel_p99_ms", 20.0),
    Target(
        "Cancel propagation p99, through nginx", "<= 50 ms", "relay-nginx", "cancel_p99_ms", 50.0
    ),
)

_VERSUS: Final = (
    ("added TTFT p50 (ms)", "added_ttft_p50_ms", False),
    ("added TTFT p99 (ms)", "added_ttft_p99_ms", False),
    ("added gap p99 (ms)", "added_gap_p99_ms", False),
    ("CPU ms / 1,000 events", "cpu_ms_per_1000_events", False),
    ("capacity (streams)", "capacity", True),
    ("RSS KiB / idle stream", "idle_kib_per_stream", False),
    ("cancel p99 (ms)", "cancel_p99_ms", False),
)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _cell(batches: list[dict[str, Any]]) -> dict[str, Any]:
    ttfts = [t for b in batches for t in b["ttfts"]]
    gaps = [g for b in batches for g in b["gaps"]]
    events = sum(b["events"] for b in batches)
    cpus = [b["cpu_seconds"] for b in batches if b.get("cpu_seconds") is not None]
    cpu = sum(cpus) if cpus else None
    return {
        "batches": len(batches),
        "streams_ok": sum(b["ok"] for b in batches),
        "failed": sum(b["failed"] for b in batches),
        "count_mismatch": sum(b["count_mismatch"] for b in batches),
        "bytes_mismatch": sum(b["bytes_mismatch"] for b in batches),
        "timed_out": any(b["timed_out"] for b in batches),
        "errors": _merge(b["errors"] for b in batches),
        "n_ttft": len(ttfts),
        "n_gaps": len(gaps),
        "ttft_p50_ms": _ms(percentile(ttfts, 50)),
        "ttft_p99_ms": _ms(percentile(ttfts, 99)),
        "gap_p50_ms": _ms(percentile(gaps, 50)),
        "gap_p99_ms": _ms(percentile(gaps, 99)),
        "gap_max_ms": _ms(max(gaps, default=None)),
        "events": events,
        "cpu_ms_per_1000_events": round(cpu * 1e6 / events, 2)
        if cpu is not None and events
        else None,
    }


def _merge(dicts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for d in dicts:
        for key, count in d.items():
            merged[key] = merged.get(key, 0) + count
    return merged


def _levels(raw: dict[str, Any], levels: tuple[int, ...]) -> dict[int, dict[str, dict[str, Any]]]:
    batches = raw.get("batches", [])
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for level in levels:
        arms = {b["arm"] for b in batches if b["level"] == level}
        out[level] = {
            a: _cell([b for b in batches if b["level"] == level and b["arm"] == a])
            for a in ARMS
            if a in arms
        }
        for name, cell in out[level].items():
            base = out[level].get(ARMS[name].baseline or "")
            for key in ("ttft_p50", "ttft_p99", "gap_p50", "gap_p99"):
                cell[f"added_{key}_ms"] = (
                    _diff(cell[f"{key}_ms"], base[f"{key}_ms"]) if base else None
                )
    return out


def _sound(cell: dict[str, Any], options: SweepOptions) -> bool:
    gap = cell["gap_p99_ms"]
    return (
        cell["failed"] == 0
        and cell["count_mismatch"] == 0
        and cell["bytes_mismatch"] == 0
        and cell["streams_ok"] > 0
        and gap is not None
        and gap <= options.tpot_ms + options.gap_budget_ms
    )


def _capacity(
    name: str, levels: dict[int, dict[str, dict[str, Any]]], options: SweepOptions
) -> int | None:
    best = None
    for level in sorted(levels):
        cell = levels[level].get(name)
        if cell is None or not _sound(cell, options):
            break
        best = level
    return best


def _cancel(entry: dict[str, Any] | None) -> dict[str, Any]:
    if not entry:
        return {"trials": 0}
    trials = entry["trials"]
    latencies = [(t["closed_at"] - t["stop"]) * 1000 for t in trials if t.get("closed_at")]
    return {
        "trials": len(trials) + sum(entry["errors"].values()),
        "propagated": len(latencies),
        "not_propagated": len(trials) - len(latencies),
        "errors": entry["errors"],
        "p50_ms": _round(percentile(latencies, 50)),
        "p99_ms": _round(percentile(latencies, 99)),
        "max_ms": _round(max(latencies, default=None)),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _idle(entry: dict[str, Any] | None) -> dict[str, Any]:
    if not entry:
        return {}
    rss, step = entry["rss_kib"], entry["per_step"]
    return {
        "rss_kib": rss,
        "opened": entry["opened"],
        "kib_per_stream": round((rss[2] - rss[1]) / step, 1) if len(rss) == 3 else None,
        "kib_per_stream_from_zero": round((rss[2] - rss[0]) / max(1, entry["opened"]), 1),
        "upstream_closed": entry.get("upstream_closed"),
        "upstream_seen": entry.get("upstream_seen"),
    }


def key_level(levels: tuple[int, ...]) -> int:
    """64, or the run level nearest to it."""
    return min(levels, key=lambda level: (abs(level - KEY_LEVEL), level))


def _arm_figures(
    name: str,
    raw: dict[str, Any],
    levels: dict[int, dict[str, dict[str, Any]]],
    options: SweepOptions,
) -> dict[str, Any]:
    key = levels.get(key_level(options.levels), {}).get(name, {})
    cancel = _cancel(raw.get("cancel", {}).get(name))
    idle = _idle(raw.get("idle", {}).get(name))
    cells = [lv[name] for lv in levels.values() if name in lv]
    broken = any(c["failed"] or c["count_mismatch"] or c["bytes_mismatch"] for c in cells)
    return {
        "description": ARMS[name].description,
        "baseline": ARMS[name].baseline,
        "capacity": _capacity(name, levels, options),
        "capacity_is_top": _capacity(name, levels, options) == max(options.levels),
        "idle": idle,
        "idle_kib_per_stream": idle.get("kib_per_stream"),
        "cancel": cancel,
        "cancel_p99_ms": cancel.get("p99_ms"),
        "broken": broken or cancel.get("not_propagated", 0) > 0,
        **{
            k: key.get(k)
            for k in (
                "added_ttft_p50_ms",
                "added_ttft_p99_ms",
                "added_gap_p50_ms",
                "added_gap_p99_ms",
                "cpu_ms_per_1000_events",
            )
        },
    }


def _targets(arms: dict[str, dict[str, Any]], level: int) -> list[dict[str, Any]]:
    rows = []
    for target in _TARGETS:
        value = arms.get(target.arm, {}).get(target.figure)
        met = (
            None
            if value is None
            else (value >= target.limit if target.higher_is_better else value <= target.limit)
        )
        name = target.name.replace("c=64", f"c={level}")
        rows.append(
            {"target": name, "goal": target.goal, "arm": target.arm, "measured": value, "met": met}
        )
    rows.append(_ahead_of_peers(arms))
    return rows


def _ahead_of_peers(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    peers = [p for p in _PEERS if p in arms]
    row: dict[str, Any] = {
        "target": "Ahead of both peers on every figure",
        "goal": "all",
        "arm": _RELAY,
        "measured": None,
        "met": None,
    }
    if _RELAY not in arms or len(peers) < len(_PEERS):
        row["measured"] = "peers not measured in this run" if _RELAY in arms else None
        return row
    losses = []
    for label, key, higher in _VERSUS:
        ours = arms[_RELAY].get(key)
        for peer in peers:
            theirs = arms[peer].get(key)
            if ours is None:
                losses.append(f"{label}: relay not measured")
            elif theirs is not None and (ours < theirs if higher else ours > theirs):
                losses.append(f"{label} vs {peer}")
    row["measured"] = "ahead on all" if not losses else "behind on: " + "; ".join(losses)
    row["met"] = not losses
    return row


def _versus(arms: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    shown = [a for a in (_RELAY, "relay-nginx", *_PEERS) if a in arms]
    return [{"figure": label, **{a: arms[a].get(key) for a in shown}} for label, key, _ in _VERSUS]


def summarise(raw: dict[str, Any], options: SweepOptions) -> dict[str, Any]:
    """Every figure of the results page, from ``raw`` (see :mod:`service.bench.sweep`)."""
    levels = _levels(raw, options.levels)
    names = [a for a in ARMS if any(a in lv for lv in levels.values())]
    arms = {name: _arm_figures(name, raw, levels, options) for name in names}
    level = key_level(options.levels)
    return {
        "meta": raw.get("meta", {}),
        "key_level": level,
        "tpot_ms": options.tpot_ms,
        "gap_budget_ms": options.gap_budget_ms,
        "smoke": options.smoke,
        "levels": {str(k): v for k, v in levels.items()},
        "arms": arms,
        "targets": _targets(arms, level),
        "versus": _versus(arms),
        "unavailable": raw.get("unavailable", {}),
        "dropped": raw.get("dropped", {}),
    }
