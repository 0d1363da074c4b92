"""Slowing the shared budget on the server's word: :class:`AdaptiveThrottle` decides, from a
response's :class:`~asyncingest.core.ratelimit_headers.RateHint` and status, whether the budget of
that API must grant nothing for a while; the engine passes the pause's ``seconds`` to the API's
``RateBudget.pause_for`` (windows or not). See docs/architecture.md, "requests" and "retries".

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

import math
from dataclasses import dataclass

from ..core.ratelimit_headers import RateHint

__all__ = ["AdaptiveThrottle", "Pause"]


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
        same budget still unanswered (``RateBudget.in_flight``); ``paused_until`` the
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
