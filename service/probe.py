"""``relay check URL``: send one probe turn and judge whether the path to the client streams.

The probe POSTs a streaming Messages request to ``{URL}/v1/messages`` with
``X-Relay-Timing: events``, so the relay's final ``relay_metrics`` event lists when it sent
each content event (``send_offsets_ms``). The client notes when each content event arrived
(``perf_counter`` seconds since just before the request was sent; gzip is accepted like a
browser does, because compression is one of the ways proxies hold streams back). The two
timelines go to :func:`service.check.analyze`.

Exit status:

- ``0`` streaming; ``1`` buffered or partially buffered (see :data:`service.check.EXIT_CODES`);
- ``2`` usage error: argparse's, or a URL that cannot be requested (no ``http://``);
- ``3`` inconclusive: too short a probe, or the endpoint is not the relay (no
  ``relay_metrics`` with send offsets), so there is nothing to compare with;
- ``4`` the probe itself failed: connection refused, timeout, a non-200 answer, a stream
  cut mid-way (a proxy timeout?) or a stream that ended in an ``error`` event.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx
import msgspec

from service.check import CheckReport, Thresholds, Verdict, analyze, exit_code, render_text
from service.sse import ServerSentEvent, SSEDecodeError, SSEDecoder

__all__ = [
    "DEFAULT_MOCK_TIMING",
    "EXIT_NOT_RELAY",
    "EXIT_PROBE_FAILED",
    "EXIT_USAGE",
    "CheckOptions",
    "ProbeError",
    "ProbeResult",
    "probe",
    "probe_body",
    "register",
    "run_check",
]

EXIT_NOT_RELAY = 3
"""Exit status when the endpoint is not the relay: inconclusive, nothing to compare with."""
EXIT_PROBE_FAILED = 4
"""Exit status when the probe request failed (2 is argparse's usage error)."""
EXIT_USAGE = 2
"""Exit status for a URL that cannot be requested at all (a usage error, like argparse's)."""

DEFAULT_MOCK_TIMING: Mapping[str, Any] = {"tpot_ms": 50, "ttft_ms": 300}
"""Body ``mock`` options for ``mock-*`` models: 40 tokens 50 ms apart spread over 2 s."""

_PROMPT = "Probe: please answer with a few sentences."
_ERROR_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckOptions:
    """What ``relay check`` sends and how it reports."""

    url: str
    """Base URL of the relay or of the proxy in front of it; ``/v1/messages`` is appended."""
    model: str = "mock-text"
    """Model of the probe turn. ``mock-*`` models get :data:`DEFAULT_MOCK_TIMING`."""
    max_tokens: int = 40
    """``max_tokens`` of the probe turn: more tokens, a longer and surer probe."""
    api_key: str | None = None
    """Relay client key, sent as ``x-api-key``."""
    as_json: bool = False
    """Print one JSON object instead of the text report."""
    timeout: float = 30.0
    """Seconds for connecting and for any silence while reading."""
    accept_encoding: str | None = None
    """``Accept-Encoding`` to send; ``None`` keeps httpx's default (gzip and friends, like a
    browser); ``identity`` behaves like ``curl -N`` without ``--compressed``."""
    mock_options: Mapping[str, Any] | None = None
    """Body ``mock`` object; ``None`` means :data:`DEFAULT_MOCK_TIMING` for ``mock-*`` models."""
    thresholds: Thresholds = field(default_factory=Thresholds)
    """Knobs of the analysis."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe: when each content event was sent and when it arrived (seconds)."""

    url: str
    """The URL the probe was POSTed to."""
    status: int
    """HTTP status of the answer."""
    headers: dict[str, str]
    """Response headers, names lower-cased."""
    send_offsets: tuple[float, ...]
    """Relay: each content event's send time since the stream started."""
    arrival_offsets: tuple[float, ...]
    """Client: each content event's arrival since the request was sent."""
    total: float
    """Client: request sent to end of stream."""
    relay_metrics: dict[str, Any]
    """The relay's final ``relay_metrics`` event."""

    @property
    def stream_id(self) -> str | None:
        """The relay's ``X-Relay-Stream-Id``."""
        return self.headers.get("x-relay-stream-id")

    def analyze(self, thresholds: Thresholds | None = None) -> CheckReport:
        """The :mod:`service.check` verdict on this probe's timelines."""
        return analyze(
            self.send_offsets,
            self.arrival_offsets,
            total=self.total,
            thresholds=thresholds or Thresholds(),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (offsets in seconds)."""
        return {
            "url": self.url,
            "status": self.status,
            "stream_id": self.stream_id,
            "content_encoding": self.headers.get("content-encoding"),
            "x_accel_buffering": self.headers.get("x-accel-buffering"),
            "total_s": self.total,
            "send_offsets_s": list(self.send_offsets),
            "arrival_offsets_s": list(self.arrival_offsets),
            "queue_peak_bytes": self.relay_metrics.get("queue_peak_bytes"),
            "outcome": self.relay_metrics.get("outcome"),
        }


class ProbeError(Exception):
    """The probe could not produce two timelines to compare."""

    def __init__(self, message: str, *, kind: str, exit_status: int = EXIT_PROBE_FAILED) -> None:
        super().__init__(message)
        self.kind = kind
        """``url``, ``connect``, ``timeout``, ``status``, ``cut``, ``stream_error`` or
        ``not_relay``."""
        self.exit_status = exit_status
        """Exit status of ``relay check`` for this failure."""


def probe_body(options: CheckOptions) -> dict[str, Any]:
    """The probe turn's JSON body."""
    body: dict[str, Any] = {
        "model": options.model,
        "max_tokens": options.max_tokens,
        "stream": True,
        "messages": [{"role": "user", "content": _PROMPT}],
    }
    mock = options.mock_options
    if mock is None and options.model.startswith("mock-"):
        mock = DEFAULT_MOCK_TIMING
    if mock is not None:
        body["mock"] = dict(mock)
    return body


def probe(options: CheckOptions) -> ProbeResult:
    """Send the probe turn and time it; raises :class:`ProbeError`."""
    url = options.url.rstrip("/") + "/v1/messages"
    headers = {
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-relay-timing": "events",
        # Named relay events from the start: relay_metrics stays an event even if the
        # stream fails before message_start (the probe is no SDK that would mind).
        "x-relay-events": "all",
    }
    if options.api_key:
        headers["x-api-key"] = options.api_key
    if options.accept_encoding is not None:
        headers["accept-encoding"] = options.accept_encoding
    timeout = httpx.Timeout(options.timeout)
    try:
        with httpx.Client(timeout=timeout) as client:
            return _send(client, url, options, headers)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise ProbeError(
            f"{options.url!r} is not a usable URL ({exc}); give e.g. http://127.0.0.1:8000",
            kind="url",
            exit_status=EXIT_USAGE,
        ) from None
    except httpx.ConnectError as exc:
        raise ProbeError(f"cannot connect to {url}: {exc}", kind="connect") from None
    except httpx.TimeoutException as exc:
        raise ProbeError(
            f"{url}: no answer within {options.timeout:g} s ({type(exc).__name__})",
            kind="timeout",
        ) from None
    except httpx.TransportError as exc:
        raise ProbeError(
            f"{url}: the connection was cut before the stream ended ({exc}); a proxy"
            " read timeout (nginx proxy_read_timeout) or an idle cut is the usual cause",
            kind="cut",
        ) from None


def run_check(options: CheckOptions, *, out: TextIO | None = None) -> int:
    """``relay check``: probe, analyze, print the report (text or JSON); returns the exit
    status (see the module docstring)."""
    out = out if out is not None else sys.stdout
    try:
        result = probe(options)
    except ProbeError as exc:
        _print_failure(options, exc, out)
        return exc.exit_status
    report = result.analyze(options.thresholds)
    code = exit_code(report)
    if options.as_json:
        payload = {
            "url": options.url,
            "verdict": report.verdict.value,
            "exit_code": code,
            "error": None,
            "report": dataclasses.asdict(report),
            "probe": result.as_dict(),
        }
        out.write(json.dumps(payload, indent=2) + "\n")
    else:
        out.write(render_text(report))
        out.write(f"\n  probed {result.url} (stream {result.stream_id})\n")
    return code


# --- the request ----------------------------------------------------------------------


def _send(
    client: httpx.Client, url: str, options: CheckOptions, headers: dict[str, str]
) -> ProbeResult:
    request = client.build_request("POST", url, json=probe_body(options), headers=headers)
    start = time.perf_counter()
    response = client.send(request, stream=True)
    try:
        if response.status_code != 200:
            raise _status_error(url, response)
        arrivals, events = _read_events(response, start)
        total = time.perf_counter() - start
    finally:
        response.close()
    metrics = _relay_metrics(url, response, events)
    sends = [float(ms) / 1000 for ms in metrics["send_offsets_ms"]]
    n = min(len(sends), len(arrivals))  # the relay caps its list at 10000 entries
    return ProbeResult(
        url=url,
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        send_offsets=tuple(sends[:n]),
        arrival_offsets=tuple(arrivals[:n]),
        total=total,
        relay_metrics=metrics,
    )


def _read_events(
    response: httpx.Response, start: float
) -> tuple[list[float], list[ServerSentEvent]]:
    """Arrival offsets of content deltas, and every other named event (in order)."""
    decoder = SSEDecoder()
    arrivals: list[float] = []
    others: list[ServerSentEvent] = []
    try:
        # iter_bytes decodes gzip incrementally: an event counts once it can be read.
        for chunk in response.iter_bytes():
            now = time.perf_counter() - start
            for event in decoder.feed(chunk):
                if event.event == "content_block_delta":
                    arrivals.append(now)
                else:
                    others.append(event)
        others += [e for e in decoder.close() if e.event != "content_block_delta"]
    except SSEDecodeError as exc:
        raise ProbeError(
            f"{response.url}: the answer is not a valid event stream ({exc})", kind="status"
        ) from None
    return arrivals, others


def _relay_metrics(
    url: str, response: httpx.Response, events: list[ServerSentEvent]
) -> dict[str, Any]:
    error = next((e for e in events if e.event == "error"), None)
    if error is not None:
        raise ProbeError(
            f"{url}: the probe stream ended with an error: {_error_message(error.data)}",
            kind="stream_error",
        )
    metrics = next((e for e in reversed(events) if e.event == "relay_metrics"), None)
    if metrics is None:
        relay = "x-relay-stream-id" in response.headers
        raise ProbeError(
            f"{url} answered a stream without the relay's final relay_metrics event"
            + (
                " although it sent X-Relay-Stream-Id: the stream ended early or a hop cut it."
                if relay
                else " (and no X-Relay-Stream-Id header): this endpoint is not the relay,"
                " so there are no send times to compare arrivals with. Point relay check"
                " at the relay, or at a proxy in front of it."
            ),
            kind="not_relay",
            exit_status=EXIT_NOT_RELAY,
        )
    data: dict[str, Any] = msgspec.json.decode(metrics.data)
    if not isinstance(data.get("send_offsets_ms"), list):
        raise ProbeError(
            f"{url}: relay_metrics has no send_offsets_ms (a relay too old for relay check,"
            " or a hop dropped the X-Relay-Timing request header)",
            kind="not_relay",
            exit_status=EXIT_NOT_RELAY,
        )
    return data


def _status_error(url: str, response: httpx.Response) -> ProbeError:
    body = b""
    for chunk in response.iter_raw():
        body += chunk
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    message = _error_message(body.decode(errors="replace"))
    return ProbeError(f"{url} answered HTTP {response.status_code}: {message}", kind="status")


def _error_message(text: str) -> str:
    """``type: message`` from an Anthropic-shaped error body, else the text's start."""
    try:
        data = json.loads(text)
        error = data["error"]
        return f"{error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return text.strip()[:300] or "(empty body)"


def _print_failure(options: CheckOptions, exc: ProbeError, out: TextIO) -> None:
    if options.as_json:
        verdict = Verdict.INCONCLUSIVE.value if exc.exit_status == EXIT_NOT_RELAY else None
        payload = {
            "url": options.url,
            "verdict": verdict,
            "exit_code": exc.exit_status,
            "error": {"kind": exc.kind, "message": str(exc)},
            "report": None,
            "probe": None,
        }
        out.write(json.dumps(payload, indent=2) + "\n")
        return
    title = "INCONCLUSIVE" if exc.exit_status == EXIT_NOT_RELAY else "PROBE FAILED"
    out.write(f"relay check: {title}\n  {exc}\n")


# --- command line ---------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``relay check URL``."""
    d = CheckOptions(url="")
    parser = subparsers.add_parser(
        "check",
        help="probe URL (the relay, or a proxy in front of it): does the stream stream?"
        " Exit 0 streaming, 1 buffered, 3 inconclusive or not the relay, 4 probe failed",
    )
    parser.add_argument("url", help="base URL; /v1/messages is appended")
    parser.add_argument("--model", default=d.model, help="probe model (mock-* get a 2 s spread)")
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens, help="probe length")
    parser.add_argument("--api-key", help="relay client key (RELAY_CLIENT_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--timeout", type=float, default=d.timeout, help="seconds to connect / of silence"
    )
    parser.set_defaults(func=_from_args)


def _from_args(args: argparse.Namespace) -> int:
    options = CheckOptions(
        url=args.url,
        model=args.model,
        max_tokens=args.max_tokens,
        api_key=args.api_key or os.environ.get("RELAY_CLIENT_API_KEY"),
        as_json=args.json,
        timeout=args.timeout,
    )
    return run_check(options)
