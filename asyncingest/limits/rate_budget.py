"""The rate budget of an API, shareable by every pipeline that calls it: the :class:`RateBudget`
protocol the engine depends on, and :class:`Budget`, its in-process implementation (a Redis one,
for workers in several processes, is :mod:`asyncingest.limits.redis_budget`).

What a budget promises (see docs/architecture.md, "sharing a budget"):

* **Every window at once, strict as the server counts arrivals.** A slot is held from the grant
  until the permit is released (the response is over), then for the window's length: the proof
  in :mod:`asyncingest.limits.limiter` holds for every pipeline sharing the budget, because they
  all take their slots from the same windows.
* **Fair between pipelines.** Waiters are served round-robin between pipelines first, then between
  a pipeline's endpoints, FIFO within an endpoint. Two saturated pipelines each get about half,
  whatever their number of endpoints or workers: round-robin is the work-conserving form of an
  equal split (a pipeline that asks less leaves its turn to the other).
* **One pause for all.** A 429 or spent-quota header seen by any pipeline pauses the budget for
  all of them. The pause is given as a *duration* (``pause_for``), so a shared implementation
  applies it on its own clock (Redis ``TIME``) rather than on the caller's monotonic clock.

A :class:`Budget` may be made before any event loop runs (before ``asyncio.run``); it binds to
the loop that first uses it, and using it from another loop raises :class:`RuntimeError` (its
waiters are futures and its timer a callback of that loop: anything else would hang silently).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from ..config.models import RateWindow
from ..core.snapshot import WindowUsage
from .clock import BoundLoopClock, Clock
from .limiter import (
    BUCKETS,
    EXACT_MAX,
    KeyStats,
    Permit,
    SlidingWindowLimiter,
    make_windows,
)

__all__ = ["Budget", "BudgetPermit", "BudgetShare", "RateBudget"]


class BudgetPermit(Protocol):
    """A slot of a :class:`RateBudget`, held while the request is in flight."""

    def release(self) -> None:
        """The request is over (answered or failed): the slot counts for one more window length.
        Idempotent."""
        ...

    def give_back(self) -> None:
        """Nothing was sent (the grant raced a cancellation, or another limit said no): the slot
        is free again at once. Idempotent; a no-op after ``release``."""
        ...


class RateBudget(Protocol):
    """What the engine needs from an API's rate budget; :class:`Budget` (one process) and
    ``RedisBudget`` (many) implement it.

    ``key`` is the endpoint asking, ``pipeline`` the pipeline it belongs to: waiters are served
    round-robin between pipelines, then between endpoints (FIFO within one). Times are seconds
    from *now*, never instants: implementations may keep time on a clock the caller does not see.
    """

    @property
    def name(self) -> str:
        """A short name for events and logs (``"api"``)."""
        ...

    async def acquire(self, key: str = "", *, pipeline: str = "") -> BudgetPermit:
        """Wait until every window has room (and no pause is in force), then take a slot.
        Waiting never polls; a cancelled wait takes no slot."""
        ...

    def try_acquire(self, key: str = "", *, pipeline: str = "") -> BudgetPermit | None:
        """A slot at once, or None without waiting (also None when only I/O could tell)."""
        ...

    def pause_for(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` (a 429's Retry-After, a spent quota): for every
        pipeline sharing the budget. Only ever extends a pause in force."""
        ...

    def pause_left(self) -> float | None:
        """Seconds left of the pause in force, or None when not paused."""
        ...

    def usage(self) -> tuple[WindowUsage, ...]:
        """Each window's use now (as last seen, for a remote budget), in configured order."""
        ...

    @property
    def in_flight(self) -> int:
        """Slots granted and not yet released, by every pipeline sharing the budget (requests
        the server may not have counted yet)."""
        ...

    def time_until_capacity(self) -> float | None:
        """Seconds until a grant is possible (0.0: now), ignoring queued waiters; None while
        every slot of some full window is in flight (a release must come first)."""
        ...


