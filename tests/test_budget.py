"""Budget, the in-process RateBudget: fair between pipelines, one pause for all, one loop at a
time; in fake time (the engines sharing one against a real server: test_shared_budget.py)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from asyncingest import Budget, RateBudget, RateWindow
from asyncingest.limits.limiter import KeyStats, Limits
from asyncingest.limits.rate_budget import BudgetShare
from asyncingest.testing import FakeClock

LATENCY = 1 / 32


async def hammer(budget: Budget, clock: FakeClock, pipeline: str, key: str, got: Counter[str]):
    """One worker: acquire, hold for LATENCY, release, again, forever."""
    while True:
        permit = await budget.acquire(key, pipeline=pipeline)
        got[f"{pipeline}/{key}"] += 1
        await clock.sleep(LATENCY)
        permit.release()


async def test_two_saturated_pipelines_get_half_each_whatever_their_endpoints() -> None:
    """Saturated: each pipeline has more workers waiting than half a window's limit (a burst
    of slots freed at one instant can only go to workers that are waiting)."""
    clock = FakeClock(start=0.0)
    budget = Budget([(10, 1.0)], clock=clock)
    got: Counter[str] = Counter()
    # Pipeline a: one endpoint, 8 workers. Pipeline b: four endpoints of 8 workers each.
    plan = [("a", "laps")] * 8 + [("b", key) for key in ("x", "y", "z", "w") for _ in range(8)]
    workers = [asyncio.create_task(hammer(budget, clock, p, k, got)) for p, k in plan]
    await clock.advance(60.0)
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    a = got["a/laps"]
    b = sum(n for key, n in got.items() if key.startswith("b/"))
    assert a + b >= 580  # the budget was used: 10 per (1 + LATENCY) s for 60 s
    assert abs(a - b) <= 10  # the first window went to whoever asked first; then turns
    b_keys = [got[f"b/{k}"] for k in "xyzw"]
    assert max(b_keys) - min(b_keys) <= 3  # and b's share is split between its endpoints


async def test_without_pipelines_each_endpoint_is_a_turn() -> None:
    """The same load as one pipeline (no group): five endpoints, a fifth each."""
    clock = FakeClock(start=0.0)
    budget = Budget([(10, 1.0)], clock=clock)
    got: Counter[str] = Counter()
    keys = [k for k in ("laps", "x", "y", "z", "w") for _ in range(8)]
    workers = [asyncio.create_task(hammer(budget, clock, "", k, got)) for k in keys]
    await clock.advance(30.0)
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert max(got.values()) - min(got.values()) <= 10  # the first window: whoever came first


async def test_every_window_holds_across_pipelines() -> None:
    clock = FakeClock(start=0.0)
    budget = Budget([RateWindow(requests=3, per_seconds=1.0)], clock=clock)
    granted: list[float] = []

    async def request(pipeline: str) -> None:
        permit = await budget.acquire("k", pipeline=pipeline)
        granted.append(clock.time())
        permit.release()

    async with clock.auto_advance():
        await asyncio.gather(*(request(p) for p in "ab" * 6))
    assert granted == [0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0] * 3


async def test_a_pause_holds_every_pipeline() -> None:
    clock = FakeClock(start=0.0)
    budget = Budget([(100, 1.0)], clock=clock)
    (await budget.acquire("laps", pipeline="a")).release()  # bound, no wait
    budget.pause_for(5.0)
    budget.pause_for(2.0)  # a shorter pause never shortens one in force
    assert budget.pause_left() == 5.0
    assert budget.time_until_capacity() == 5.0
    assert budget.try_acquire("x", pipeline="b") is None
    done: list[tuple[str, float]] = []

    async def request(pipeline: str) -> None:
        (await budget.acquire("x", pipeline=pipeline)).release()
        done.append((pipeline, clock.time()))

    async with clock.auto_advance():
        await asyncio.gather(request("a"), request("b"))
    assert done == [("a", 5.0), ("b", 5.0)]
    assert budget.pause_left() is None


async def test_a_budget_without_windows_only_pauses() -> None:
    clock = FakeClock(start=0.0)
    budget = Budget(clock=clock)
    permits = [budget.try_acquire("k") for _ in range(1000)]  # no window: never full
    assert all(p is not None for p in permits) and budget.in_flight == 1000
    assert budget.usage() == () and budget.time_until_capacity() == 0.0
    budget.pause_for(5.0)
    assert "paused for 5s" in repr(budget)
    waiter = asyncio.create_task(budget.acquire("k", pipeline="b"))
    await clock.advance(2.0)
    budget.pause_for(6.0)  # extended while it waits: until 8
    await clock.advance(5.0)
    assert not waiter.done()
    await clock.advance(1.0)
    assert waiter.done() and clock.time() == 8.0


async def test_a_cancelled_wait_takes_no_slot() -> None:
    clock = FakeClock(start=0.0)
    budget = Budget([(1, 10.0)], clock=clock)
    first = await budget.acquire("k", pipeline="a")
    waiter = asyncio.create_task(budget.acquire("k", pipeline="b"))
    await clock.advance(0)
    assert "waiting=(b/k=1)" in repr(budget)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    first.give_back()  # never sent: the slot is free at once, no window expiry
    assert budget.in_flight == 0 and budget.usage()[0].used == 0
    assert budget.try_acquire("k", pipeline="b") is not None
    assert budget.stats() == {"a/k": KeyStats(0, 0.0, 0), "b/k": KeyStats(1, 0.0, 0)}


async def test_a_pipeline_share_is_a_limit_that_composes() -> None:
    clock = FakeClock(start=0.0)
    budget = Budget([(1, 1.0)], clock=clock)
    limits = Limits([BudgetShare(budget, "run-1")])
    permit = await limits.acquire("laps")
    assert limits.try_acquire("laps") is None  # the window is full: nothing held
    permit.release()
    async with clock.auto_advance():
        (await limits.acquire("laps")).release()
    assert clock.time() == 1.0
    assert budget.stats()["run-1/laps"].granted == 2


def test_a_budget_is_made_before_the_loop_and_keeps_counting_across_runs() -> None:
    budget = Budget([(5, 3600.0)])
    assert budget.usage()[0].used == 0 and "not yet used" in repr(budget)

    async def one_request() -> int:
        (await budget.acquire("k")).release()
        return budget.usage()[0].used

    assert asyncio.run(one_request()) == 1
    assert asyncio.run(one_request()) == 2  # a later loop: the hour-long window remembers


async def test_using_a_budget_from_a_second_loop_at_once_is_a_clear_error() -> None:
    budget = Budget([(5, 60.0)])
    (await budget.acquire("k")).release()  # bound to this (running) loop

    def in_another_loop() -> None:
        async def use() -> None:
            await budget.acquire("k")

        asyncio.run(use())

    with pytest.raises(RuntimeError, match="two event loops"):
        await asyncio.to_thread(in_another_loop)


def test_bad_windows_fail_where_the_budget_is_made() -> None:
    with pytest.raises(ValueError, match="bad window"):
        Budget([(0, 1.0)])


def test_budget_is_a_rate_budget() -> None:
    budget: RateBudget = Budget([(5, 1.0)], name="crm")
    assert budget.name == "crm" and budget.in_flight == 0
    assert budget.time_until_capacity() == 0.0 and budget.pause_left() is None
