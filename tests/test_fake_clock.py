"""FakeClock: virtual time for everything that waits."""

from __future__ import annotations

import asyncio

import pytest

from asyncingest.limits.clock import Clock
from asyncingest.testing import FakeClock


def test_is_a_clock() -> None:
    clock: Clock = FakeClock()
    assert clock.time() == 1000.0
    assert clock.wall() == 1_700_000_000.0


async def test_time_stands_still_until_advanced() -> None:
    clock = FakeClock()
    await asyncio.sleep(0)
    assert clock.time() == 1000.0
    await clock.advance(2.5)
    assert clock.time() == 1002.5
    assert clock.wall() == 1_700_000_002.5


async def test_timers_fire_in_time_order_and_ties_in_registration_order() -> None:
    clock = FakeClock()
    fired: list[str] = []
    clock.call_at(1003.0, lambda: fired.append("c"))
    clock.call_at(1001.0, lambda: fired.append("a"))
    clock.call_at(1002.0, lambda: fired.append("b1"))
    clock.call_at(1002.0, lambda: fired.append("b2"))
    clock.call_at(1010.0, lambda: fired.append("late"))
    await clock.advance(5)
    assert fired == ["a", "b1", "b2", "c"]
    assert clock.next_timer() == 1010.0


async def test_cancelled_timer_never_fires() -> None:
    clock = FakeClock()
    fired: list[int] = []
    clock.call_at(1001.0, lambda: fired.append(1)).cancel()
    await clock.advance(2)
    assert fired == []
    assert clock.pending_timers == 0


async def test_timer_in_the_past_fires_on_next_step_without_moving_time_back() -> None:
    clock = FakeClock()
    fired: list[float] = []
    clock.call_at(900.0, lambda: fired.append(clock.time()))
    await clock.advance(0)
    assert fired == [1000.0]


async def test_sleep_wakes_at_exactly_its_deadline() -> None:
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper(delay: float) -> None:
        await clock.sleep(delay)
        woke.append(clock.time())

    tasks = [asyncio.create_task(sleeper(d)) for d in (3.0, 1.0, 2.0)]
    await clock.advance(1.5)
    assert woke == [1001.0]
    await clock.advance(10)
    assert woke == [1001.0, 1002.0, 1003.0]
    await asyncio.gather(*tasks)


async def test_advance_runs_timers_scheduled_by_woken_coroutines() -> None:
    clock = FakeClock()
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(4):
            await clock.sleep(0.5)
            ticks.append(clock.time())

    task = asyncio.create_task(ticker())
    await clock.advance(1.75)
    assert ticks == [1000.5, 1001.0, 1001.5]
    assert clock.time() == 1001.75
    await clock.advance(1)
    await task


async def test_cancelled_sleep_leaves_no_timer() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending_timers == 0


async def test_auto_advance_runs_many_concurrent_sleepers_to_completion() -> None:
    clock = FakeClock()
    done: list[tuple[int, float]] = []

    async def worker(i: int) -> None:
        for _ in range(3):
            await clock.sleep(i % 7 + 0.25)
        done.append((i, clock.time()))

    async with clock.auto_advance():
        await asyncio.gather(*(worker(i) for i in range(300)))
    assert len(done) == 300
    assert all(t == 1000.0 + 3 * (i % 7 + 0.25) for i, t in done)
    assert clock.time() == 1000.0 + 3 * 6.25


async def test_run_returns_the_result_in_virtual_time() -> None:
    clock = FakeClock()

    async def slow() -> str:
        await clock.sleep(3600)
        return "done"

    assert await clock.run(slow()) == "done"
    assert clock.time() == 4600.0


async def test_auto_advance_reports_a_deadlock_instead_of_hanging() -> None:
    clock = FakeClock()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(RuntimeError, match="deadlock"):
        async with clock.auto_advance():
            await clock.sleep(5)
            await never
    assert clock.time() == 1005.0


async def test_auto_advance_without_deadlock_detection_waits_for_a_new_timer() -> None:
    clock = FakeClock()
    go: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def later() -> None:
        await asyncio.sleep(0)  # no timer exists while the driver first settles
        clock.call_at(1050.0, lambda: go.set_result(None))

    async with clock.auto_advance(detect_deadlock=False):
        helper = asyncio.create_task(later())
        await go
        await helper
    assert clock.time() == 1050.0


async def test_timer_callback_error_fails_the_block() -> None:
    clock = FakeClock()

    def boom() -> None:
        raise ValueError("boom")

    clock.call_at(1001.0, boom)
    with pytest.raises(ValueError, match="boom"):
        async with clock.auto_advance():
            await clock.sleep(10)


async def test_advance_refused_while_auto_advancing() -> None:
    clock = FakeClock()
    async with clock.auto_advance():
        with pytest.raises(RuntimeError):
            await clock.advance(1)


async def test_repr_shows_time_and_timers() -> None:
    clock = FakeClock()
    clock.call_at(1001.0, lambda: None)
    assert repr(clock) == "FakeClock(time=1000.000000, timers=1)"
