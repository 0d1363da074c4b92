"""Limits on how fast and how much we call an API: a strict sliding-window limiter, a concurrency
limit, and the small protocol (:class:`Limit` / :class:`Permit`) through which the engine applies
a list of them (see docs/architecture.md, "acquire limits").

Why not aiolimiter
------------------
aiolimiter's ``AsyncLimiter`` is a leaky bucket: it admits a burst of ``max_rate`` at once, then
drains continuously, so right after the burst it keeps admitting; a window (t-W, t] can see close
to twice ``max_rate`` arrivals. APIs that publish "170 requests per 10 s, 625,000 per day" count a
sliding window on their side and answer 429 beyond it, so we need a limiter that never lets any
window (t-W, t] exceed N.

Algorithm
---------
A sliding-window *log* (as described in Figma's "An alternative approach to rate limiting",
https://medium.com/figma-design/an-alternative-approach-to-rate-limiting-f8a06cf7c94c), with two
changes:

1. **Strict as the server counts arrivals.** A request reaches the server somewhere between our
   grant and the moment its response has fully arrived. So a slot is occupied from the grant until
   ``Permit.release()``, and only then starts its W-second expiry (expiry = release time + W).
   Proof that no server-side window (t-W, t] holds more than N arrivals, whatever the latency:
   let S be the requests arriving in it and g* the latest grant among them. Every other request
   in S was granted at or before g* and released at r >= its arrival > t-W, so its expiry
   r+W > t >= g*: at g* it still held a slot. The grant at g* needed a free slot, so |S|-1 < N.
   A permit that is never released holds its slot forever (the engine releases in ``finally``).
2. **Bucketed expiries for big windows.** 625,000/day must not cost 625,000 floats: windows with
   more than ``exact_max`` slots count releases in buckets of W/``buckets`` seconds, rounding each
   release time *up* to its bucket's end. Expiries only move later, so it is never less strict;
   the cost is holding a slot up to W/1000 longer (86 s of a day). Small windows stay exact.

Waiting never polls: waiters are futures in a queue served round-robin between *groups* (the
pipelines sharing a :class:`~asyncingest.limits.rate_budget.Budget`; one group, ``""``, otherwise),
then round-robin between keys within a group, FIFO within a key: an endpoint with 200 waiters
cannot starve one with 2, and a pipeline with 8 endpoints cannot starve one with 1. When nobody
can be granted, one timer is armed (``Clock.call_at``) for the earliest instant a slot returns,
and the head waiter is granted at exactly that instant.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from asyncingest.limits.clock import Clock, TimerHandle

from ..core.snapshot import WindowUsage  # built here, read by snapshots (core)

EXACT_MAX = 1000  # windows with at most this many slots keep exact release times
BUCKETS = 1000  # larger windows round releases up to W/BUCKETS: at most ~BUCKETS entries


class Permit(Protocol):
    """What a limit grants: hold it while the request is in flight, ``release`` it when over."""

    def release(self) -> None:
        """The request is over (response fully received, or failed). Idempotent."""
        ...


class Limit(Protocol):
    """The protocol every limit shares (windows, semaphores, budgets), so limits compose in
    :class:`Limits`.
    """

    async def acquire(self, key: str) -> Permit:
        """Wait until a request for ``key`` (an endpoint name) is allowed."""
        ...


@dataclass(frozen=True, slots=True)
class KeyStats:
    """One key's (endpoint's) figures at a limiter: permits granted, seconds waited in all, waiting
    now.
    """

    granted: int
    waited: float  # total seconds this key's requests spent queued
    waiting: int  # queued right now


P = TypeVar("P")


class _Waiter(Generic[P]):
    __slots__ = ("future", "group", "key", "since")

    def __init__(self, key: str, since: float, group: str = "") -> None:
        self.key = key
        self.group = group
        self.since = since
        self.future: asyncio.Future[P] = asyncio.get_running_loop().create_future()


class _KeyQueues(Generic[P]):
    """One group's waiters: round-robin between keys, FIFO within a key."""

    __slots__ = ("order", "queues")

    def __init__(self) -> None:
        self.queues: dict[str, deque[_Waiter[P]]] = {}
        self.order: deque[str] = deque()  # keys with (possibly cancelled) waiters, next first

    def push(self, waiter: _Waiter[P]) -> None:
        queue = self.queues.get(waiter.key)
        if queue is None:
            queue = self.queues[waiter.key] = deque()
            self.order.append(waiter.key)
        queue.append(waiter)

    def pop(self) -> _Waiter[P] | None:
        """The next live waiter (cancelled ones are dropped on the way), or None."""
        while self.order:
            key = self.order.popleft()
            queue = self.queues[key]
            while queue and queue[0].future.done():
                queue.popleft()
            if not queue:
                del self.queues[key]
                continue
            waiter = queue.popleft()
            if queue:
                self.order.append(key)
            else:
                del self.queues[key]
            return waiter
        return None


