"""The referee: the server side of a strict sliding-window rate limit.

Each configured window ``(N, W)`` keeps a deque of arrival times (the server's monotonic clock,
read once per request) and holds the arrivals in ``(t - W, t]``. An arrival that finds any
window already holding N is a *violation*; it is counted per window.

Which arrivals count toward the windows: **the ones that are served.** With enforcement on, a
violating arrival is answered 429 and does *not* enter any window, so a client that hammers is
told precisely when budget returns (``Retry-After``) instead of being locked out for as long as
it keeps knocking, and every deque stays at most N long. With enforcement off (count only) every
arrival is served, so every arrival counts, and ``max_in_window`` shows how far over budget the
client went. Admin routes never reach the referee.

Cost per arrival: amortised O(1) per window (each time enters and leaves its deque once).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence


class SlidingWindowReferee:
    """Counts arrivals per sliding window; says whether (and for how long) to refuse one."""

    __slots__ = ("_arrivals", "enforce", "limits", "max_in_window", "violations")

    def __init__(self, limits: Sequence[tuple[int, float]], *, enforce: bool = True) -> None:
        self.limits: tuple[tuple[int, float], ...] = tuple(limits)
        self.enforce = enforce
        self._arrivals: list[deque[float]] = [deque() for _ in self.limits]
        self.violations: list[int] = [0] * len(self.limits)
        self.max_in_window: list[int] = [0] * len(self.limits)

    def arrive(self, now: float) -> float | None:
        """Record an arrival at ``now``. Returns None if it is served, else the seconds until
        every full window has room again (only when enforcing; count-only mode serves all)."""
        wait: float | None = None
        for i, (limit, seconds) in enumerate(self.limits):
            window = self._arrivals[i]
            horizon = now - seconds
            while window and window[0] <= horizon:
                window.popleft()
            held = len(window)
            if held >= limit:
                self.violations[i] += 1
                # Room returns when the arrival that keeps the count at `limit` leaves.
                room = window[held - limit] + seconds - now
                wait = room if wait is None or room > wait else wait
        if wait is not None and self.enforce:
            return wait
        for i, window in enumerate(self._arrivals):
            window.append(now)
            if len(window) > self.max_in_window[i]:
                self.max_in_window[i] = len(window)
        return None

    def in_window(self, now: float) -> list[int]:
        """How many served arrivals each window holds at ``now``."""
        return [
            sum(1 for t in window if t > now - seconds)
            for window, (_, seconds) in zip(self._arrivals, self.limits, strict=True)
        ]

    def reset_counters(self) -> None:
        """Zero violations and peaks. The windows keep their arrivals: they are facts of time."""
        self.violations = [0] * len(self.limits)
        self.max_in_window = [0] * len(self.limits)

    @staticmethod
    def retry_after_header(wait: float) -> str:
        """Whole seconds, rounded up, at least 1 (HTTP ``Retry-After`` has no fractions)."""
        return str(max(1, math.ceil(wait)))

    @property
    def total_violations(self) -> int:
        """Arrivals that broke any window, summed over the windows."""
        return sum(self.violations)

    def __repr__(self) -> str:
        windows = ", ".join(
            f"{n}/{w:g}s: held={len(q)} peak={peak} violations={v}"
            for (n, w), q, peak, v in zip(
                self.limits, self._arrivals, self.max_in_window, self.violations, strict=True
            )
        )
        mode = "enforce" if self.enforce else "count-only"
        return f"SlidingWindowReferee({mode}; {windows or 'no limits'})"
