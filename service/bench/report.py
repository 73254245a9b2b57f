"""The sweep's results section (Markdown) and plot (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

__all__ = ["render_markdown", "render_plot"]

_NA: Final = "n/a"


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return _NA
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{value}{unit}"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def _header(summary: dict[str, Any], plot_name: str) -> list[str]:
    m = summary["meta"]
    pk = m.get("packages", {})
    packages = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    peers = (
        f"LiteLLM {m.get('litellm') or 'not installed'}, Portkey gateway "
        f"{m.get('portkey') or 'not installed'}"
        + (
            f" (with @hono/node-server {m['portkey_hono_node_server']})"
            if m.get("portkey_hono_node_server")
            else ""
        )
    )
    o = m.get("options", {})
    lines = [
        f"- Command: `{m.get('command')}` (runtime {m.get('runtime_s', _NA)} s)",
        f"- Date: {m.get('date')}; relay commit {m.get('relay_commit')}",
        f"- Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), Linux {m.get('kernel')}; "
        f"load average (1/5/15 min) {m.get('loadavg_start')} at start, "
        f"{m.get('loadavg_end')} at end",
        f"- Pinning: system under test on CPU {m.get('sut_cpus')}, fast mock + load generator on"
        f" CPU {m.get('harness_cpus')}",
        f"- Versions: Python {m.get('python')}, nginx {m.get('nginx') or 'not installed'}, node"
        f" {m.get('node') or 'not installed'}, {peers}; {packages}",
        f"- Streams: {o.get('tokens')} content deltas each, {o.get('tpot_ms')} ms apart"
        f" ({1000 / float(o.get('tpot_ms') or 1):g} tokens/s), mock TTFT {o.get('ttft_ms')} ms;"
        f" {o.get('rounds')} rounds per level, arms interleaved (order rotating per round),"
        " one unmeasured ramp stream per connection, warm-up batch per arm discarded",
        f"- Plot: `{plot_name}`",
    ]
    if summary.get("smoke"):
        lines.insert(
            0, "- **Smoke run**: a tiny sweep that checks the harness; its figures mean nothing."
        )
    return lines


def _targets(summary: dict[str, Any]) -> list[str]:
    lines = ["| target | goal | arm | measured | verdict |", "| --- | --- | --- | --- | --- |"]
    for row in summary["targets"]:
        lines.append(
            f"| {row['target']} | {row['goal']} | {row['arm']} | {_fmt(row['measured'])}"
            f" | {_verdict(row['met'])} |"
        )
    return lines


def _key_table(summary: dict[str, Any]) -> list[str]:
    level = summary["key_level"]
    cells = summary["levels"].get(str(level), {})
    lines = [
        f"Per arm at c={level} (added = arm minus its direct baseline at the same level):",
        "",
        "| arm | streams ok/failed | TTFT p50 / p99 | added TTFT p50 / p99 | gap p50 / p99 |"
        " added gap p50 / p99 | fidelity (count, bytes) | SUT CPU ms / 1k events |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in cells.items():
        fidelity = (
            "ok"
            if not (c["count_mismatch"] or c["bytes_mismatch"])
            else f"{c['count_mismatch']} count, {c['bytes_mismatch']} bytes off"
        )
        lines.append(
            f"| {name} | {c['streams_ok']}/{c['failed']} | {_fmt(c['ttft_p50_ms'])} /"
            f" {_fmt(c['ttft_p99_ms'])} ms | {_fmt(c['added_ttft_p50_ms'])} /"
            f" {_fmt(c['added_ttft_p99_ms'])} ms | {_fmt(c['gap_p50_ms'])} /"
            f" {_fmt(c['gap_p99_ms'])} ms | {_fmt(c['added_gap_p50_ms'])} /"
            f" {_fmt(c['added_gap_p99_ms'])} ms | {fidelity} |"
            f" {_fmt(c['cpu_ms_per_1000_events'])} |"
        )
    return lines


def _level_table(summary: dict[str, Any]) -> list[str]:
    levels = list(summary["levels"])
    lines = [
        "Every level: added TTFT p99 / gap p99 (ms) / SUT CPU ms per 1k events; `x` = failed"
        " or unfaithful streams at that level:",
        "",
        "| arm | " + " | ".join(f"c={lv}" for lv in levels) + " |",
        "| --- | " + " | ".join("---" for _ in levels) + " |",
    ]
    for name in summary["arms"]:
        row = []
        for level in levels:
            c = summary["levels"][level].get(name)
            if c is None:
                row.append("-")
                continue
            bad = " x" if c["failed"] or c["count_mismatch"] or c["bytes_mismatch"] else ""
            added = (c["added_ttft_p99_ms"], c["added_gap_p99_ms"])
            head = (
                f"{_fmt(added[0])} / {_fmt(added[1])}"
                if added != (None, None)
                else f"TTFT {_fmt(c['ttft_p99_ms'])} / gap {_fmt(c['gap_p99_ms'])}"
            )
            row.append(f"{head} / {_fmt(c['cpu_ms_per_1000_events'])}{bad}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def _arm_table(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| arm | capacity (streams at 20 tok/s) | RSS KiB / idle stream | idle upstreams closed"
        " after the clients left | cancel p50 / p99 / max | cancels propagated |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in summary["arms"].items():
        capacity = a["capacity"]
        cap = _NA if capacity is None else f"{'>= ' if a['capacity_is_top'] else ''}{capacity}"
        c, idle = a["cancel"], a["idle"]
        closed = (
            f"{idle['upstream_closed']}/{idle['upstream_seen']}"
            if idle.get("upstream_seen") is not None
            else _NA
        )
        lines.append(
            f"| {name} | {cap} | {_fmt(a['idle_kib_per_stream'])} | {closed} |"
            f" {_fmt(c.get('p50_ms'))} / {_fmt(c.get('p99_ms'))} / {_fmt(c.get('max_ms'))} ms |"
            f" {c.get('propagated', 0)}/{c.get('trials', 0)} |"
        )
    return lines


def _versus(summary: dict[str, Any]) -> list[str]:
    rows = summary["versus"]
    if not rows or len(rows[0]) <= 2:
        return []
    arms = [k for k in rows[0] if k != "figure"]
    lines = [
        "| figure | " + " | ".join(arms) + " |",
        "| --- | " + " | ".join("---" for _ in arms) + " |",
    ]
    for row in rows:
        lines.append(f"| {row['figure']} | " + " | ".join(_fmt(row[a]) for a in arms) + " |")
    return lines


def render_markdown(summary: dict[str, Any], plot_name: str = "sweep.png") -> str:
    """The results section: run facts, targets, per-arm tables, what did not run."""
    lines = [
        "### Run",
        "",
        *_header(summary, plot_name),
        "",
        "### Targets",
        "",
        *_targets(summary),
        "",
        "### Latency, fidelity, CPU",
        "",
        *_key_table(summary),
        "",
        *_level_table(summary),
        "",
        "### Capacity, memory, cancel propagation",
        "",
        f"Capacity: highest level with no failed or unfaithful stream and gap p99 <="
        f" {summary['tpot_ms']:g} + {summary['gap_budget_ms']:g} ms at it and every level"
        " below.",
        "",
        *_arm_table(summary),
        "",
    ]
    versus = _versus(summary)
    if versus:
        lines += ["### The relay against the peers (at the key level)", "", *versus, ""]
    skipped = {**summary["unavailable"], **summary["dropped"]}
    if skipped:
        lines += ["### Not run, or stopped early", ""]
        lines += [f"- {name}: {reason}" for name, reason in skipped.items()]
        lines.append("")
    return "\n".join(lines)


def render_plot(summary: dict[str, Any], path: Path) -> None:
    """Four panels: TTFT p99, gap p99 and SUT CPU per level; cancel p99 per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [int(lv) for lv in summary["levels"]]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    panels = (
        (axes[0][0], "ttft_p99_ms", "TTFT p99 (ms)"),
        (axes[0][1], "gap_p99_ms", "inter-chunk gap p99 (ms)"),
        (axes[1][0], "cpu_ms_per_1000_events", "SUT CPU ms per 1,000 events"),
    )
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(summary["arms"])}
    for axis, key, title in panels:
        for name in summary["arms"]:
            points = [(lv, summary["levels"][str(lv)].get(name, {}).get(key)) for lv in levels]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                style = "--" if summary["arms"][name]["baseline"] is None else "-"
                axis.plot(
                    *zip(*points, strict=True), style, marker="o", label=name, color=colors[name]
                )
        axis.set_xscale("log")
        axis.minorticks_off()
        axis.set_xticks(levels, [str(lv) for lv in levels])
        axis.set_xlabel("concurrent streams")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    # Saturated arms reach seconds; a log scale keeps the sub-millisecond differences visible.
    axes[0][0].set_yscale("log")
    axes[0][1].set_yscale("log")
    axes[0][1].axhline(summary["tpot_ms"], color="grey", linewidth=0.8)
    axes[0][0].legend(fontsize=8)
    _cancel_panel(axes[1][1], summary, colors)
    smoke = " (smoke run: figures mean nothing)" if summary.get("smoke") else ""
    fig.suptitle(
        f"relay bench sweep{smoke}: {summary['meta'].get('date', '')}, load average "
        f"{summary['meta'].get('loadavg_start')}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cancel_panel(axis: Any, summary: dict[str, Any], colors: dict[str, Any]) -> None:
    names = [n for n, a in summary["arms"].items() if a["cancel"].get("trials")]
    p50 = [summary["arms"][n]["cancel"].get("p50_ms") or 0.0 for n in names]
    p99 = [summary["arms"][n]["cancel"].get("p99_ms") or 0.0 for n in names]
    positions = range(len(names))
    shades = [colors[n] for n in names]
    axis.bar([p - 0.2 for p in positions], p50, width=0.4, color=shades, alpha=0.45, label="p50")
    axis.bar([p + 0.2 for p in positions], p99, width=0.4, color=shades, label="p99")
    for position, name in zip(positions, names, strict=True):
        cancel = summary["arms"][name]["cancel"]
        if cancel.get("not_propagated"):
            axis.annotate(
                f"{cancel['not_propagated']}/{cancel['trials']} never closed",
                (position, max([*p99, 0.0]) * 0.05),
                rotation=90,
                ha="center",
                fontsize=8,
                color="crimson",
            )
    axis.set_xticks(list(positions), names, rotation=30, ha="right", fontsize=8)
    axis.set_title("cancel propagation: client Stop -> provider socket closed (ms)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
