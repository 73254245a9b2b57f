"""The nginx configs, run by the real nginx in front of a tiny SSE server on loopback.

streaming.conf must pass events through as they are written; buffering.conf (stock
defaults) must hold them until the response ends, unless the upstream sends
``X-Accel-Buffering: no``; its gzip must apply to text/event-stream. Timing claims are
orderings (did the first event arrive before the server sent the last one?) and spread
ratios with wide margins.
"""

from __future__ import annotations

import shutil
import time
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream

from service.check import Verdict, analyze
from tests.support.nginx import (
    NGINX_DIR,
    ConfigName,
    NginxError,
    check_config,
    render_prefix,
    run_nginx,
)

pytestmark = pytest.mark.slow

CONFIGS: tuple[ConfigName, ...] = ("streaming", "buffering")
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Script:
    """What the test SSE server sends."""

    events: int = 20
    """Content events (``id:`` + ``data:``)."""
    interval: float = 0.05
    """Seconds between two events."""
    accel_no: bool = False
    """Send ``X-Accel-Buffering: no``."""
    pause_after_first: float = 0.0
    """Silence after the first event (tests read timeouts)."""
    heartbeat: float | None = None
    """During the pause, send a ``: ping`` comment this often."""
    chunked: bool = True
    """Answer HTTP/1.1 requests chunked; False: close-delimited, as HTTP/1.0 requests get."""


@dataclass
class Timeline:
    """One request through nginx: when the server sent each event and when it arrived."""

    start: float = 0.0
    sends: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    end: float = 0.0
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    complete: bool = False

    @property
    def send_spread(self) -> float:
        return self.sends[-1] - self.sends[0]

    @property
    def arrival_spread(self) -> float:
        return self.arrivals[-1] - self.arrivals[0]


# --- the SSE server -------------------------------------------------------------------


async def _read_head(stream: SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
        if len(data) > _MAX_HEAD:
            raise ValueError("request head too large")
    return data


def _frame(payload: bytes, *, chunked: bool) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload) if chunked else payload


async def _serve_sse(script: Script, timeline: Timeline, stream: SocketStream) -> None:
    # nginx hanging up mid-response (a read timeout under test) ends this handler quietly.
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await _respond(script, timeline, stream)


async def _respond(script: Script, timeline: Timeline, stream: SocketStream) -> None:
    async with stream:
        head = await _read_head(stream)
        # HTTP/1.1 upstream requests (streaming.conf) get a chunked body, HTTP/1.0 ones
        # (nginx's default, buffering.conf) a close-delimited one, as uvicorn would answer.
        chunked = script.chunked and head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.1")
        lines = [
            b"HTTP/1.1 200 OK",
            b"Content-Type: text/event-stream; charset=utf-8",
            b"Cache-Control: no-cache, no-transform",
            b"Connection: close",
        ]
        if script.accel_no:
            lines.append(b"X-Accel-Buffering: no")
        if chunked:
            lines.append(b"Transfer-Encoding: chunked")
        await stream.send(b"\r\n".join(lines) + b"\r\n\r\n")
        for n in range(script.events):
            if n == 1:
                await _pause(script, stream, chunked=chunked)
            if n:
                await anyio.sleep(script.interval)
            timeline.sends.append(time.perf_counter())
            await stream.send(_frame(b'id: %d\ndata: {"n": %d}\n\n' % (n, n), chunked=chunked))
        if chunked:
            await stream.send(b"0\r\n\r\n")


async def _pause(script: Script, stream: SocketStream, *, chunked: bool) -> None:
    deadline = time.perf_counter() + script.pause_after_first
    while (left := deadline - time.perf_counter()) > 0:
        await anyio.sleep(min(left, script.heartbeat or left))
        if script.heartbeat and deadline - time.perf_counter() > 0:
            await stream.send(_frame(b": ping\n\n", chunked=chunked))


# --- the client -----------------------------------------------------------------------


async def _consume(url: str, timeline: Timeline, *, accept_encoding: str) -> None:
    buffer = b""
    async with (
        httpx.AsyncClient(timeout=15) as client,
        client.stream("GET", url, headers={"Accept-Encoding": accept_encoding}) as response,
    ):
        timeline.headers = response.headers
        try:
            # aiter_bytes decodes gzip incrementally: an event counts when it can be read.
            async for chunk in response.aiter_bytes():
                now = time.perf_counter()
                buffer += chunk
                *frames, buffer = buffer.split(b"\n\n")
                timeline.arrivals += [now for frame in frames if b"data:" in frame]
            timeline.complete = True
        except httpx.RemoteProtocolError:
            timeline.complete = False  # nginx cut the response (e.g. a read timeout)
    timeline.end = time.perf_counter()


