"""AdaptiveConcurrency: AIMD within the hard limit, as a Limit."""

from __future__ import annotations

import asyncio

import pytest

from asyncingest.limits.adaptive import AdaptiveConcurrency
from asyncingest.limits.limiter import Limits, Permit


class Changes(list[tuple[int, str]]):
    def __call__(self, limit: int, why: str) -> None:
        self.append((limit, why))


async def hold(limit: AdaptiveConcurrency, n: int) -> list[Permit]:
    return [await limit.acquire("e") for _ in range(n)]


def succeed(limit: AdaptiveConcurrency, n: int, *, at: float = 0.0, latency: float = 0.1) -> None:
    for _ in range(n):
        limit.observe(started=at, latency=latency, throttled=False)


async def test_starts_at_initial_and_blocks_beyond_the_limit() -> None:
    limit = AdaptiveConcurrency(16, initial=2)
    await hold(limit, 2)
    blocked = asyncio.create_task(limit.acquire("e"))
    await asyncio.sleep(0)
    assert not blocked.done() and limit.waiting == 1
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert limit.waiting == 0


async def test_grows_about_one_per_round_trip_while_saturated() -> None:
    changes = Changes()
    limit = AdaptiveConcurrency(16, initial=4, on_change=changes)
    await hold(limit, 4)  # every slot busy: the limit is what holds requests back
    succeed(limit, 4)  # one round trip's answers: 4 + 1/4 + 1/4.06 + ... just under 5
    assert limit.limit == 4
    succeed(limit, 1)
    assert limit.limit == 5
    assert changes == [(5, "no throttling")]
    assert limit.in_use == 4  # observing never hands out permits by itself


async def test_does_not_grow_while_idle() -> None:
    limit = AdaptiveConcurrency(16, initial=4)
    (await limit.acquire("e")).release()
    succeed(limit, 100)
    assert limit.limit == 4


async def test_never_above_the_hard_limit() -> None:
    limit = AdaptiveConcurrency(3, initial=3)
    await hold(limit, 3)
    succeed(limit, 1000)
    assert limit.limit == 3
    assert AdaptiveConcurrency(3, initial=10).limit == 3


async def test_throttled_halves_once_per_round_trip() -> None:
    changes = Changes()
    limit = AdaptiveConcurrency(32, initial=16, on_change=changes)
    # 16 requests sent at t=0; the first 429 arrives at t=0.5 and cuts.
    limit.observe(started=0.0, latency=0.5, throttled=True)
    assert limit.limit == 8
    # The other 429s of that round were sent before the cut: no further cuts.
    for _ in range(15):
        limit.observe(started=0.0, latency=0.6, throttled=True)
    assert limit.limit == 8
    # A request sent after the cut and throttled again cuts again.
    limit.observe(started=0.7, latency=0.2, throttled=True)
    assert limit.limit == 4
    assert changes == [(8, "throttled"), (4, "throttled")]


async def test_never_below_the_minimum() -> None:
    limit = AdaptiveConcurrency(8, min_limit=2, initial=8)
    for i in range(10):
        limit.observe(started=float(i), latency=0.1, throttled=True)
    assert limit.limit == 2


async def test_rising_latency_cuts_gently_after_warmup() -> None:
    limit = AdaptiveConcurrency(32, initial=20, warmup=10)
    for i in range(10):
        limit.observe(started=float(i), latency=0.1, throttled=False)
    assert limit.limit == 20
    limit.observe(started=10.0, latency=0.1, throttled=False)
    for i in range(3):
        limit.observe(started=20.0 + i, latency=1.0, throttled=False)
    assert limit.limit < 20
    assert limit.latency is not None
    recent, baseline = limit.latency
    assert recent > 2 * baseline
    assert "latency" in repr(limit)


async def test_no_latency_cuts_during_warmup() -> None:
    limit = AdaptiveConcurrency(32, initial=20, warmup=50)
    for i in range(20):
        limit.observe(started=float(i), latency=0.1 if i < 5 else 5.0, throttled=False)
    assert limit.limit == 20


async def test_growth_wakes_waiters() -> None:
    limit = AdaptiveConcurrency(8, initial=1, increase=1.0)
    first = await limit.acquire("e")
    second = asyncio.create_task(limit.acquire("e"))
    await asyncio.sleep(0)
    assert not second.done()
    limit.observe(started=0.0, latency=0.1, throttled=False)  # 1 -> 2
    await asyncio.sleep(0)
    assert second.done() and limit.in_use == 2
    first.release()
    (await second).release()
    assert limit.in_use == 0


async def test_a_cut_lets_in_flight_requests_finish_and_admits_fewer() -> None:
    limit = AdaptiveConcurrency(8, initial=4)
    permits = await hold(limit, 4)
    limit.observe(started=0.0, latency=0.1, throttled=True)  # 4 -> 2
    queued = asyncio.create_task(limit.acquire("e"))
    for p in permits[:2]:
        p.release()
    await asyncio.sleep(0)
    assert not queued.done() and limit.in_use == 2  # still above the new limit of 2
    permits[2].release()
    await asyncio.sleep(0)
    assert queued.done() and limit.in_use == 2


async def test_composes_with_other_limits() -> None:
    limit = AdaptiveConcurrency(4, initial=1)
    both = Limits([limit])
    permit = await both.acquire("e")
    assert limit.in_use == 1
    permit.release()
    permit.release()
    assert limit.in_use == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveConcurrency(2, min_limit=3)
    with pytest.raises(ValueError):
        AdaptiveConcurrency(2, decrease=1.0)
    with pytest.raises(ValueError):
        AdaptiveConcurrency(2, latency_tolerance=1.0)
