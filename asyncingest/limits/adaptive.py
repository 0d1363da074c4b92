"""Adaptive concurrency: how many requests an endpoint keeps in flight, found by AIMD.

Additive increase, multiplicative decrease, as TCP congestion control does it (RFC 5681;
Netflix's concurrency-limits applies it to services, https://github.com/Netflix/concurrency-limits):

* every answered request adds ``increase / limit``, so the limit grows by about ``increase`` per
  round trip, but only while the limit is what holds requests back (no growth when idle);
* a throttled answer (429, 503, a timeout: the engine decides) multiplies it by ``decrease``;
* latency rising above the baseline (a short EWMA above ``latency_tolerance`` times a long one,
  after ``warmup`` samples) multiplies it by ``latency_decrease``, a gentler cut;
* at most one cut per round trip: answers to requests sent before the last cut were caused by
  the old limit, so they cannot cut again (``observe(started=...)``).

The limit stays within ``[min_limit, max_limit]``; ``max_limit`` is the configured hard limit
and is never exceeded. :class:`AdaptiveConcurrency` is a :class:`~asyncingest.limits.limiter.Limit`,
so the engine composes it with the other limits (put it first, before the rate limits).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable

from .limiter import Permit

__all__ = ["AdaptiveConcurrency"]

_SHORT_ALPHA = 0.3  # EWMA weight of a new latency sample: recent latency
_LONG_ALPHA = 0.05  # baseline: follows a lasting change within some 50 samples


class _AdaptivePermit:
    __slots__ = ("_done", "_limit")

    def __init__(self, limit: AdaptiveConcurrency) -> None:
        self._limit = limit
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._limit._release()


class AdaptiveConcurrency:
    """An AIMD limit on requests in flight, between ``min_limit`` and ``max_limit`` (see the module
    docstring); a :class:`~asyncingest.limits.limiter.Limit`.
    """

    def __init__(
        self,
        max_limit: int,
        *,
        min_limit: int = 1,
        initial: int | None = None,
        increase: float = 1.0,
        decrease: float = 0.5,
        latency_decrease: float = 0.8,
        latency_tolerance: float = 2.0,
        warmup: int = 20,
        name: str = "",
        on_change: Callable[[int, str], None] | None = None,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        if not (0 < decrease < 1 and 0 < latency_decrease <= 1):
            raise ValueError("decrease and latency_decrease must be fractions in (0, 1)")
        if increase <= 0 or latency_tolerance <= 1:
            raise ValueError("need increase > 0 and latency_tolerance > 1")
        start = initial if initial is not None else min(max_limit, max(min_limit, 4))
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.increase = increase
        self.decrease = decrease
        self.latency_decrease = latency_decrease
        self.latency_tolerance = latency_tolerance
        self.warmup = warmup
        self.name = name
        self.on_change = on_change
        self._limit = float(min(max_limit, max(min_limit, start)))
        self._in_use = 0
        self._waiters: deque[asyncio.Future[_AdaptivePermit]] = deque()
        self._last_cut = -math.inf
        self._samples = 0
        self._short = 0.0
        self._long = 0.0

    @property
    def limit(self) -> int:
        """How many requests may be in flight now (the current, adapted limit)."""
        return int(self._limit)

    @property
    def in_use(self) -> int:
        """How many permits are held now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """How many callers wait for a permit."""
        return sum(1 for w in self._waiters if not w.done())

    @property
    def latency(self) -> tuple[float, float] | None:
        """(recent, baseline) latency EWMAs in seconds, once there are samples."""
        return (self._short, self._long) if self._samples else None

    def __repr__(self) -> str:
        lat = ""
        if self._samples:
            lat = f", latency {self._short * 1000:.0f} ms vs baseline {self._long * 1000:.0f} ms"
        return (
            f"AdaptiveConcurrency({self.name!r}, limit={self._limit:.2f} "
            f"[{self.min_limit}..{self.max_limit}], in_use={self._in_use}, "
            f"waiting={self.waiting}{lat})"
        )

    # -- the Limit protocol --------------------------------------------------------------------

    async def acquire(self, key: str = "") -> Permit:
        """A permit once fewer than :attr:`limit` are held (first come, first served); a waiter
        cancelled as it was granted gives its permit back."""
        if self._in_use < self.limit and not self._waiters:
            self._in_use += 1
            return _AdaptivePermit(self)
        waiter: asyncio.Future[_AdaptivePermit] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                waiter.result().release()  # granted as we were cancelled: give it back
            raise

    def _release(self) -> None:
        self._in_use -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiters and self._in_use < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_use += 1
                waiter.set_result(_AdaptivePermit(self))

    # -- feedback ------------------------------------------------------------------------------

    def observe(self, *, started: float, latency: float, throttled: bool) -> None:
        """One answered request: sent at monotonic ``started``, answered ``latency`` seconds
        later; ``throttled`` when the server said it is overloaded."""
        answered = started + latency
        if throttled:
            self._cut(self.decrease, started, answered, "throttled")
            return
        slow = self._sample(latency)
        if slow:
            self._cut(self.latency_decrease, started, answered, "latency rising")
        elif self._in_use + self.waiting + 1 >= self.limit:  # the limit is what holds us back
            self._set(self._limit + self.increase / self._limit, "no throttling")

    def _sample(self, latency: float) -> bool:
        if self._samples == 0:
            self._short = self._long = latency
        else:
            self._short += _SHORT_ALPHA * (latency - self._short)
            self._long += _LONG_ALPHA * (latency - self._long)
        self._samples += 1
        return self._samples > self.warmup and self._short > self.latency_tolerance * self._long

    def _cut(self, factor: float, started: float, answered: float, why: str) -> None:
        if started < self._last_cut:
            return  # sent under the old limit: that limit has been cut already
        self._last_cut = answered
        self._set(self._limit * factor, why)

    def _set(self, value: float, why: str) -> None:
        before = self.limit
        self._limit = min(float(self.max_limit), max(float(self.min_limit), value))
        after = self.limit
        if after != before:
            if after > before:
                self._dispatch()
            if self.on_change is not None:
                self.on_change(after, why)
