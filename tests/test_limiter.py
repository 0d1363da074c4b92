"""SlidingWindowLimiter, ConcurrencyLimit and Limits, in fake time.

Latencies and fractions are multiples of 1/32 s, so every time in these tests is an exact
binary float and "granted at the instant the slot returned" can be checked with ``==``.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import defaultdict
from collections.abc import Sequence

import pytest

from asyncingest.limits.limiter import (
    BUCKETS,
    EXACT_MAX,
    ConcurrencyLimit,
    KeyStats,
    Limits,
    Permit,
    SlidingWindowLimiter,
    Window,
    make_windows,
)
from asyncingest.testing import FakeClock

from .conftest import most_in_any_window


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Recorder:
    """Runs requests through a limiter, holding each permit for its latency, and records when
    each was asked for, granted, reached the server, and released."""

    def __init__(self, limiter: SlidingWindowLimiter, clock: FakeClock) -> None:
        self.limiter = limiter
        self.clock = clock
        self.asked: list[float] = []
        self.granted: list[float] = []
        self.arrivals: list[float] = []
        self.released: list[float] = []
        self.by_key: dict[str, list[float]] = defaultdict(list)

    async def request(self, key: str, latency: float = 0.0, fraction: float = 0.0) -> None:
        asked = self.clock.time()
        permit = await self.limiter.acquire(key)
        now = self.clock.time()
        self.asked.append(asked)
        self.granted.append(now)
        self.by_key[key].append(now)
        # the server sees the request somewhere between the grant and the full response
        self.arrivals.append(now + latency * fraction)
        try:
            await self.clock.sleep(latency)
        finally:
            self.released.append(self.clock.time())
            permit.release()


def random_plan(n: int, seed: int, keys: Sequence[str]) -> list[tuple[str, float, float]]:
    rng = random.Random(seed)
    return [(keys[i % len(keys)], rng.randrange(97) / 32, rng.randrange(33) / 32) for i in range(n)]


WINDOWS = [(5, 1.0), (20, 10.0), (50, 60.0)]


# -- strictness -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_no_server_window_ever_over_its_limit_whatever_the_latency(
    clock: FakeClock, seed: int
) -> None:
    limiter = SlidingWindowLimiter(WINDOWS, clock)
    rec = Recorder(limiter, clock)
    async with clock.auto_advance():
        await asyncio.gather(*(rec.request(*p) for p in random_plan(500, seed, "abc")))
    assert len(rec.arrivals) == 500
    for limit, seconds in WINDOWS:
        assert most_in_any_window(rec.arrivals, seconds) <= limit
    assert most_in_any_window(rec.arrivals, 60.0) == 50  # and the budget was used


async def test_slot_is_held_from_grant_until_release_then_for_the_window(
    clock: FakeClock,
) -> None:
    limiter = SlidingWindowLimiter([(1, 10.0)], clock)
    first = await limiter.acquire("k")
    second = asyncio.create_task(limiter.acquire("k"))
    await clock.advance(30)
    assert not second.done()
    assert limiter.time_until_capacity() is None  # only a release can make room
    first.release()
    assert limiter.time_until_capacity() == 10.0
    await clock.advance(9.5)
    assert not second.done()
    await clock.advance(0.5)
    assert second.done()
    assert limiter.stats()["k"].waited == 40.0


async def test_small_windows_are_exact_and_large_ones_bucketed(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(170, 10.0), (625_000, 86_400.0)], clock)
    small, day = limiter.usage()
    assert small.bucket == 0.0
    assert day.bucket == 86.4


# -- no wasted capacity -----------------------------------------------------------------------


async def test_waiters_are_granted_the_instant_a_slot_expires(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(5, 1.0)], clock)
    rec = Recorder(limiter, clock)
    async with clock.auto_advance():
        await asyncio.gather(*(rec.request("k") for _ in range(23)))
    assert rec.granted == [1000.0] * 5 + [1001.0] * 5 + [1002.0] * 5 + [1003.0] * 5 + [1004.0] * 3


async def test_every_window_is_honoured_and_none_wasted(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(2, 1.0), (3, 10.0)], clock)
    rec = Recorder(limiter, clock)
    async with clock.auto_advance():
        await asyncio.gather(*(rec.request("k") for _ in range(7)))
    assert rec.granted == [1000.0, 1000.0, 1001.0, 1010.0, 1010.0, 1011.0, 1020.0]


@pytest.mark.parametrize("seed", [4, 5])
async def test_each_grant_is_immediate_or_at_the_moment_a_slot_returns(
    clock: FakeClock, seed: int
) -> None:
    limiter = SlidingWindowLimiter(WINDOWS, clock)
    rec = Recorder(limiter, clock)
    async with clock.auto_advance():
        await asyncio.gather(*(rec.request(*p) for p in random_plan(300, seed, "xyz")))
    returns = {r + seconds for r in rec.released for _, seconds in WINDOWS}
    waited = [g for a, g in zip(rec.asked, rec.granted, strict=True) if g > a]
    assert waited  # the test exercises waiting
    assert all(g in returns for g in waited)


async def test_waiters_share_one_timer(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(1, 1.0)], clock)
    (await limiter.acquire("k")).release()
    tasks = [asyncio.create_task(limiter.acquire(f"k{i % 3}")) for i in range(100)]
    await clock.advance(0)
    assert clock.pending_timers == 1
    assert clock.next_timer() == 1001.0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert clock.pending_timers == 0


# -- fairness ---------------------------------------------------------------------------------


async def test_a_busy_key_cannot_starve_a_quiet_one(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(1, 1.0)], clock)
    rec = Recorder(limiter, clock)
    async with clock.auto_advance():
        await asyncio.gather(
            *[rec.request("bulk") for _ in range(200)], *[rec.request("small") for _ in range(2)]
        )
    assert rec.by_key["small"] == [1002.0, 1004.0]
    assert rec.by_key["bulk"][:4] == [1000.0, 1001.0, 1003.0, 1005.0]


async def test_keys_take_turns_under_load(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(3, 1.0)], clock)
    rec = Recorder(limiter, clock)
    async with clock.auto_advance():
        await asyncio.gather(*(rec.request(k) for k in "a" * 90 + "b" * 30 + "c" * 30))
    # while all three keys wait, each gets one of every three grants
    assert rec.by_key["b"][-1] == rec.by_key["c"][-1] < rec.by_key["a"][-1]
    assert limiter.stats() == {
        "a": KeyStats(90, sum(rec.by_key["a"]) - 90 * 1000.0, 0),
        "b": KeyStats(30, sum(rec.by_key["b"]) - 30 * 1000.0, 0),
        "c": KeyStats(30, sum(rec.by_key["c"]) - 30 * 1000.0, 0),
    }


# -- cancellation -----------------------------------------------------------------------------


async def test_cancelled_waiter_leaves_without_consuming_a_slot(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(1, 1.0)], clock)
    (await limiter.acquire("a")).release()
    b = asyncio.create_task(limiter.acquire("b"))
    c = asyncio.create_task(limiter.acquire("c"))
    await clock.advance(0)
    assert "waiting=2 (b=1, c=1)" in repr(limiter)
    b.cancel()
    await clock.advance(0)
    assert b.cancelled()
    await clock.advance(1)
    assert c.done()
    assert limiter.stats() == {"a": KeyStats(1, 0.0, 0), "c": KeyStats(1, 1.0, 0)}


async def test_grant_racing_with_cancellation_is_given_back(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(1, 1.0)], clock)
    (await limiter.acquire("a")).release()
    b = asyncio.create_task(limiter.acquire("b"))
    c = asyncio.create_task(limiter.acquire("c"))
    await clock.advance(0)  # both queued; the limiter's timer is armed for 1001

    def cancel_b() -> None:  # runs right after the limiter granted b, before b resumes
        b.cancel()

    clock.call_at(1001.0, cancel_b)
    await clock.advance(1)
    assert b.cancelled()
    assert c.done()  # b's slot went to c at once, not lost
    assert limiter.in_flight == 1
    assert limiter.granted == 2
    assert limiter.stats()["c"] == KeyStats(1, 1.0, 0)


# -- pause ------------------------------------------------------------------------------------


async def test_pause_until_holds_every_grant(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(10, 1.0)], clock)
    limiter.pause_until(1005.0)
    limiter.pause_until(1002.0)  # an earlier end never shortens a pause
    assert limiter.paused_until == 1005.0
    assert limiter.time_until_capacity() == 5.0
    rec = Recorder(limiter, clock)
    async with clock.auto_advance():
        await asyncio.gather(*(rec.request("k") for _ in range(3)))
    assert rec.granted == [1005.0] * 3
    assert limiter.paused_until is None


async def test_extending_a_pause_moves_the_wakeup_later(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(10, 1.0)], clock)
    limiter.pause_until(1005.0)
    waiter = asyncio.create_task(limiter.acquire("k"))
    await clock.advance(1)
    limiter.pause_until(1010.0)
    await clock.advance(5)
    assert not waiter.done()
    await clock.advance(4)
    assert waiter.done()
    assert clock.time() == 1010.0


# -- bucketed large windows -------------------------------------------------------------------


async def test_bucketed_window_rounds_releases_up_to_the_bucket_end(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(2, 10.0)], clock, exact_max=1, buckets=10)
    assert limiter.usage()[0].bucket == 1.0
    permits = [await limiter.acquire("k"), await limiter.acquire("k")]
    await clock.advance(0.25)
    for permit in permits:
        permit.release()
    waiter = asyncio.create_task(limiter.acquire("k"))
    await clock.advance(10.5)  # an exact window would grant at 1010.25
    assert not waiter.done()
    await clock.advance(0.25)
    assert waiter.done() and clock.time() == 1011.0
    assert limiter.stats()["k"].waited == 10.75


@pytest.mark.parametrize("seed", [6, 7])
async def test_bucketed_window_is_never_exceeded(clock: FakeClock, seed: int) -> None:
    windows = [(40, 8.0), (5, 1.0)]
    limiter = SlidingWindowLimiter(windows, clock, exact_max=10, buckets=32)
    assert limiter.usage()[0].bucket == 0.25
    rec = Recorder(limiter, clock)
    async with clock.auto_advance():
        await asyncio.gather(*(rec.request(*p) for p in random_plan(400, seed, "ab")))
    for limit, seconds in windows:
        assert most_in_any_window(rec.arrivals, seconds) <= limit


async def test_a_day_window_stores_buckets_not_releases(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(625_000, 86_400.0)], clock)
    for _ in range(5000):
        (await limiter.acquire("k")).release()
        await clock.advance(86_400.0 / 5000)
    (day,) = limiter.usage()
    assert day.used == 5000
    assert day.stored <= 1001


# -- state you can see ------------------------------------------------------------------------


async def test_repr_shows_windows_usage_waiters_and_pause(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(2, 1.0), (625_000, 86_400.0)], clock, name="api")
    held = await limiter.acquire("users")
    (await limiter.acquire("users")).release()
    limiter.pause_until(1030.0)
    waiter = asyncio.create_task(limiter.acquire("orders"))
    await clock.advance(0)
    assert repr(limiter) == (
        "SlidingWindowLimiter('api', [2/1s used 2, 625000/86400s used 2 (bucket 86.4s)], "
        "in_flight=1, waiting=1 (orders=1), paused for 30s)"
    )
    held.release()
    await clock.advance(30)
    assert waiter.done()


async def test_releasing_twice_is_harmless(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter([(5, 1.0)], clock)
    permit = await limiter.acquire("k")
    permit.release()
    permit.release()
    assert limiter.in_flight == 0
    assert limiter.usage()[0].used == 1


def test_windows_are_validated(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        SlidingWindowLimiter([], clock)
    with pytest.raises(ValueError):
        SlidingWindowLimiter([(0, 1.0)], clock)
    with pytest.raises(ValueError):
        SlidingWindowLimiter([(5, 0.0)], clock)


# -- ConcurrencyLimit and Limits --------------------------------------------------------------


async def test_concurrency_limit_hands_slots_over_in_turn(clock: FakeClock) -> None:
    limit = ConcurrencyLimit(1, name="conn")
    order: list[str] = []

    async def request(key: str) -> None:
        permit = await limit.acquire(key)
        order.append(key)
        await clock.sleep(1)
        permit.release()

    async with clock.auto_advance():
        await asyncio.gather(*[request("bulk") for _ in range(5)], request("small"))
    assert order == ["bulk", "bulk", "small", "bulk", "bulk", "bulk"]
    assert limit.in_use == 0


async def test_concurrency_limit_cancelled_waiter_takes_nothing(clock: FakeClock) -> None:
    limit = ConcurrencyLimit(1)
    held = await limit.acquire("k")
    waiter = asyncio.create_task(limit.acquire("k"))
    await clock.advance(0)
    assert repr(limit) == "ConcurrencyLimit('', in_use=1/1, waiting=1 (k=1))"
    waiter.cancel()
    await clock.advance(0)
    held.release()
    held.release()
    assert limit.in_use == 0


async def test_concurrency_slot_racing_with_cancellation_goes_to_the_next(
    clock: FakeClock,
) -> None:
    limit = ConcurrencyLimit(1)
    held = await limit.acquire("a")
    b = asyncio.create_task(limit.acquire("b"))
    c = asyncio.create_task(limit.acquire("c"))
    await clock.advance(0)
    held.release()  # hands the slot to b ...
    b.cancel()  # ... which is cancelled before it resumes
    await clock.advance(0)
    assert b.cancelled()
    assert c.done()
    assert limit.in_use == 1


async def test_limits_apply_every_limit(clock: FakeClock) -> None:
    conc = ConcurrencyLimit(1)
    window = SlidingWindowLimiter([(2, 1.0)], clock)
    limits = Limits([conc, window])
    first = await limits.acquire("k")
    second = asyncio.create_task(limits.acquire("k"))
    await clock.advance(0)
    assert not second.done()  # held back by the concurrency limit
    first.release()
    first.release()
    await clock.advance(0)
    permit: Permit = second.result()
    assert (conc.in_use, window.in_flight, window.usage()[0].used) == (1, 1, 2)
    permit.release()
    assert (conc.in_use, window.in_flight) == (0, 0)


async def test_limits_cancelled_midway_release_what_they_hold(clock: FakeClock) -> None:
    conc = ConcurrencyLimit(5)
    window = SlidingWindowLimiter([(1, 10.0)], clock)
    limits = Limits([conc, window])
    await limits.acquire("k")  # takes the only window slot
    waiter = asyncio.create_task(limits.acquire("k"))
    await clock.advance(0)
    assert conc.in_use == 2  # holds a concurrency slot, waits on the window
    waiter.cancel()
    await clock.advance(0)
    assert waiter.cancelled()
    assert (conc.in_use, window.in_flight) == (1, 1)


async def test_limits_nest(clock: FakeClock) -> None:
    inner = Limits([SlidingWindowLimiter([(1, 1.0)], clock)])
    outer = Limits([ConcurrencyLimit(2), inner])
    rec: list[float] = []

    async def request() -> None:
        permit = await outer.acquire("k")
        rec.append(clock.time())
        permit.release()

    async with clock.auto_advance():
        await asyncio.gather(*(request() for _ in range(3)))
    assert rec == [1000.0, 1001.0, 1002.0]


# -- edges mutation testing found unguarded (nox -s mutants -- limiter) ------------------------


class _SlowOnly:
    """A limit with no fast path (only ``acquire``), like a custom one."""

    async def acquire(self, key: str = "") -> Permit:
        raise AssertionError("not called by try_acquire")


async def test_limits_try_acquire_takes_all_or_nothing(clock: FakeClock) -> None:
    conc = ConcurrencyLimit(2)
    window = SlidingWindowLimiter([(1, 10.0)], clock)
    limits = Limits([conc, window])
    permit = limits.try_acquire("k")
    assert permit is not None
    assert (conc.in_use, window.in_flight, window.granted) == (1, 1, 1)
    # the window is full: the concurrency slot taken on the way is given back at once
    assert limits.try_acquire("k") is None
    assert (conc.in_use, window.in_flight, window.granted) == (1, 1, 1)
    permit.release()
    assert (conc.in_use, window.in_flight) == (0, 0)
    assert window.usage()[0].used == 1  # released: counts for the window length
    assert window.stats() == {"k": KeyStats(1, 0.0, 0)}


async def test_a_limit_without_a_fast_path_makes_try_acquire_fail_cleanly(
    clock: FakeClock,
) -> None:
    window = SlidingWindowLimiter([(5, 10.0)], clock)
    limits = Limits([window, _SlowOnly()])  # type: ignore[list-item]
    assert limits.try_acquire("k") is None
    assert (window.in_flight, window.granted, window.usage()[0].used) == (0, 0, 0)


async def test_permits_give_back_frees_window_slots_at_once(clock: FakeClock) -> None:
    conc = ConcurrencyLimit(1)
    window = SlidingWindowLimiter([(1, 10.0)], clock)
    permit = Limits([conc, window]).try_acquire()
    assert permit is not None
    permit.give_back()  # type: ignore[attr-defined]
    permit.give_back()  # type: ignore[attr-defined]
    assert (conc.in_use, window.in_flight, window.granted, window.usage()[0].used) == (0, 0, 0, 0)
    assert window.try_acquire() is not None  # no expiry to wait out
    assert window.stats() == {"": KeyStats(1, 0.0, 0)}


async def test_a_given_back_permit_cannot_be_released_too(clock: FakeClock) -> None:
    window = SlidingWindowLimiter([(3, 10.0)], clock)
    kept = window.try_acquire("a")
    back = window.try_acquire("a")
    assert kept is not None and back is not None
    back.give_back()
    back.release()
    back.give_back()
    assert (window.in_flight, window.granted, window.usage()[0].used) == (1, 1, 1)
    kept.release()
    assert window.usage()[0].used == 1


async def test_concurrency_try_acquire(clock: FakeClock) -> None:
    limit = ConcurrencyLimit(2)
    first, second = limit.try_acquire("k"), limit.try_acquire("k")
    assert first is not None and second is not None and limit.in_use == 2
    assert limit.try_acquire("k") is None
    first.release()
    waiter = asyncio.create_task(limit.acquire("w"))  # the freed slot: taken at once
    await clock.advance(0)
    assert waiter.done() and limit.in_use == 2
    late = asyncio.create_task(limit.acquire("w"))
    await clock.advance(0)
    second.release()  # handed to the waiter: still nothing free for try_acquire
    assert limit.try_acquire("k") is None
    await clock.advance(0)
    assert late.done() and limit.in_use == 2


def test_concurrency_limit_needs_one_slot() -> None:
    with pytest.raises(ValueError, match="ConcurrencyLimit needs limit >= 1, got 0"):
        ConcurrencyLimit(0)


async def test_concurrency_waiters_take_turns_between_groups_then_keys(clock: FakeClock) -> None:
    limit = ConcurrencyLimit(1)
    held = await limit.acquire("x")
    order: list[str] = []

    async def ask(key: str, group: str) -> None:
        permit = await limit.acquire(key, group=group)
        order.append(f"{group}/{key}")
        permit.release()

    tasks = [
        asyncio.create_task(ask("k1", "a")),
        asyncio.create_task(ask("k2", "a")),
        asyncio.create_task(ask("k3", "b")),
    ]
    await clock.advance(0)
    held.release()
    await asyncio.gather(*tasks)
    assert order == ["a/k1", "b/k3", "a/k2"]


async def test_a_cancelled_key_does_not_cost_its_group_a_turn(clock: FakeClock) -> None:
    limit = ConcurrencyLimit(1)
    held = await limit.acquire("x")
    order: list[str] = []

    async def ask(key: str, group: str) -> None:
        permit = await limit.acquire(key, group=group)
        order.append(f"{group}/{key}")
        permit.release()

    gone = asyncio.create_task(ask("k1", "a"))
    tasks = [asyncio.create_task(ask("k2", "a")), asyncio.create_task(ask("k3", "b"))]
    await clock.advance(0)
    gone.cancel()
    await clock.advance(0)
    held.release()
    await asyncio.gather(*tasks)
    assert order == ["a/k2", "b/k3"]


async def test_default_keys_are_the_empty_key(clock: FakeClock) -> None:
    window = SlidingWindowLimiter([(5, 10.0)], clock)
    (await Limits([window]).acquire()).release()
    permit = Limits([window]).try_acquire()
    assert permit is not None
    assert window.try_acquire() is not None
    (await window.acquire()).release()
    assert list(window.stats()) == [""]
    conc = ConcurrencyLimit(1)
    held = conc.try_acquire()
    assert held is not None
    waiter = asyncio.create_task(conc.acquire())
    await clock.advance(0)
    assert repr(conc) == "ConcurrencyLimit('', in_use=1/1, waiting=1 (=1))"
    held.release()
    await waiter


async def test_stats_of_keys_waiting_with_and_without_grants(clock: FakeClock) -> None:
    window = SlidingWindowLimiter([(1, 10.0)], clock)
    held = await window.acquire("a")
    await clock.advance(2)
    waiters = [asyncio.create_task(window.acquire(k)) for k in ("a", "b", "b")]
    await clock.advance(0)
    assert window.stats() == {"a": KeyStats(1, 0.0, 1), "b": KeyStats(0, 0.0, 2)}
    held.release()
    for w in waiters:
        w.cancel()
    await clock.advance(0)
    assert window.stats() == {"a": KeyStats(1, 0.0, 0)}


async def test_try_acquire_at_the_instant_a_pause_ends(clock: FakeClock) -> None:
    window = SlidingWindowLimiter([(1, 1.0)], clock)
    (await window.acquire()).release()
    window.pause_until(clock.time() + 5)
    assert window.try_acquire() is None
    await clock.advance(5)
    assert window.try_acquire() is not None  # the earlier release expired; pause over


async def test_a_new_waiter_after_a_cancelled_one_is_still_woken(clock: FakeClock) -> None:
    window = SlidingWindowLimiter([(1, 10.0)], clock)
    (await window.acquire("a")).release()
    first = asyncio.create_task(window.acquire("b"))  # waits for the expiry at +10
    await clock.advance(1)
    first.cancel()  # the timer goes with it
    await clock.advance(0)
    second = asyncio.create_task(window.acquire("c"))
    await clock.advance(9)
    assert second.done()
    second.result().release()


async def test_move_to_refuses_a_limiter_with_a_slot_in_flight(clock: FakeClock) -> None:
    window = SlidingWindowLimiter([(2, 1.0)], clock, name="api")
    permit = await window.acquire()
    with pytest.raises(RuntimeError, match="'api' has 1 slots in flight and 0 waiters"):
        window.move_to(FakeClock())
    permit.release()
    window.move_to(FakeClock())


async def test_reprs_when_idle(clock: FakeClock) -> None:
    window = SlidingWindowLimiter([(2, 1.0)], clock, name="api")
    assert repr(window) == ("SlidingWindowLimiter('api', [2/1s used 0], in_flight=0, waiting=0)")
    conc = ConcurrencyLimit(2, name="c")
    assert repr(conc) == "ConcurrencyLimit('c', in_use=0/2, waiting=0)"
    permit = await window.acquire("k")
    assert repr(permit) == "<permit 'k' of 'api'>"
    permit.release()
    assert repr(permit) == "<permit 'k' of 'api' released>"
    assert repr(Limits([conc])) == "Limits([ConcurrencyLimit('c', in_use=0/2, waiting=0)])"


def test_make_windows_needs_a_window_and_finite_seconds() -> None:
    with pytest.raises(
        ValueError, match=r"^a sliding-window limiter needs at least one \(limit, seconds\) window$"
    ):
        make_windows([])
    assert make_windows([], allow_none=True) == ()
    with pytest.raises(ValueError, match="bad window"):
        make_windows([(5, math.inf)])


def test_a_window_of_exactly_exact_max_slots_keeps_exact_times() -> None:
    exact, bucketed = make_windows([(EXACT_MAX, 60.0), (EXACT_MAX + 1, 60.0)])
    assert (exact.bucket, bucketed.bucket) == (0.0, 60.0 / BUCKETS)


def test_a_bucketed_release_expires_at_its_bucket_end_never_earlier() -> None:
    on_edge = Window(5_000, 10.0, 0.25)
    on_edge.add(2.0)  # exactly a bucket's end: not pushed to the next one
    assert on_edge.first_expiry() == 12.0
    rounded = Window(5_000, 86_400.0, 86.4)
    released = 432.00000000000006  # ceil(released / 86.4) * 86.4 rounds to 432.0, below it
    rounded.add(released)
    expiry = rounded.first_expiry()
    assert expiry is not None and released + 86_400.0 <= expiry <= released + 86_400.0 + 86.4


async def test_names_and_permit_labels(clock: FakeClock) -> None:
    window = SlidingWindowLimiter([(2, 1.0)], clock)
    assert window.name == ""
    permit = await window.acquire("k", group="pipe")
    assert repr(permit) == "<permit 'pipe/k' of ''>"
