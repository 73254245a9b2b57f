"""``relay capture``: the proxy-buffering failure and its fix, measured through the real nginx.

Starts the mock provider and two relays as real processes on loopback (one with
``RELAY_ACCEL_BUFFERING_HEADER=false``, one with the default ``X-Accel-Buffering: no``), and
one nginx per path with the project's configs:

1. ``buffering``: ``nginx/buffering.conf`` (stock defaults + gzip boilerplate), relay header
   off: the failure, as a browser sees it (``Accept-Encoding: gzip``).
2. ``streaming``: ``nginx/streaming.conf``, relay header off: the config fix alone.
3. ``buffering_with_header``: ``buffering.conf`` unchanged, relay header on: the app-side fix.
4. ``buffering_identity``: path 1 with a client that does not accept gzip (``curl -N``):
   tells compression apart from buffering. It streams: uvicorn answers nginx's HTTP/1.0
   request chunked anyway, and nginx 1.22's buffered mode forwards chunks; only gzip holds
   them. (The capture records the relay's framing for an HTTP/1.0 request to show it.)

The same mock turn (same seed, tokens, TTFT and TPOT) is streamed through each path with
``relay check``'s probe, which pairs each token's relay send offset with its client arrival
offset. Writes ``capture.json`` (everything), ``capture.md`` (figures and a note naming the
settings, generated from what was measured) and ``capture.png`` (arrival vs send per token).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.check import CheckReport, Verdict
from service.probe import CheckOptions, ProbeError, ProbeResult, probe
from service.processes import free_port, spawn_service
from service.proxy.nginx import (
    DEFAULT_CONFIGS_DIR,
    ConfigName,
    NginxError,
    nginx_binary,
    nginx_version,
    run_nginx,
)

__all__ = ["PATHS", "CaptureOptions", "CapturePath", "PathResult", "register", "run_capture"]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_SETUP_FAILED = 4


@dataclass(frozen=True, kw_only=True, slots=True)
class CaptureOptions:
    """What ``relay capture`` streams and where it writes."""

    out_dir: Path = Path("artifacts/capture")
    """Directory for capture.md / .json / .png, service logs and nginx prefixes."""
    tokens: int = 60
    """Tokens of the mock turn."""
    tpot_ms: float = 40.0
    """Mock time per output token."""
    ttft_ms: float = 300.0
    """Mock time to first token."""
    seed: int = 7
    """Mock seed: every path gets the same words and the same jittered timing."""
    configs_dir: Path = DEFAULT_CONFIGS_DIR
    """Where nginx.conf, local.conf, streaming.conf and buffering.conf are read from."""


@dataclass(frozen=True, slots=True)
class CapturePath:
    """One way from the relay to the client."""

    key: str
    """Short name, used in capture.json."""
    label: str
    """What a reader sees in the table and the legend."""
    config: ConfigName
    """The nginx server body in front of the relay."""
    relay_header: bool
    """Whether the relay sends ``X-Accel-Buffering: no``."""
    accept_encoding: str | None = None
    """Client ``Accept-Encoding``; ``None`` accepts gzip like a browser."""
    expected: Verdict = Verdict.STREAMING
    """The verdict this path must give for the capture to tell its story."""


PATHS: tuple[CapturePath, ...] = (
    CapturePath(
        "buffering",
        "buffering.conf, relay header off (gzip client)",
        "buffering",
        False,
        None,
        Verdict.BUFFERED,
    ),
    CapturePath("streaming", "streaming.conf, relay header off", "streaming", False),
    CapturePath(
        "buffering_with_header", "buffering.conf + X-Accel-Buffering: no", "buffering", True
    ),
    CapturePath(
        "buffering_identity",
        "buffering.conf, header off, client without gzip (curl -N)",
        "buffering",
        False,
        "identity",
    ),
)
"""The paths, in the order they are streamed and reported."""


@dataclass(slots=True)
class PathResult:
    """What one path measured."""

    path: CapturePath
    probe: ProbeResult
    access_log: dict[str, str] = field(default_factory=dict)
    """nginx's access-log fields for the request (``rt``, ``uht``, ``gzip``, ...)."""

    @property
    def ok(self) -> bool:
        """The verdict is the one this path is there to show."""
        return self.probe.analyze().verdict is self.path.expected