class _FairQueue(Generic[P]):
    """Round-robin between groups, then between keys within a group, FIFO within a key.
    Cancelled waiters are skipped lazily. With one group it is plain round-robin between keys."""

    __slots__ = ("_groups", "_live", "_order", "_size")

    def __init__(self) -> None:
        self._groups: dict[str, _KeyQueues[P]] = {}
        self._order: deque[str] = deque()  # groups with (possibly cancelled) waiters, next first
        self._live: dict[tuple[str, str], int] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, waiter: _Waiter[P]) -> None:
        group = self._groups.get(waiter.group)
        if group is None:
            group = self._groups[waiter.group] = _KeyQueues()
            self._order.append(waiter.group)
        group.push(waiter)
        key = (waiter.group, waiter.key)
        self._live[key] = self._live.get(key, 0) + 1
        self._size += 1

    def pop(self) -> _Waiter[P] | None:
        while self._order:
            name = self._order.popleft()
            group = self._groups[name]
            waiter = group.pop()
            if group.order:
                self._order.append(name)
            else:
                del self._groups[name]
            if waiter is not None:
                self.forget(waiter)
                return waiter
        return None

    def forget(self, waiter: _Waiter[P]) -> None:
        """Stop counting a waiter (popped, or cancelled before it was popped)."""
        key = (waiter.group, waiter.key)
        left = self._live[key] - 1
        if left:
            self._live[key] = left
        else:
            del self._live[key]
        self._size -= 1

    def withdraw(self, waiter: _Waiter[P]) -> P | None:
        """After the waiting task was cancelled: leave the queue, or return a grant that raced
        the cancellation (the caller gives it back)."""
        future = waiter.future
        if not future.done():
            future.cancel()
        if future.cancelled():
            self.forget(waiter)
            return None
        return future.result()

    def waiting(self) -> dict[str, int]:
        """Live waiters per key (``group/key`` for keys of a named group)."""
        return {label(group, key): n for (group, key), n in self._live.items()}

    def __repr__(self) -> str:  # "3 (a=2, b=1)"
        per_key = ", ".join(f"{key}={n}" for key, n in sorted(self.waiting().items()))
        return f"{self._size} ({per_key})" if per_key else str(self._size)


def label(group: str, key: str) -> str:
    """How a (group, key) pair is named in stats and reprs: ``key``, or ``group/key``."""
    return f"{group}/{key}" if group else key


