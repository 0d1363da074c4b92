"""Limits for threads: the strict sliding-window limiter, a concurrency limit, and their
composition. The blocking twins of ``asyncingest.limits.limiter`` (see its docstring for the
algorithm and the proof of strictness).

Same semantics, shared arithmetic
---------------------------------
The window bookkeeping is the async limiter's own ``Window`` (exact release times, or bucketed
for big windows): a slot is held from the grant until ``Permit.release()`` and for W seconds
after it, so no server-side window (t-W, t] ever sees more than N arrivals, whatever the
latency. Only the waiting differs.

Waiting
-------
Waiters queue FIFO (no round-robin between keys: FIFO is fair enough for threads that all
wait the same way). Each waiter has its own ``threading.Condition`` on the limiter's one lock,
so a release wakes exactly one thread, never a herd. Only the head of the queue waits with a
timeout, equal to the time until a slot expires (``None`` while every slot of a full window is
in flight: a release must come first, and it notifies the head). Nobody polls. ``close()``
wakes everyone with :class:`LimiterClosed`, so a run can stop while threads wait on a daily
window.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from ..core.snapshot import WindowUsage
from ..limits.limiter import BUCKETS, EXACT_MAX, Permit, Permits, make_windows


class LimiterClosed(Exception):
    """The limiter was closed while waiting: the run is stopping."""


class ThreadLimit(Protocol):
    """The thread-pool twin of :class:`~asyncingest.limits.limiter.Limit`: blocking acquire, and
    close to wake every waiter.
    """

    def acquire(self, key: str = "") -> Permit:
        """Block until a request for ``key`` is allowed."""
        ...

    def close(self) -> None:
        """Wake every waiter with :class:`LimiterClosed`; later acquires raise it too."""
        ...


class _Permit:
    __slots__ = ("_done", "_release")

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._done = False

    def release(self) -> None:
        if not self._done:  # not atomic, but a permit belongs to the one thread that got it
            self._done = True
            self._release()


class ThreadSlidingWindowLimiter:
    """At most N requests per W seconds, for every ``(N, W)`` in ``windows``, across threads.

    ``acquire()`` blocks until every window has a slot; the slot stays taken until
    ``release()`` and for W seconds after it.
    """

    def __init__(
        self,
        windows: Sequence[tuple[int, float]],
        name: str = "",
        *,
        exact_max: int = EXACT_MAX,
        buckets: int = BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        # The clock must be the one Condition.wait measures timeouts with: time.monotonic.
        self._clock = clock
        self._windows = make_windows(windows, exact_max, buckets)
        self._lock = threading.Lock()
        self._queue: deque[threading.Condition] = deque()  # waiters, FIFO; [0] is the head
        self._in_flight = 0
        self._granted = 0
        self._closed = False

    def acquire(self, key: str = "") -> Permit:
        """Block until every window has room, first come first served; a permit (its slot counts
        from now until released, then for the window). Raises :class:`LimiterClosed` once closed."""
        with self._lock:
            if self._closed:
                raise LimiterClosed(self.name)
            if not self._queue and self._room(self._clock()):
                return self._grant()
            me = threading.Condition(self._lock)
            self._queue.append(me)
            try:
                while True:
                    if self._closed:
                        raise LimiterClosed(self.name)
                    if self._queue[0] is not me:
                        me.wait()  # the head before us notifies us when it leaves
                        continue
                    now = self._clock()
                    if self._room(now):
                        return self._grant()
                    at = self._capacity_at(now)
                    me.wait(None if at is None else at - now)
            finally:  # granted, closed or interrupted: leave the queue, wake the next head
                self._leave(me)

    def close(self) -> None:
        """Refuse new acquires and wake every waiter (each raises :class:`LimiterClosed`)."""
        with self._lock:
            self._closed = True
            for waiter in self._queue:
                waiter.notify()

    @property
    def in_flight(self) -> int:
        """Permits granted and not yet released."""
        return self._in_flight

    @property
    def granted(self) -> int:
        """Permits granted since the start."""
        return self._granted

    def usage(self) -> tuple[WindowUsage, ...]:
        """How full each window is now (in flight plus releases still counting)."""
        with self._lock:
            now = self._clock()
            return tuple(
                WindowUsage(
                    w.limit, w.seconds, self._in_flight + w.pending(now), w.stored(), w.bucket
                )
                for w in self._windows
            )

    def __repr__(self) -> str:
        windows = ", ".join(f"{u.limit}/{u.seconds:g}s used {u.used}" for u in self.usage())
        return (
            f"ThreadSlidingWindowLimiter({self.name!r}, [{windows}], in_flight={self._in_flight}, "
            f"waiting={len(self._queue)}{', closed' if self._closed else ''})"
        )

    # -- internals (called with the lock held) ------------------------------------------------

    def _room(self, now: float) -> bool:
        in_flight = self._in_flight
        return all(in_flight + w.pending(now) < w.limit for w in self._windows)

    def _capacity_at(self, now: float) -> float | None:
        at = now
        for w in self._windows:
            if self._in_flight + w.pending(now) >= w.limit:
                expiry = w.first_expiry()
                if expiry is None:
                    return None
                at = max(at, expiry)
        return at

    def _grant(self) -> Permit:
        self._in_flight += 1
        self._granted += 1
        return _Permit(self._release)

    def _leave(self, me: threading.Condition) -> None:
        was_head = bool(self._queue) and self._queue[0] is me
        self._queue.remove(me)
        if was_head and self._queue:
            self._queue[0].notify()

    def _release(self) -> None:
        with self._lock:
            now = self._clock()  # read under the lock: release times stay monotonic per window
            self._in_flight -= 1
            for w in self._windows:
                w.add(now)
            if self._queue:
                self._queue[0].notify()


class ThreadConcurrencyLimit:
    """At most ``limit`` permits out at once (an endpoint's requests in flight)."""

    def __init__(self, limit: int, name: str = "") -> None:
        if limit < 1:
            raise ValueError(f"ThreadConcurrencyLimit needs limit >= 1, got {limit}")
        self.limit = limit
        self.name = name
        self._cond = threading.Condition()
        self._in_use = 0
        self._closed = False

    def acquire(self, key: str = "") -> Permit:
        """Block until fewer than ``limit`` permits are held; raises :class:`LimiterClosed` once
        closed."""
        with self._cond:
            while self._in_use >= self.limit and not self._closed:
                self._cond.wait()
            if self._closed:
                raise LimiterClosed(self.name)
            self._in_use += 1
        return _Permit(self._release)

    def close(self) -> None:
        """Refuse new acquires and wake every waiter."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _release(self) -> None:
        with self._cond:
            self._in_use -= 1
            self._cond.notify()

    def __repr__(self) -> str:
        return f"ThreadConcurrencyLimit({self.name!r}, in_use={self._in_use}/{self.limit})"


class ThreadLimits:
    """Several limits applied as one: acquired in order, released together in reverse. Put
    rate limits last, so a window slot is taken as close to sending as possible."""

    def __init__(self, limits: Sequence[ThreadLimit]) -> None:
        self.limits = tuple(limits)

    def acquire(self, key: str = "") -> Permit:
        """One permit of every limit, in order (all released if any acquire fails)."""
        held: list[Permit] = []
        try:
            for limit in self.limits:
                held.append(limit.acquire(key))
        except BaseException:
            Permits(held).release()
            raise
        return Permits(held)

    def close(self) -> None:
        """Close every limit, waking their waiters."""
        for limit in self.limits:
            limit.close()

    def __repr__(self) -> str:
        return f"ThreadLimits({list(self.limits)!r})"