async def _through_nginx(
    config: ConfigName,
    script: Script,
    tmp_path: Path,
    *,
    accept_encoding: str = "gzip",
    extra_directives: str = "",
) -> Timeline:
    timeline = Timeline()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, partial(_serve_sse, script, timeline))
        with run_nginx(
            config, port, tmp_path=tmp_path, extra_directives=extra_directives
        ) as base_url:
            timeline.start = time.perf_counter()
            await _consume(f"{base_url}/v1/messages", timeline, accept_encoding=accept_encoding)
        tg.cancel_scope.cancel()
    return timeline


def _verdict(timeline: Timeline) -> Verdict:
    """What `relay check`'s analysis makes of this timeline."""
    first = timeline.sends[0]
    report = analyze(
        [s - first for s in timeline.sends],
        [a - timeline.start for a in timeline.arrivals],
        total=timeline.end - timeline.start,
    )
    return report.verdict


# --- nginx -t -------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_rendered_config_passes_nginx_t(config: ConfigName, tmp_path: Path) -> None:
    conf = render_prefix(config, 9, 18080, dest=tmp_path)
    assert "syntax is ok" in check_config(tmp_path, conf)


@pytest.mark.parametrize("config", CONFIGS)
def test_overrides_hook_can_change_the_stream_timeouts(config: ConfigName, tmp_path: Path) -> None:
    # The hook sits in the stream locations; a directive they set themselves would be a
    # duplicate there, so the configs must leave the timeouts to the server level.
    extra = "proxy_read_timeout 2s;\nproxy_send_timeout 2s;"
    conf = render_prefix(config, 9, 18080, dest=tmp_path, extra_directives=extra)
    check_config(tmp_path, conf)


def test_repository_nginx_conf_runs_as_is_for_make_stack(tmp_path: Path) -> None:
    # make stack / relay capture: the repo's own nginx.conf + local.conf, nothing copied.
    output = check_config(tmp_path, NGINX_DIR / "nginx.conf")
    assert "test is successful" in output


def test_docker_conf_includes_resolve_in_the_official_image_layout(tmp_path: Path) -> None:
    # Stand-in for the image's /etc/nginx: its nginx.conf includes conf.d/*.conf inside
    # http {}; compose mounts docker.conf as conf.d/default.conf and the two server
    # bodies under relay/. The compose host name does not resolve here: point it at
    # loopback, nothing else changes.
    etc = tmp_path / "etc-nginx"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "relay").mkdir()
    for name in ("streaming.conf", "buffering.conf"):
        shutil.copyfile(NGINX_DIR / name, etc / "relay" / name)
    docker = (NGINX_DIR / "docker.conf").read_text()
    assert "server relay:8000;" in docker
    (etc / "conf.d" / "default.conf").write_text(docker.replace("relay:8000", "127.0.0.1:9"))
    (etc / "nginx.conf").write_text(
        "pid nginx.pid;\nerror_log error.log;\nevents {}\n"
        "http {\n    proxy_temp_path proxy_temp;\n    client_body_temp_path body_temp;\n"
        "    fastcgi_temp_path fastcgi_temp;\n    uwsgi_temp_path uwsgi_temp;\n"
        "    scgi_temp_path scgi_temp;\n    include conf.d/*.conf;\n}\n"
    )
    check_config(tmp_path, etc / "nginx.conf")


def test_broken_config_error_surfaces_nginx_output(tmp_path: Path) -> None:
    conf = render_prefix("streaming", 9, 18080, dest=tmp_path, extra_directives="no_such_thing;")
    with pytest.raises(NginxError, match="unknown directive"):
        check_config(tmp_path, conf)


def test_start_up_failure_reports_nginx_error_output(tmp_path: Path) -> None:
    with (
        pytest.raises(NginxError, match="unknown directive"),
        run_nginx("buffering", 9, tmp_path=tmp_path, extra_directives="no_such_thing;"),
    ):
        pass


def test_failure_inside_the_block_carries_nginx_logs_as_a_note(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom") as info,
        run_nginx("streaming", 9, tmp_path=tmp_path),
    ):
        raise RuntimeError("boom")
    assert any("nginx error.log" in note for note in info.value.__notes__)


# --- timing through a running nginx ---------------------------------------------------


def _assert_streamed(timeline: Timeline, events: int) -> None:
    assert timeline.complete
    assert len(timeline.arrivals) == events
    assert timeline.arrivals[0] < timeline.sends[-1]  # read before the server finished
    assert timeline.arrival_spread > 0.5 * timeline.send_spread
    assert _verdict(timeline) is Verdict.STREAMING


def _assert_one_burst_at_the_end(timeline: Timeline, events: int) -> None:
    assert timeline.complete
    assert len(timeline.arrivals) == events
    assert timeline.arrivals[0] > timeline.sends[-1]  # nothing before the server finished
    assert timeline.arrival_spread < 0.2 * timeline.send_spread
    assert _verdict(timeline) is Verdict.BUFFERED


