"""Live counters of what the mock API saw and sent (``MockAPI.stats`` and ``GET /_stats``).

Plain integers, ``Counter``s and one bounded deque: a few dict updates per request.
Admin routes (``/_stats``, ``/_reset``) are never counted.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, NamedTuple

from .ratelimit import SlidingWindowReferee

LOG_SIZE = 10_000


class LogEntry(NamedTuple):
    """One finished request: arrival time (server monotonic clock, the loop's ``time()``),
    method, path (without query) and the status sent (200 for faults that break the body)."""

    time: float
    method: str
    path: str
    status: int


class MockStats:
    """Counters since start (or the last reset). Rate-limit figures come from the referee."""

    def __init__(self, referee: SlidingWindowReferee) -> None:
        self._referee = referee
        self.requests = 0
        """Arrivals (counted on arrival, before auth, the limit and faults)."""
        self.by_path: Counter[str] = Counter()
        """Arrivals per route template (``/v1/laps``, ``/partner/users/{user_id}``)."""
        self.by_status: Counter[int] = Counter()
        """Finished requests per status sent."""
        self.throttled = 0
        """429s the referee sent (``sent_429`` also counts ``status_429`` faults)."""
        self.faults: Counter[str] = Counter()
        self.auth_seen = 0
        """Requests that carried a credential (Authorization, X-API-Key or ``api_key=``)."""
        self.unauthorized = 0
        self.log: deque[LogEntry] = deque(maxlen=LOG_SIZE)

    def finish(self, time: float, method: str, path: str, status: int) -> None:
        """Record an answered request: its status counted, an entry in :attr:`log`."""
        self.by_status[status] += 1
        self.log.append(LogEntry(time, method, path, status))

    @property
    def sent_429(self) -> int:
        """How many answers were 429 (the referee's and injected ones)."""
        return self.by_status[429]

    @property
    def violations(self) -> int:
        """Arrivals that broke a rate window (0 for a client that keeps the limits)."""
        return self._referee.total_violations

    @property
    def violations_by_window(self) -> list[int]:
        """Violations per configured window, in the order of ``rate_limits``."""
        return list(self._referee.violations)

    @property
    def max_in_window(self) -> list[int]:
        """Peak arrivals held by each window, in ``settings.rate_limits`` order."""
        return list(self._referee.max_in_window)

    def reset(self) -> None:
        """Zero every counter and the log (the referee's windows keep their arrivals)."""
        self.requests = 0
        self.by_path.clear()
        self.by_status.clear()
        self.throttled = 0
        self.faults.clear()
        self.auth_seen = 0
        self.unauthorized = 0
        self.log.clear()
        self._referee.reset_counters()

    def to_dict(self, *, log: int = 0) -> dict[str, Any]:
        """JSON-ready counters; ``log`` > 0 adds the last ``log`` entries of the request log."""
        out: dict[str, Any] = {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "sent_429": self.sent_429,
            "throttled": self.throttled,
            "violations": self.violations,
            "windows": [
                {"limit": n, "seconds": w, "violations": v, "max_in_window": m}
                for (n, w), v, m in zip(
                    self._referee.limits,
                    self._referee.violations,
                    self._referee.max_in_window,
                    strict=True,
                )
            ],
            "faults": dict(self.faults),
            "auth_seen": self.auth_seen,
            "unauthorized": self.unauthorized,
            "log_size": len(self.log),
        }
        if log > 0:
            out["log"] = [list(e) for e in list(self.log)[-log:]]
        return out

    def __repr__(self) -> str:
        statuses = dict(sorted(self.by_status.items()))
        return (
            f"MockStats(requests={self.requests}, by_status={statuses}, "
            f"violations={self.violations}, max_in_window={self.max_in_window}, "
            f"faults={dict(self.faults)}, auth_seen={self.auth_seen})"
        )