class Window:
    """The releases still counting against one ``(limit, seconds)`` window, oldest first, as
    expiry instants with a count each. With ``bucket`` > 0, release times are rounded up to the
    end of their bucket, so at most ~seconds/bucket entries exist."""

    __slots__ = ("_count", "_counts", "_expiries", "bucket", "limit", "seconds")

    def __init__(self, limit: int, seconds: float, bucket: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.bucket = bucket
        self._expiries: deque[float] = deque()  # non-decreasing: release times are monotonic
        self._counts: deque[int] = deque()
        self._count = 0

    def pending(self, now: float) -> int:
        """How many releases still count at ``now`` (dropping those expired)."""
        expiries = self._expiries
        while expiries and expiries[0] <= now:
            expiries.popleft()
            self._count -= self._counts.popleft()
        return self._count

    def add(self, released_at: float) -> None:
        """Count a release at ``released_at``: it expires ``seconds`` later (rounded up to its
        bucket's end when bucketed, never earlier)."""
        at = released_at
        if self.bucket:
            at = math.ceil(released_at / self.bucket) * self.bucket
            if at < released_at:  # float rounding must never make us less strict
                at += self.bucket
        expiry = at + self.seconds
        if self._expiries and self._expiries[-1] >= expiry:  # same bucket (or same instant)
            self._counts[-1] += 1
        else:
            self._expiries.append(expiry)
            self._counts.append(1)
        self._count += 1

    def first_expiry(self) -> float | None:
        """The earliest instant a counted release expires, or None when none counts."""
        return self._expiries[0] if self._expiries else None

    def stored(self) -> int:
        """How many expiry entries are kept (at most ~seconds/bucket when bucketed)."""
        return len(self._expiries)


class _Counter:
    __slots__ = ("granted", "waited")

    def __init__(self) -> None:
        self.granted = 0
        self.waited = 0.0


class WindowPermit:
    """A slot of a :class:`SlidingWindowLimiter`: ``release`` when the request is over (the slot
    then counts for one window length), ``give_back`` when nothing was sent (freed at once)."""

    __slots__ = ("_counter", "_done", "_key", "_limiter")

    def __init__(self, limiter: SlidingWindowLimiter, key: str, counter: _Counter) -> None:
        self._limiter = limiter
        self._key = key
        self._counter = counter
        self._done = False

    def release(self) -> None:
        """End the slot's flight: its window expiry starts now. Idempotent."""
        if not self._done:
            self._done = True
            self._limiter._release()

    def give_back(self) -> None:
        """The grant raced with cancellation: nothing was sent, so free the slot at once."""
        if not self._done:
            self._done = True
            self._limiter._give_back(self._counter)

    def __repr__(self) -> str:
        return f"<permit {self._key!r} of {self._limiter.name!r}{' released' * self._done}>"


def make_windows(
    windows: Sequence[tuple[int, float]],
    exact_max: int = EXACT_MAX,
    buckets: int = BUCKETS,
    *,
    allow_none: bool = False,
) -> tuple[Window, ...]:
    """Checked ``(limit, seconds)`` pairs as windows: exact up to ``exact_max`` slots, else
    counted in ``buckets`` time buckets. Shared by the async and the thread-safe limiter.
    ``allow_none``: no windows is fine (a limiter that only pauses)."""
    if not windows and not allow_none:
        raise ValueError("a sliding-window limiter needs at least one (limit, seconds) window")
    for limit, seconds in windows:
        if limit < 1 or not 0 < seconds < math.inf:
            raise ValueError(f"bad window ({limit}, {seconds}): need limit >= 1, seconds > 0")
    return tuple(Window(n, w, 0.0 if n <= exact_max else w / buckets) for n, w in windows)


class SlidingWindowLimiter:
    """At most N requests per W seconds, for every ``(N, W)`` in ``windows``, all at once.

    ``acquire(key)`` waits for a slot in every window and returns a :class:`Permit`; the slot
    stays taken until ``release()`` and for W seconds after it (see the module docstring).
    ``group`` (keyword) names who asks, for fairness between the pipelines sharing a budget.
    ``pause_only=True`` accepts no windows: the limiter then only pauses (``pause_until``).
    """

    def __init__(
        self,
        windows: Sequence[tuple[int, float]],
        clock: Clock,
        name: str = "",
        *,
        exact_max: int = EXACT_MAX,
        buckets: int = BUCKETS,
        pause_only: bool = False,
    ) -> None:
        self.name = name
        self._clock = clock
        self._windows = make_windows(windows, exact_max, buckets, allow_none=pause_only)
        self._in_flight = 0
        self._granted = 0
        self._counters: dict[tuple[str, str], _Counter] = {}
        self._queue: _FairQueue[WindowPermit] = _FairQueue()
        self._paused_until = -math.inf
        self._timer: TimerHandle | None = None
        self._timer_at = math.inf

    def try_acquire(self, key: str = "", *, group: str = "") -> WindowPermit | None:
        """A permit at once if nobody waits and every window has room, else None (no wait)."""
        now = self._clock.time()
        if not self._queue and now >= self._paused_until and self._room(now):
            return self._grant(group, key, 0.0)
        return None

    async def acquire(self, key: str = "", *, group: str = "") -> WindowPermit:
        """Wait for a slot in every window (round-robin between groups, then between keys, FIFO
        within one) and return its permit; a cancelled wait takes no slot.
        """
        now = self._clock.time()
        if not self._queue and now >= self._paused_until and self._room(now):
            return self._grant(group, key, 0.0)
        waiter: _Waiter[WindowPermit] = _Waiter(key, now, group)
        self._queue.push(waiter)
        self._dispatch(now)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            raced = self._queue.withdraw(waiter)
            if raced is not None:
                raced.give_back()
            elif not self._queue:
                self._arm(self._clock.time())
            raise

    def pause_until(self, when: float) -> None:
        """Grant nothing before monotonic time ``when`` (e.g. a 429's Retry-After). Only ever
        extends the pause."""
        if when > self._paused_until:
            self._paused_until = when
            self._arm(self._clock.time())

    def move_to(self, clock: Clock) -> None:
        """Keep time on ``clock`` from now on (a new event loop's, telling the same monotonic
        time). Only between runs: nothing may be in flight or waiting."""
        if self._in_flight or self._queue:
            raise RuntimeError(
                f"limiter {self.name!r} has {self._in_flight} slots in flight and "
                f"{len(self._queue)} waiters on its old clock; make a new one"
            )
        if self._timer is not None:
            self._timer.cancel()
        self._clock, self._timer, self._timer_at = clock, None, math.inf

    def pause_for(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` from now (only ever extends the pause)."""
        self.pause_until(self._clock.time() + seconds)

    @property
    def paused_until(self) -> float | None:
        """The end of the pause, or None when not paused."""
        return self._paused_until if self._paused_until > self._clock.time() else None

    def time_until_capacity(self) -> float | None:
        """Seconds until the next grant is possible (0.0: now), ignoring queued waiters; None
        while every slot of some full window is in flight (a release must come first)."""
        now = self._clock.time()
        at = self._capacity_at(now)
        return None if at is None else at - now

    @property
    def granted(self) -> int:
        """Permits granted since the limiter was made."""
        return self._granted

    @property
    def in_flight(self) -> int:
        """Permits granted and not yet released."""
        return self._in_flight

    def stats(self) -> dict[str, KeyStats]:
        """Per key (endpoint; ``group/key`` for a named group), sorted: granted, seconds waited,
        waiting now."""
        stats = {
            label(group, key): KeyStats(c.granted, c.waited, 0)
            for (group, key), c in self._counters.items()
        }
        for key, n in self._queue.waiting().items():
            s = stats.get(key, KeyStats(0, 0.0, 0))
            stats[key] = KeyStats(s.granted, s.waited, n)
        return dict(sorted(stats.items()))

    def usage(self) -> tuple[WindowUsage, ...]:
        """Each window's usage now, in the order the windows were given."""
        now = self._clock.time()
        return tuple(
            WindowUsage(w.limit, w.seconds, self._in_flight + w.pending(now), w.stored(), w.bucket)
            for w in self._windows
        )

    def __repr__(self) -> str:
        windows = ", ".join(
            f"{u.limit}/{u.seconds:g}s used {u.used}" + f" (bucket {u.bucket:g}s)" * bool(u.bucket)
            for u in self.usage()
        )
        paused = self.paused_until
        return (
            f"SlidingWindowLimiter({self.name!r}, [{windows}], in_flight={self._in_flight}, "
            f"waiting={self._queue!r}"
            + (f", paused for {paused - self._clock.time():g}s" if paused is not None else "")
            + ")"
        )

    # -- internals -----------------------------------------------------------------------------

    def _room(self, now: float) -> bool:
        in_flight = self._in_flight
        return all(in_flight + w.pending(now) < w.limit for w in self._windows)

    def _capacity_at(self, now: float) -> float | None:
        at = max(now, self._paused_until)
        for w in self._windows:
            if self._in_flight + w.pending(now) >= w.limit:
                expiry = w.first_expiry()
                if expiry is None:
                    return None
                at = max(at, expiry)
        return at

    def _grant(self, group: str, key: str, waited: float) -> WindowPermit:
        self._in_flight += 1
        self._granted += 1
        counter = self._counters.get((group, key))
        if counter is None:
            counter = self._counters[(group, key)] = _Counter()
        counter.granted += 1
        counter.waited += waited
        return WindowPermit(self, label(group, key), counter)

    def _dispatch(self, now: float) -> None:
        """Grant queued waiters while there is room, then arm the timer for the rest."""
        queue = self._queue
        if now >= self._paused_until:
            while queue and self._room(now):
                waiter = queue.pop()
                if waiter is None:
                    break
                waiter.future.set_result(self._grant(waiter.group, waiter.key, now - waiter.since))
        self._arm(now)

    def _arm(self, now: float) -> None:
        """Keep exactly one timer, at the earliest instant the head waiter can be granted."""
        at = self._capacity_at(now) if self._queue else None
        when = math.inf if at is None else at
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if at is not None:
            self._timer = self._clock.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        # The clock promises time() >= when; asyncio may fire up to one clock resolution early,
        # so trust the timer's own instant rather than re-arming for a nanosecond.
        now = max(self._clock.time(), self._timer_at)
        self._timer = None
        self._timer_at = math.inf
        self._dispatch(now)

    def _release(self) -> None:
        now = self._clock.time()
        self._in_flight -= 1
        for w in self._windows:
            w.add(now)
        if self._queue:
            self._dispatch(now)

    def _give_back(self, counter: _Counter) -> None:
        self._in_flight -= 1
        self._granted -= 1
        counter.granted -= 1
        self._dispatch(self._clock.time())


class _SlotPermit:
    __slots__ = ("_done", "_limit")

    def __init__(self, limit: ConcurrencyLimit) -> None:
        self._limit = limit
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._limit._release()


class ConcurrencyLimit:
    """At most ``limit`` permits out at once; waiters served round-robin between keys."""

    def __init__(self, limit: int, name: str = "") -> None:
        if limit < 1:
            raise ValueError(f"ConcurrencyLimit needs limit >= 1, got {limit}")
        self.limit = limit
        self.name = name
        self._in_use = 0
        self._queue: _FairQueue[_SlotPermit] = _FairQueue()

    @property
    def in_use(self) -> int:
        """Permits out now."""
        return self._in_use

    def try_acquire(self, key: str = "") -> Permit | None:
        """A permit at once if a slot is free and nobody waits, else None (no wait)."""
        if self._in_use < self.limit and not self._queue:
            self._in_use += 1
            return _SlotPermit(self)
        return None

    async def acquire(self, key: str = "") -> Permit:
        """Wait for a free slot (round-robin between keys) and return its permit."""
        if self._in_use < self.limit and not self._queue:
            self._in_use += 1
            return _SlotPermit(self)
        waiter: _Waiter[_SlotPermit] = _Waiter(key, 0.0)
        self._queue.push(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            raced = self._queue.withdraw(waiter)
            if raced is not None:
                raced.release()
            raise

    def _release(self) -> None:
        waiter = self._queue.pop()
        if waiter is None:
            self._in_use -= 1
        else:  # hand the slot straight to the next waiter
            waiter.future.set_result(_SlotPermit(self))

    def __repr__(self) -> str:
        return (
            f"ConcurrencyLimit({self.name!r}, in_use={self._in_use}/{self.limit}, "
            f"waiting={self._queue!r})"
        )


def try_acquire(limit: Limit, key: str) -> Permit | None:
    """``limit.try_acquire(key)`` for limits that have the fast path, else None."""
    fast = getattr(limit, "try_acquire", None)
    return fast(key) if fast is not None else None


def give_back(permit: Permit) -> None:
    """Return a permit whose request was never sent: ``give_back()`` where the permit has one
    (a window slot is then free at once, with no expiry), else ``release()``."""
    back = getattr(permit, "give_back", None)
    if back is not None:
        back()
    else:
        permit.release()


class Permits:
    """Several permits held as one (what :class:`Limits` grants); shared with the thread-pool
    limiter."""

    __slots__ = ("_permits",)

    def __init__(self, permits: list[Permit]) -> None:
        self._permits = permits

    def release(self) -> None:
        """Release every held permit, the last acquired first. Idempotent."""
        permits, self._permits = self._permits, []
        for permit in reversed(permits):
            permit.release()

    def give_back(self) -> None:
        """Nothing was sent: give every permit back (window slots free at once)."""
        permits, self._permits = self._permits, []
        for permit in reversed(permits):
            give_back(permit)


class Limits:
    """Several limits applied as one: acquired in order, released together (in reverse).

    Put rate limits last, so a window slot is taken as close to sending as possible. If the
    wait is cancelled midway, the permits already held are released.
    """

    def __init__(self, limits: Sequence[Limit]) -> None:
        self.limits = tuple(limits)

    def try_acquire(self, key: str = "") -> Permit | None:
        """All permits at once, or None (and nothing held) if any limit would make us wait."""
        held: list[Permit] = []
        for limit in self.limits:
            permit = try_acquire(limit, key)
            if permit is None:
                for p in reversed(held):  # nothing was sent: give back without expiry
                    give_back(p)
                return None
            held.append(permit)
        return Permits(held)

    async def acquire(self, key: str = "") -> Permit:
        """Acquire every limit in order and return their permits as one; if the wait is cancelled
        midway, what was held is released.
        """
        held: list[Permit] = []
        try:
            for limit in self.limits:
                held.append(await limit.acquire(key))
        except BaseException:
            Permits(held).release()
            raise
        return Permits(held)

    def __repr__(self) -> str:
        return f"Limits({list(self.limits)!r})"
