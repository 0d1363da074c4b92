"""Noticing a used-up budget (a daily window, say) instead of sleeping silently for hours.

Before each request a runner asks :class:`BudgetWatch`; when a limiter's (or the shared
:class:`~asyncingest.limits.rate_budget.RateBudget`'s) next free slot is more than ``threshold``
seconds away, the watch emits one :class:`BudgetExhausted` event per
episode (the display says when the budget returns) and, with ``on_budget_exhausted: stop``,
asks the engine for a graceful stop so the run can be resumed when the budget is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..core.events import BudgetExhausted, EventBus
from .clock import Clock


class Watched(Protocol):
    """What a watch reads: a ``SlidingWindowLimiter`` or a ``RateBudget``."""

    @property
    def name(self) -> str: ...

    def time_until_capacity(self) -> float | None: ...


class BudgetWatch:
    """Watches the limiters before each request and reports (or stops on) a budget used up for
    longer than ``threshold`` seconds.
    """

    def __init__(
        self,
        limiters: Sequence[Watched],
        clock: Clock,
        events: EventBus,
        *,
        threshold: float,
        stop: Callable[[str], None] | None,
    ) -> None:
        self.limiters = list(limiters)
        self.clock = clock
        self.events = events
        self.threshold = threshold
        self.stop = stop
        self._reported_until = 0.0  # monotonic time the last reported episode ends

    def check(self, endpoint: str) -> None:
        """If a limiter's next slot is further away than the threshold, emit
        :class:`BudgetExhausted` for ``endpoint`` (once per pause) and, when given ``stop``, stop
        the run with the reason."""
        for limiter in self.limiters:
            wait = limiter.time_until_capacity()
            if wait is None or wait <= self.threshold:
                continue
            now = self.clock.time()
            if now + wait <= self._reported_until:
                return
            self._reported_until = now + wait
            resume_at = self.clock.wall() + wait
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(resume_at))
            reason = f"rate budget '{limiter.name}' is used up; the next request can go at {when}"
            self.events.emit(BudgetExhausted(endpoint, limiter.name, wait, resume_at, reason))
            if self.stop is not None:
                self.stop(reason)
            return

    def __repr__(self) -> str:
        return f"BudgetWatch({len(self.limiters)} limiters, threshold={self.threshold:g}s)"