@pytest.mark.anyio
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close-delimited"])
async def test_streaming_conf_passes_events_as_they_are_sent(chunked: bool, tmp_path: Path) -> None:
    # Close-delimited bodies are the case nginx's buffered mode holds back (see below);
    # proxy_buffering off passes them through all the same.
    script = Script(chunked=chunked)
    timeline = await _through_nginx("streaming", script, tmp_path)

    _assert_streamed(timeline, script.events)
    assert "content-encoding" not in timeline.headers


@pytest.mark.anyio
@pytest.mark.parametrize("accept_encoding", ["gzip", "identity"])
async def test_buffering_conf_delivers_everything_in_one_burst_at_the_end(
    accept_encoding: str, tmp_path: Path
) -> None:
    # With or without gzip: nginx speaks HTTP/1.0 upstream, the body is close-delimited,
    # and buffered mode passes a partly filled buffer on only when the response ends.
    timeline = await _through_nginx(
        "buffering", Script(), tmp_path, accept_encoding=accept_encoding
    )

    _assert_one_burst_at_the_end(timeline, Script().events)


@pytest.mark.anyio
@pytest.mark.parametrize(("accept_encoding", "streams"), [("gzip", False), ("identity", True)])
async def test_gzip_alone_holds_the_stream_for_clients_that_accept_it(
    accept_encoding: str, streams: bool, tmp_path: Path
) -> None:
    # buffering.conf upgraded to HTTP/1.1 upstream (chunked body): nginx 1.22's buffered
    # mode then forwards each chunk, but gzip still holds everything for gzip clients
    # (browsers), while curl without --compressed sees a healthy stream.
    timeline = await _through_nginx(
        "buffering",
        Script(),
        tmp_path,
        accept_encoding=accept_encoding,
        extra_directives="proxy_http_version 1.1;",
    )

    if streams:
        _assert_streamed(timeline, Script().events)
    else:
        _assert_one_burst_at_the_end(timeline, Script().events)


@pytest.mark.anyio
async def test_buffering_conf_streams_when_upstream_sends_x_accel_buffering_no(
    tmp_path: Path,
) -> None:
    # Even with HTTP/1.0 upstream and gzip on: unbuffered, nginx flushes the compressor
    # for each chunk it passes on.
    timeline = await _through_nginx("buffering", Script(accel_no=True), tmp_path)

    _assert_streamed(timeline, Script().events)
    assert timeline.headers.get("content-encoding") == "gzip"
    assert "x-accel-buffering" not in timeline.headers  # nginx consumes the header


# --- gzip -----------------------------------------------------------------------------

_SHORT = Script(events=3, interval=0.0)


@pytest.mark.anyio
async def test_buffering_conf_gzips_event_streams_for_gzip_clients(tmp_path: Path) -> None:
    timeline = await _through_nginx("buffering", _SHORT, tmp_path, accept_encoding="gzip")

    assert timeline.headers.get("content-encoding") == "gzip"
    assert timeline.headers["content-type"].startswith("text/event-stream")
    assert len(timeline.arrivals) == _SHORT.events  # decodes to the same events


@pytest.mark.anyio
async def test_buffering_conf_does_not_gzip_for_clients_without_accept_encoding(
    tmp_path: Path,
) -> None:
    # Why `curl -N` (no --compressed) can miss what browsers suffer.
    timeline = await _through_nginx("buffering", _SHORT, tmp_path, accept_encoding="identity")

    assert "content-encoding" not in timeline.headers
    assert len(timeline.arrivals) == _SHORT.events


@pytest.mark.anyio
async def test_streaming_conf_never_gzips_the_stream(tmp_path: Path) -> None:
    timeline = await _through_nginx("streaming", _SHORT, tmp_path, accept_encoding="gzip")

    assert "content-encoding" not in timeline.headers
    assert len(timeline.arrivals) == _SHORT.events


# --- read timeout vs heartbeats -------------------------------------------------------

_SILENT = Script(events=3, interval=0.0, pause_after_first=1.6)


@pytest.mark.anyio
async def test_silence_longer_than_proxy_read_timeout_cuts_the_stream(tmp_path: Path) -> None:
    timeline = await _through_nginx(
        "streaming", _SILENT, tmp_path, extra_directives="proxy_read_timeout 500ms;"
    )

    assert not timeline.complete
    assert len(timeline.arrivals) == 1  # the event before the silence, nothing after


@pytest.mark.anyio
async def test_heartbeats_keep_a_silent_stream_alive_past_proxy_read_timeout(
    tmp_path: Path,
) -> None:
    script = Script(events=3, interval=0.0, pause_after_first=1.6, heartbeat=0.1)
    timeline = await _through_nginx(
        "streaming", script, tmp_path, extra_directives="proxy_read_timeout 500ms;"
    )

    assert timeline.complete
    assert len(timeline.arrivals) == script.events