def run_capture(options: CaptureOptions) -> int:
    """Run the capture; 0 when every path gave its expected verdict, 1 when one did not
    (the artifacts say which), 2 for unusable options, 4 when the stack could not start."""
    if options.tokens < 5 or options.tpot_ms <= 0 or options.ttft_ms < 0:
        print("relay capture: need --tokens >= 5, --tpot-ms > 0, --ttft-ms >= 0", file=sys.stderr)
        return EXIT_USAGE
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    try:
        nginx_binary()
        with _stack(options) as urls:
            results = [_measure(path, urls[path.key], options) for path in PATHS]
            for result, log in zip(results, _access_logs(urls), strict=True):
                result.access_log = log
            framing = urls.http10_framing
    except (NginxError, RuntimeError, ProbeError) as exc:
        print(f"relay capture: could not run the capture: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    meta = _meta(options, framing)
    (out / "capture.json").write_text(json.dumps(_as_json(results, meta), indent=2) + "\n")
    markdown = _markdown(results, meta)
    (out / "capture.md").write_text(markdown)
    png = _plot(results, options, out / "capture.png")
    print(markdown)
    print(f"written: {out / 'capture.md'}, {out / 'capture.json'}" + (f", {png}" if png else ""))
    failed = [r.path.key for r in results if not r.ok]
    if failed:
        print(f"relay capture: unexpected verdict on {', '.join(failed)}", file=sys.stderr)
        return EXIT_UNEXPECTED
    return EXIT_OK


# --- the stack ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Urls:
    by_path: dict[str, str]
    access_logs: dict[str, Path]
    http10_framing: str
    """How the relay frames a stream for an HTTP/1.0 request (nginx's default upstream)."""

    def __getitem__(self, key: str) -> str:
        return self.by_path[key]


@contextmanager
def _stack(options: CaptureOptions) -> Iterator[_Urls]:
    out = options.out_dir
    with ExitStack() as stack:
        mock_port = free_port()
        mock_url = f"http://127.0.0.1:{mock_port}"
        env = {"RELAY_LOG_FORMAT": "json"}
        stack.enter_context(
            spawn_service(
                ["mock", "--port", str(mock_port)], env, f"{mock_url}/healthz", out / "mock.log"
            )
        )
        relays = {header: _relay(stack, mock_url, header, out) for header in (False, True)}
        urls: dict[str, str] = {}
        logs: dict[str, Path] = {}
        for path in PATHS:
            nginx = stack.enter_context(
                run_nginx(
                    path.config,
                    relays[path.relay_header],
                    prefix_root=out / "nginx" / path.key,
                    configs_dir=options.configs_dir,
                )
            )
            urls[path.key], logs[path.key] = nginx.url, nginx.access_log
        yield _Urls(urls, logs, _http10_framing(relays[False]))


def _relay(stack: ExitStack, mock_url: str, header: bool, out: Path) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "RELAY_LOG_FORMAT": "json",
        "RELAY_UPSTREAM_URL": mock_url,
        "RELAY_ACCEL_BUFFERING_HEADER": "true" if header else "false",
    }
    name = "relay-header-on.log" if header else "relay-header-off.log"
    stack.enter_context(
        spawn_service(["serve", "--port", str(port)], env, f"{url}/healthz", out / name)
    )
    return port


