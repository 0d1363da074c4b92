"""Deadlines: one timer keeps every request's total deadline, in fake time."""

from __future__ import annotations

import asyncio

import pytest

from asyncingest.limits.deadlines import Deadlines
from asyncingest.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=0.0)


async def bounded(deadlines: Deadlines, seconds: float, work: asyncio.Future[str]) -> str:
    """How HttpClient.fetch uses Deadlines: 'timeout' when the deadline cancelled the work."""
    task = asyncio.current_task()
    assert task is not None
    deadlines.arm(task, seconds)
    try:
        return await work
    except asyncio.CancelledError:
        if deadlines.expired(task):
            return "timeout"
        raise
    finally:
        deadlines.disarm(task)


async def test_work_past_its_deadline_is_cancelled_within_one_tick(clock: FakeClock) -> None:
    deadlines = Deadlines(0.5, clock)
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(bounded(deadlines, 2.0, never))
    await clock.advance(1.9)
    assert not task.done()
    await clock.advance(0.6)  # the tick at 2.5 is the first at or after the deadline
    assert task.done() and task.result() == "timeout"
    assert not task.cancelling()  # the cancellation was withdrawn: the task goes on normally
    assert len(deadlines) == 0


async def test_work_done_in_time_is_left_alone_and_the_timer_stops(clock: FakeClock) -> None:
    deadlines = Deadlines(0.5, clock)
    work: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(bounded(deadlines, 2.0, work))
    await clock.advance(1.0)
    work.set_result("page")
    await clock.advance(0)
    assert task.result() == "page"
    await clock.advance(0.5)  # the next tick finds nothing armed and does not re-arm
    assert clock.pending_timers == 0
    assert repr(deadlines) == "Deadlines(resolution=0.5s, armed=0, fired=0, ticking=False)"


async def test_one_timer_serves_every_armed_task(clock: FakeClock) -> None:
    deadlines = Deadlines(1.0, clock)
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[str]] = [loop.create_future() for _ in range(50)]
    tasks = [asyncio.create_task(bounded(deadlines, 3.0 + i % 5, f)) for i, f in enumerate(futures)]
    await clock.advance(0)
    assert clock.pending_timers == 1 and len(deadlines) == 50
    await clock.advance(5.0)  # deadlines 3 and 4 (and 5 at the tick at 5) have passed
    assert sum(t.done() for t in tasks) == 30
    await clock.advance(2.0)
    assert all(t.result() == "timeout" for t in tasks)


async def test_someone_elses_cancellation_propagates(clock: FakeClock) -> None:
    deadlines = Deadlines(0.5, clock)
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(bounded(deadlines, 10.0, never))
    await clock.advance(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_outer_cancellation_in_the_same_tick_as_the_deadline_wins(clock: FakeClock) -> None:
    """Both fired: the deadline's cancellation is withdrawn, the caller's stays and propagates."""
    deadlines = Deadlines(0.5, clock)
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(bounded(deadlines, 1.0, never))
    await clock.advance(0.9)
    clock.call_at(1.0, task.cancel)  # fires just before the tick's own cancel
    await clock.advance(0.1)
    with pytest.raises(asyncio.CancelledError):
        await task


def test_resolution_follows_the_timeout() -> None:
    assert Deadlines.for_timeout(60).resolution == 1.0
    assert Deadlines.for_timeout(0.3).resolution == pytest.approx(0.015)
    with pytest.raises(ValueError, match="resolution"):
        Deadlines(0)
