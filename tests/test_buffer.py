"""FrameBuffer: the bounded reader->writer queue and the replay buffer."""

from __future__ import annotations

import anyio
import pytest

from service.buffer import FrameBuffer, ReplayGoneError


def _buffer(pending: int = 10, replay: int = 10) -> tuple[FrameBuffer, list[int]]:
    changes: list[int] = []
    return FrameBuffer(
        max_pending_bytes=pending, replay_max_bytes=replay, on_pending_change=changes.append
    ), changes


def test_pending_bytes_follow_the_slowest_writer() -> None:
    buffer, changes = _buffer(pending=100)
    fast, slow = buffer.attach(0), buffer.attach(0)
    for _ in range(3):
        buffer.append(b"abcd")
    assert buffer.pending_bytes == 12
    buffer.advance(fast, 3)
    assert buffer.pending_bytes == 12, "the slow writer still has everything pending"
    buffer.advance(slow, 2)
    assert buffer.pending_bytes == 4
    assert sum(changes) == buffer.pending_bytes


def test_not_writable_past_the_bound_until_drained() -> None:
    buffer, _ = _buffer(pending=8)
    handle = buffer.attach(0)
    buffer.append(b"12345")
    assert buffer.writable()
    buffer.append(b"67890")
    assert not buffer.writable()
    buffer.advance(handle, 1)
    assert buffer.writable()


@pytest.mark.anyio
async def test_wait_writable_resumes_when_a_writer_advances() -> None:
    buffer, _ = _buffer(pending=4)
    handle = buffer.attach(0)
    buffer.append(b"123456")
    resumed: list[bool] = []

    async def reader() -> None:
        await buffer.wait_writable()
        resumed.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        assert not resumed, "the reader must wait while the queue is full"
        buffer.advance(handle, 1)
    assert resumed == [True]


@pytest.mark.anyio
async def test_wait_frames_returns_everything_from_the_cursor_then_empty_when_closed() -> None:
    buffer, _ = _buffer(pending=100)
    buffer.append(b"a")
    buffer.append(b"b")
    assert await buffer.wait_frames(0) == [b"a", b"b"]
    assert await buffer.wait_frames(1) == [b"b"]
    buffer.close()
    assert await buffer.wait_frames(2) == []


@pytest.mark.anyio
async def test_wait_frames_wakes_on_append() -> None:
    buffer, _ = _buffer(pending=100)
    got: list[list[bytes]] = []

    async def writer() -> None:
        got.append(await buffer.wait_frames(0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await anyio.wait_all_tasks_blocked()
        buffer.append(b"x")
    assert got == [[b"x"]]


def test_replay_keeps_sent_frames_up_to_its_bound_and_drops_the_oldest() -> None:
    buffer, _ = _buffer(pending=100, replay=8)
    handle = buffer.attach(0)
    for frame in (b"aaaa", b"bbbb", b"cccc"):
        buffer.append(frame)
    buffer.advance(handle, 3)
    assert buffer.first_seq == 1, "12 sent bytes exceed the 8-byte replay bound by one frame"
    assert buffer.held_bytes == 8
    with pytest.raises(ReplayGoneError):
        buffer.attach(0)
    assert buffer.attach(1) >= 0


def test_unsent_frames_are_never_dropped() -> None:
    buffer, _ = _buffer(pending=1000, replay=1)
    buffer.attach(0)
    for _ in range(10):
        buffer.append(b"0123456789")
    assert buffer.first_seq == 0
    assert buffer.held_bytes == 100


def test_detached_floor_keeps_backpressure_for_a_later_resume() -> None:
    buffer, _ = _buffer(pending=8)
    handle = buffer.attach(0)
    buffer.append(b"1234")
    buffer.advance(handle, 1)
    buffer.detach(handle)
    buffer.append(b"123456789")
    assert not buffer.writable(), "nobody reads: the reader must stay paused"
    again = buffer.attach(1)
    buffer.advance(again, 2)
    assert buffer.writable()


def test_settle_accounting_reports_the_pending_bytes_gone_once() -> None:
    buffer, changes = _buffer(pending=100)
    buffer.attach(0)
    buffer.append(b"12345")
    buffer.settle_accounting()
    assert sum(changes) == 0
    buffer.close()
    buffer.settle_accounting()
    assert sum(changes) == 0