class Budget:
    """The in-process :class:`RateBudget`: ``Budget(cfg.api.rate_limits)``.

    Share one between the pipelines of a process (``Engine(cfg, budget=b)``,
    ``asyncingest.run(cfg, budget=b)``) so that together they never exceed a window, each gets
    a fair share, and a 429 seen by one pauses all. With no windows it only pauses. ``clock``:
    the running loop's by default (tests pass a ``FakeClock``).
    """

    def __init__(
        self,
        rate_limits: Iterable[RateWindow | tuple[int, float]] = (),
        *,
        clock: Clock | None = None,
        name: str = "api",
        exact_max: int = EXACT_MAX,
        buckets: int = BUCKETS,
    ) -> None:
        self._name = name
        self._windows = [
            (w.requests, w.per_seconds) if isinstance(w, RateWindow) else (int(w[0]), float(w[1]))
            for w in rate_limits
        ]
        self._exact_max = exact_max
        self._buckets = buckets
        # Checked now, so a bad window fails where the budget is made, not in a running pipeline.
        self._unbound = make_windows(self._windows, exact_max, buckets, allow_none=True)
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core: SlidingWindowLimiter | None = None

    @property
    def name(self) -> str:
        """The budget's name in events and logs."""
        return self._name

    @property
    def windows(self) -> tuple[tuple[int, float], ...]:
        """The ``(limit, seconds)`` windows, as configured."""
        return tuple(self._windows)

    # -- the RateBudget protocol ---------------------------------------------------------------

    async def acquire(self, key: str = "", *, pipeline: str = "") -> BudgetPermit:
        """Wait for a slot in every window (round-robin between pipelines, then endpoints)."""
        return await self._bound().acquire(key, group=pipeline)

    def try_acquire(self, key: str = "", *, pipeline: str = "") -> BudgetPermit | None:
        """A slot at once if nobody waits and every window has room, else None."""
        return self._bound().try_acquire(key, group=pipeline)

    def pause_for(self, seconds: float) -> None:
        """Grant nothing for ``seconds``, to every pipeline (only ever extends a pause)."""
        self._bound().pause_for(seconds)

    def pause_left(self) -> float | None:
        """Seconds left of the pause in force, or None."""
        core = self._core
        if core is None or (until := core.paused_until) is None:
            return None
        return until - self._time()

    def usage(self) -> tuple[WindowUsage, ...]:
        """Each window's use now, in the order given."""
        if self._core is None:
            return tuple(WindowUsage(w.limit, w.seconds, 0, 0, w.bucket) for w in self._unbound)
        return self._core.usage()

    @property
    def in_flight(self) -> int:
        """Slots granted and not yet released, by every pipeline."""
        return self._core.in_flight if self._core is not None else 0

    def time_until_capacity(self) -> float | None:
        """Seconds until a grant is possible (0.0: now); None while a release must come first."""
        return self._core.time_until_capacity() if self._core is not None else 0.0

    # -- more to look at -----------------------------------------------------------------------

    @property
    def granted(self) -> int:
        """Slots granted since the budget was made (given-back ones not counted)."""
        return self._core.granted if self._core is not None else 0

    def stats(self) -> dict[str, KeyStats]:
        """Per ``pipeline/endpoint`` (``endpoint`` for pipeline ``""``): granted, seconds
        waited, waiting now."""
        return self._core.stats() if self._core is not None else {}

    def __repr__(self) -> str:
        windows = ", ".join(f"{u.limit}/{u.seconds:g}s used {u.used}" for u in self.usage())
        if self._core is None:
            return f"Budget({self._name!r}, [{windows}], not yet used)"
        paused = self.pause_left()
        waiting = ", ".join(f"{k}={s.waiting}" for k, s in self.stats().items() if s.waiting)
        return (
            f"Budget({self._name!r}, [{windows}], in_flight={self.in_flight}, "
            f"waiting=({waiting})"
            + (f", paused for {paused:g}s" if paused is not None else "")
            + ")"
        )

    # -- internals -----------------------------------------------------------------------------

    def _time(self) -> float:
        assert self._core is not None and self._clock is not None
        return self._clock.time()

    def _bound(self) -> SlidingWindowLimiter:
        """The limiter of the running loop: made on first use, a clear error from another."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            assert self._core is not None
            return self._core
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError(
                f"Budget {self._name!r} is used from two event loops: its waiters and timer "
                "belong to the loop that first used it. Share a Budget between pipelines of one "
                "loop; make one Budget per loop (per asyncio.run, per thread) otherwise"
            )
        return self._bind(loop)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> SlidingWindowLimiter:
        """First use, or a later ``asyncio.run`` once the first loop is closed: the windows keep
        what they counted (the default loops all tell ``time.monotonic()``)."""
        if self._clock is None or isinstance(self._clock, BoundLoopClock):
            self._clock = BoundLoopClock(loop)
        core = self._core
        if core is None:
            core = SlidingWindowLimiter(
                self._windows,
                self._clock,
                self._name,
                exact_max=self._exact_max,
                buckets=self._buckets,
                pause_only=True,
            )
        else:
            core.move_to(self._clock)
        self._core, self._loop = core, loop
        return core


class BudgetShare:
    """One pipeline's share of a :class:`RateBudget`, as a
    :class:`~asyncingest.limits.limiter.Limit` keyed by endpoint (what the engine puts in its
    :class:`~asyncingest.limits.limiter.Limits`)."""

    __slots__ = ("budget", "pipeline")

    def __init__(self, budget: RateBudget, pipeline: str) -> None:
        self.budget = budget
        self.pipeline = pipeline

    def try_acquire(self, key: str = "") -> Permit | None:
        return self.budget.try_acquire(key, pipeline=self.pipeline)

    async def acquire(self, key: str = "") -> Permit:
        return await self.budget.acquire(key, pipeline=self.pipeline)

    def __repr__(self) -> str:
        return f"BudgetShare({self.pipeline!r} of {self.budget!r})"
