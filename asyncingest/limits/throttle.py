"""Slowing the shared budget on the server's word: :class:`AdaptiveThrottle` decides, from a
response's :class:`~asyncingest.core.ratelimit_headers.RateHint` and status, whether the budget of
that API must grant nothing until some monotonic instant; the engine passes the instant to
``SlidingWindowLimiter.pause_until`` (or to a :class:`PauseGate` when the config declares no
windows). See docs/architecture.md, "requests" and "retries".

Two rules, both pausing the *whole* budget, not only the request that saw the answer:

1. **Throttled** (429, or 503 with ``Retry-After``): pause for what the server asked
   (``Retry-After``; else the reset of a spent quota; else ``default_retry_after``).
2. **Nearly spent** (a quota's ``remaining`` minus the requests already in flight, which the
   server has not counted yet, is at most ``reserve``): pause until the quota resets (or for
   its window when the server gives no reset time), *before* the server answers 429.

Pauses are capped at ``max_pause`` (a daily quota that is spent is then re-checked every
``max_pause`` seconds rather than waited out blindly). Like ``RetryPolicy``, the throttle is
arithmetic on its inputs and never sleeps, so every rule is tested without time passing.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from ..core.ratelimit_headers import RateHint
from .clock import Clock, TimerHandle
from .limiter import Permit

__all__ = ["AdaptiveThrottle", "Pause", "PauseGate"]


@dataclass(frozen=True, slots=True)
class Pause:
    """A pause of the shared budget: until when, for how long, why, and whether the server
    refused.
    """

    until: float  # monotonic instant (Clock.time()) before which nothing is granted
    seconds: float
    reason: str
    throttled: bool  # the server refused (429/503), rather than us stopping before it did


@dataclass(frozen=True, slots=True)
class AdaptiveThrottle:
    """Decides from a response's rate headers and status whether to pause the shared budget (see the
    module docstring).
    """

    reserve: int = 1
    default_retry_after: float = 1.0
    max_pause: float = 120.0
    throttle_statuses: frozenset[int] = frozenset({429})
    unavailable_statuses: frozenset[int] = frozenset({503})  # throttled only with Retry-After

    def __post_init__(self) -> None:
        if self.reserve < 0:
            raise ValueError(f"reserve must be >= 0, got {self.reserve}")
        for name in ("default_retry_after", "max_pause"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    def decide(
        self,
        hint: RateHint | None,
        *,
        status: int | None,
        now: float,
        in_flight: int = 0,
        paused_until: float | None = None,
    ) -> Pause | None:
        """The pause one response calls for, or None.

        ``now`` is the monotonic time the response arrived; ``in_flight`` the requests of the
        same budget still unanswered (``SlidingWindowLimiter.in_flight``); ``paused_until`` the
        pause already in force, so only a pause that extends it is returned.
        """
        pause = self._throttled(hint, status)
        if pause is None:
            pause = self._spent(hint, in_flight)
        if pause is None:
            return None
        seconds, reason, throttled = pause
        seconds = min(seconds, self.max_pause)
        until = now + seconds
        if seconds <= 0 or (paused_until is not None and until <= paused_until):
            return None
        return Pause(until, seconds, reason, throttled)

    def _throttled(self, hint: RateHint | None, status: int | None) -> _Raw | None:
        retry_after = hint.retry_after if hint is not None else None
        if status in self.unavailable_statuses and retry_after is not None:
            return retry_after, f"HTTP {status}, Retry-After {retry_after:g}s", True
        if status not in self.throttle_statuses:
            return None
        if retry_after is not None:
            return retry_after, f"HTTP {status}, Retry-After {retry_after:g}s", True
        if hint is not None and hint.exhausted:
            refill = _refill(hint)
            if refill is not None:
                return refill, f"HTTP {status}, {_describe(hint)}", True
        wait = self.default_retry_after
        return wait, f"HTTP {status} without Retry-After, {wait:g}s by default", True

    def _spent(self, hint: RateHint | None, in_flight: int) -> _Raw | None:
        if hint is None or hint.remaining is None:
            return None
        if hint.remaining - max(0, in_flight) > self.reserve:
            return None
        refill = _refill(hint)
        if refill is None:
            if not hint.exhausted:
                return None  # low, but no telling for how long: let the server say 429
            refill = self.default_retry_after
        ahead = f", {in_flight} in flight" if in_flight else ""
        return refill, f"{_describe(hint)}{ahead} (reserve {self.reserve})", False


_Raw = tuple[float, str, bool]


def _refill(hint: RateHint) -> float | None:
    return hint.reset_after if hint.reset_after is not None else hint.window


def _describe(hint: RateHint) -> str:
    of = f" of {hint.limit:,}" if hint.limit is not None else ""
    per = f" per {hint.window:g}s" if hint.window is not None else ""
    if hint.reset_after is not None:
        when = f"resets in {hint.reset_after:g}s"
    else:
        when = "no reset time, waiting a window" if hint.window is not None else "no reset time"
    return f"{hint.source}: {hint.remaining} remaining{of}{per}, {when}"


class _NoPermit:
    __slots__ = ()

    def release(self) -> None:
        pass


_NO_PERMIT = _NoPermit()


class PauseGate:
    """A :class:`~asyncingest.limits.limiter.Limit` that only pauses: for an API whose config
    declares no rate windows, so a 429 still has a shared budget to pause. Waits on one timer."""

    def __init__(self, clock: Clock, name: str = "") -> None:
        self.name = name
        self._clock = clock
        self._paused_until = -math.inf
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: TimerHandle | None = None

    def pause_until(self, when: float) -> None:
        """Grant nothing before monotonic time ``when``. Only ever extends the pause."""
        if when <= self._paused_until:
            return
        self._paused_until = when
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiters:
            self._timer = self._clock.call_at(when, self._wake)

    @property
    def paused_until(self) -> float | None:
        """The clock time the pause ends, or None when not paused."""
        return self._paused_until if self._paused_until > self._clock.time() else None

    def try_acquire(self, key: str = "") -> Permit | None:
        """A (no-op) permit at once when not paused, else None."""
        return _NO_PERMIT if self._clock.time() >= self._paused_until else None

    async def acquire(self, key: str = "") -> Permit:
        """A (no-op) permit once no pause is on, waiting on a timer (not a poll) while one is."""
        while self._clock.time() < self._paused_until:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            if self._timer is None:
                self._timer = self._clock.call_at(self._paused_until, self._wake)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return _NO_PERMIT

    def _wake(self) -> None:
        self._timer = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def __repr__(self) -> str:
        paused = self.paused_until
        state = f"paused for {paused - self._clock.time():g}s" if paused is not None else "open"
        return f"PauseGate({self.name!r}, {state}, waiting={len(self._waiters)})"