def _http10_framing(relay_port: int) -> str:
    """Ask the relay for a one-token stream over HTTP/1.0, as nginx's default proxy does,
    and report the body framing of its answer: ``chunked`` or ``close-delimited``."""
    body = json.dumps(
        {
            "model": "mock-text",
            "max_tokens": 1,
            "stream": True,
            "messages": [{"role": "user", "content": "framing"}],
            "mock": {"ttft_ms": 0, "tpot_ms": 0},
        }
    ).encode()
    head = (
        "POST /v1/messages HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", relay_port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        # Read to the end (an HTTP/1.0 connection closes after the answer): the one-token
        # turn completes instead of being aborted half-way.
        while chunk := sock.recv(65536):
            data += chunk
    headers = data.split(b"\r\n\r\n", 1)[0].lower()
    return "chunked" if b"transfer-encoding: chunked" in headers else "close-delimited"


def _measure(path: CapturePath, url: str, options: CaptureOptions) -> PathResult:
    mock = {
        "tokens": options.tokens,
        "tpot_ms": options.tpot_ms,
        "ttft_ms": options.ttft_ms,
        "seed": options.seed,
    }
    check = CheckOptions(
        url=url,
        model="mock-text",
        max_tokens=options.tokens,
        timeout=60.0,
        mock_options=mock,
        accept_encoding=path.accept_encoding,
    )
    return PathResult(path=path, probe=probe(check))


_ACCESS_FIELD = re.compile(r"(\w+)=(\S+)")


def _access_logs(urls: _Urls) -> list[dict[str, str]]:
    out = []
    for path in PATHS:
        log = urls.access_logs[path.key]
        lines = (
            [x for x in log.read_text().splitlines() if '"POST /v1/messages' in x]
            if log.exists()
            else []
        )
        fields = dict(_ACCESS_FIELD.findall(lines[-1])) if lines else {}
        out.append(fields)
    return out


# --- reports --------------------------------------------------------------------------


def _meta(options: CaptureOptions, framing: str) -> dict[str, Any]:
    return {
        "relay_http10_framing": framing,
        "command": _command(options),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nginx": nginx_version(),
        "python": sys.version.split()[0],
        "nproc": os.cpu_count(),
        "mock_turn": {
            "tokens": options.tokens,
            "ttft_ms": options.ttft_ms,
            "tpot_ms": options.tpot_ms,
            "seed": options.seed,
        },
    }


def _command(options: CaptureOptions) -> str:
    """The command line that repeats this capture."""
    parts = ["relay capture", f"--out {options.out_dir}"]
    defaults = CaptureOptions()
    for name in ("tokens", "tpot_ms", "ttft_ms", "seed"):
        value = getattr(options, name)
        if value != getattr(defaults, name):
            parts.append(f"--{name.replace('_', '-')} {value:g}")
    if options.configs_dir != defaults.configs_dir:
        parts.append(f"--nginx-dir {options.configs_dir}")
    return " ".join(parts)


def _as_json(results: list[PathResult], meta: dict[str, Any]) -> dict[str, Any]:
    paths = {}
    for r in results:
        report = r.probe.analyze()
        paths[r.path.key] = {
            "label": r.path.label,
            "nginx_config": f"{r.path.config}.conf",
            "relay_x_accel_buffering": r.path.relay_header,
            "client_accept_encoding": r.path.accept_encoding or "httpx default (gzip)",
            "expected_verdict": r.path.expected.value,
            "report": dataclasses.asdict(report),
            "probe": r.probe.as_dict(),
            "nginx_access_log": r.access_log,
        }
    return {"meta": meta, "paths": paths}


def _figures(r: PathResult) -> dict[str, str]:
    rep = r.probe.analyze()
    return {
        "ttft": _s(rep.ttft),
        "total": _s(rep.total),
        "spread": f"{_s(rep.arrival_spread)} of {_s(rep.send_spread)}",
        "burst": f"{rep.largest_burst} of {rep.events}",
        "lag": _s(rep.first_event_lag),
        "encoding": _encoding(r.probe),
        "verdict": rep.verdict.value,
    }


def _markdown(results: list[PathResult], meta: dict[str, Any]) -> str:
    framing = meta["relay_http10_framing"]
    turn = meta["mock_turn"]
    lines = [
        "# Before/after capture: the relay behind nginx",
        "",
        f"`{meta['command']}` on {meta['date']}, nginx {meta['nginx']}, Python {meta['python']},"
        f" {meta['nproc']} CPUs. The same mock turn through every path: {turn['tokens']} tokens,"
        f" TTFT {turn['ttft_ms']:g} ms, TPOT {turn['tpot_ms']:g} ms, seed {turn['seed']}.",
        "",
        "| path | TTFT (client) | total | arrival spread of send spread | largest burst"
        " | first token held back | Content-Encoding | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        f = _figures(r)
        lines.append(
            f"| {r.path.label} | {f['ttft']} | {f['total']} | {f['spread']} | {f['burst']}"
            f" | {f['lag']} | {f['encoding']} | **{f['verdict']}** |"
        )
    lines += ["", _note(results, framing), "", "![arrival vs send per token](capture.png)", ""]
    return "\n".join(lines)


def _note(results: list[PathResult], framing: str) -> str:
    by = {r.path.key: r.probe for r in results}
    bad, fixed, header, plain = (
        by["buffering"],
        by["streaming"],
        by["buffering_with_header"],
        by["buffering_identity"],
    )
    b, s, h, p = (x.analyze() for x in (bad, fixed, header, plain))
    log = next(r.access_log for r in results if r.path.key == "buffering")
    parts = [
        "**What caused it and what cured it (as measured above).** Through"
        " `nginx/buffering.conf` with the relay's header switched off"
        " (`RELAY_ACCEL_BUFFERING_HEADER=false`) a gzip-accepting client (every browser) got"
        f" the first token after {_s(b.ttft)} of a {_s(b.total)} turn, {b.largest_burst} of"
        f" {b.events} tokens within {b.window * 1000:.0f} ms ({b.verdict.value}); nginx"
        f" answered `Content-Encoding: {_encoding(bad)}` (access log: gzip ratio"
        f" {log.get('gzip', '?')}, upstream header time {log.get('uht', '?')} s, request time"
        f" {log.get('rt', '?')} s).",
        _cause(p, plain, framing),
        "`nginx/streaming.conf` (`proxy_buffering off`, `gzip off`, `proxy_http_version 1.1`"
        " with an empty `Connection` header) cured it with the relay's header still off:"
        f" first token after {_s(s.ttft)}, arrival spread {_pct(s.spread_ratio)} of the send"
        f" spread ({s.verdict.value}). Keeping `buffering.conf` unchanged and letting the"
        " relay send `X-Accel-Buffering: no` (its default) cured it too: first token after"
        f" {_s(h.ttft)} ({h.verdict.value}), the body still `{_encoding(header)}`-encoded,"
        " flushed per chunk.",
    ]
    return " ".join(parts)


def _cause(plain: CheckReport, probe: ProbeResult, framing: str) -> str:
    if plain.verdict is Verdict.STREAMING:
        return (
            "The cause is the stock `proxy_buffering on` combined with the copy-pasted"
            " `gzip on; gzip_proxied any;` that lists `text/event-stream` in `gzip_types`:"
            " the same path for a client without gzip (like `curl -N`) streamed (first token"
            f" after {_s(plain.ttft)}, `Content-Encoding: {_encoding(probe)}`), because the"
            f" relay answers nginx's default `proxy_http_version 1.0` request {framing}"
            " and nginx's buffered mode forwards chunks as they come; the compressor holds"
            " them. This is why a stream can look healthy in curl and arrive in one piece in"
            " every browser."
        )
    return (
        "The cause is nginx's defaults: `proxy_buffering on` with `proxy_http_version 1.0`"
        f" (the relay's answer to it was {framing}); the same path for a client without gzip"
        f" (like `curl -N`) was {plain.verdict.value} as well (first token after"
        f" {_s(plain.ttft)}), so compression is not needed for the failure."
    )


def _encoding(probe: ProbeResult) -> str:
    return probe.headers.get("content-encoding", "identity")


def _plot(results: list[PathResult], options: CaptureOptions, dest: Path) -> Path | None:
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: pip install 'llm-stream-relay[capture]' for capture.png")
        return None
    styles = {
        "buffering": {"color": "#c0392b", "marker": "o", "ms": 7},
        "buffering_identity": {"color": "#e67e22", "marker": "x", "ms": 6},
        "streaming": {"color": "#1e8449", "marker": "s", "ms": 6},
        "buffering_with_header": {"color": "#2471a3", "marker": "^", "ms": 5},
    }
    fig, ax = plt.subplots(figsize=(9, 6.5), dpi=120)
    top = max(max(r.probe.arrival_offsets) for r in results)
    ax.plot([0, top], [0, top], linestyle="--", color="0.5", linewidth=1, label="y = x (no delay)")
    for r in results:
        style = styles[r.path.key]
        verdict = r.probe.analyze().verdict.value
        ax.plot(
            r.probe.send_offsets,
            r.probe.arrival_offsets,
            linestyle="-",
            linewidth=0.8,
            marker=style["marker"],
            markersize=style["ms"],
            color=style["color"],
            markerfacecolor="none" if style["marker"] in ("o", "s") else style["color"],
            label=f"{r.path.label}: {verdict}",
        )
    ax.set_xlim(0, top * 1.03)
    ax.set_ylim(0, top * 1.12)
    _annotate(ax, results, top)
    ax.set_xlabel("relay sent the token (s since the relay received the request)")
    ax.set_ylabel("client received the token (s since the request was sent)")
    ax.set_title(
        f"When each of {options.tokens} tokens reached the client, through nginx\n"
        f"(mock turn: TTFT {options.ttft_ms:g} ms, TPOT {options.tpot_ms:g} ms,"
        f" seed {options.seed})"
    )
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.95)
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest


def _annotate(ax: Any, results: list[PathResult], top: float) -> None:
    by = {r.path.key: r.probe for r in results}
    bad = by["buffering"]
    first_send, last_arrival = bad.send_offsets[0], bad.arrival_offsets[-1]
    ax.annotate(
        f"buffered: nothing for {bad.arrival_offsets[0]:.2f} s, then all"
        f" {len(bad.arrival_offsets)} tokens at once",
        xy=(first_send, bad.arrival_offsets[0]),
        xytext=(first_send, last_arrival + 0.07 * top),
        fontsize=9,
        color="#c0392b",
        arrowprops={"arrowstyle": "->", "color": "#c0392b"},
    )
    good = by["streaming"]
    mid = len(good.send_offsets) // 3
    ax.annotate(
        "streaming: each token arrives as it is sent (on the diagonal)",
        xy=(good.send_offsets[mid], good.arrival_offsets[mid]),
        xytext=(good.send_offsets[mid] + 0.05 * top, good.arrival_offsets[mid] - 0.12 * top),
        fontsize=9,
        color="#1e8449",
        arrowprops={"arrowstyle": "->", "color": "#1e8449"},
    )


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


# --- command line ---------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``relay capture``."""
    d = CaptureOptions()
    parser = subparsers.add_parser(
        "capture",
        help="the proxy-buffering failure and its fixes, measured through the real nginx"
        " (writes capture.md, capture.png, capture.json)",
    )
    parser.add_argument("--out", default=str(d.out_dir), help="output directory")
    parser.add_argument("--tokens", type=int, default=d.tokens, help="tokens of the mock turn")
    parser.add_argument("--tpot-ms", type=float, default=d.tpot_ms, help="mock ms per token")
    parser.add_argument("--ttft-ms", type=float, default=d.ttft_ms, help="mock ms to 1st token")
    parser.add_argument("--seed", type=int, default=d.seed, help="mock seed")
    parser.add_argument(
        "--nginx-dir",
        default=str(d.configs_dir),
        help="directory with nginx.conf, local.conf, streaming.conf, buffering.conf",
    )
    parser.set_defaults(func=_from_args)


def _from_args(args: argparse.Namespace) -> int:
    options = CaptureOptions(
        out_dir=Path(args.out),
        tokens=args.tokens,
        tpot_ms=args.tpot_ms,
        ttft_ms=args.ttft_ms,
        seed=args.seed,
        configs_dir=Path(args.nginx_dir),
    )
    return run_capture(options)
