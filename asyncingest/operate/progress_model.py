"""What a person watching a run needs to know, per endpoint, counted from events.

:class:`ProgressModel` counts records as they are received (from each usable page's
``RequestFinished``; the Parquet writer takes them in row groups, so ``RecordsWritten`` lags
and is shown second), requests per second over the last few seconds (not since the start),
retries, 429s, errors, time waiting on the limits (a sum over requests, shown as the mean
per request), requests in flight, jobs
done against the jobs known (ids in the input file, or parent records seen so far) with an
ETA, and the breaker's state. Two optional sampling callbacks read live state when a display
renders: ``in_flight(endpoint)`` and ``budget()`` (each limiter's ``usage()``). The displays
are in ``operate/progress.py``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..core.events import (
    BreakerChanged,
    BudgetExhausted,
    EndpointFinished,
    EndpointStarted,
    Event,
    JobFinished,
    JobsQueued,
    RatePaused,
    RecordsExpected,
    RecordsRejected,
    RecordsWritten,
    RequestFailed,
    RequestFinished,
    RequestRetried,
    RequestStarted,
    RunFinished,
    RunStarted,
)
from ..core.result import RunResult
from ..core.snapshot import WindowUsage

__all__ = ["EndpointProgress", "Progress", "ProgressModel", "RateMeter"]

Budget = Callable[[], Mapping[str, Sequence[WindowUsage]]]


class RateMeter:
    """Events per second over the last ``window`` seconds, in ``buckets`` time buckets."""

    __slots__ = ("_buckets", "_n", "_width")

    def __init__(self, window: float, buckets: int = 20) -> None:
        self._width = window / buckets
        self._n = buckets
        self._buckets: deque[list[int]] = deque()  # [bucket index, count], oldest first

    def add(self, now: float, count: int = 1) -> None:
        i = int(now // self._width)
        if self._buckets and self._buckets[-1][0] == i:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([i, count])
        self._trim(i)

    def rate(self, now: float, since: float) -> float:
        i = int(now // self._width)
        self._trim(i)
        span = now - max(since, (i - self._n + 1) * self._width)
        return sum(c for _, c in self._buckets) / span if span > 0 else 0.0

    def _trim(self, i: int) -> None:
        while self._buckets and self._buckets[0][0] <= i - self._n:
            self._buckets.popleft()


@dataclass(slots=True)
class EndpointProgress:
    """One endpoint's figures as the display shows them, folded from the events."""

    name: str
    parent: str | None = None
    received: int = 0  # records on usable pages, as they arrive
    written: int = 0  # records handed to the Parquet writer (row group by row group)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    failed: int = 0
    rejected: int = 0
    waited: float = 0.0  # seconds, summed over requests (they wait side by side)
    started_requests: int = 0
    total_jobs: int | None = None
    jobs_queued: int = 0
    jobs_done: int = 0
    records_expected: int = 0
    breaker: str = "closed"
    breaker_opened: int = 0
    started: float | None = None
    finished: float | None = None
    request_rate: RateMeter = field(default_factory=lambda: RateMeter(5.0))
    job_rate: RateMeter = field(default_factory=lambda: RateMeter(60.0, 60))
    record_rate: RateMeter = field(default_factory=lambda: RateMeter(60.0, 60))


@dataclass(frozen=True, slots=True)
class Progress:
    """How far an endpoint is: done of total, in jobs or records, and whether the total is final."""

    done: int
    total: int
    unit: str  # "jobs" or "records"
    final: bool  # False while the total still grows (a child whose parent still runs)


class ProgressModel:
    """Per-endpoint counters fed by events; ``now`` is the clock rates and ETAs use."""

    def __init__(
        self,
        now: Callable[[], float] = time.monotonic,
        *,
        in_flight: Callable[[str], int] | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.now = now
        self.in_flight_sampler = in_flight
        self.budget = budget
        self.rows: dict[str, EndpointProgress] = {}
        self.run_id = ""
        self.limits: tuple[str, ...] = ()
        self.pause: tuple[str, float, str] | None = None  # limiter, until (now()), reason
        self.notices: list[str] = []  # budgets used up: when they return
        self.result: RunResult | None = None

    def row(self, name: str) -> EndpointProgress:
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = EndpointProgress(name)
        return row

    def __call__(self, event: Event) -> None:
        now = self.now()
        match event:
            case RequestFinished(endpoint=name):
                row = self.row(name)
                row.requests += 1
                row.waited += event.limiter_wait
                row.throttled += event.status == 429
                row.request_rate.add(now)
                if event.ok and event.records:
                    row.received += event.records
                    row.record_rate.add(now, event.records)
            case RequestStarted(endpoint=name):
                self.row(name).started_requests += 1
            case RecordsWritten(endpoint=name, count=n):
                self.row(name).written += n
            case RequestRetried(endpoint=name):
                self.row(name).retries += 1
            case RequestFailed(endpoint=name):
                self.row(name).failed += 1
            case RecordsRejected(endpoint=name, count=n):
                self.row(name).rejected += n
            case JobsQueued(endpoint=name, count=n):
                self.row(name).jobs_queued += n
            case JobFinished(endpoint=name):
                self.row(name).jobs_done += 1
                self.row(name).job_rate.add(now)
            case RecordsExpected(endpoint=name, count=n):
                self.row(name).records_expected += n
            case BreakerChanged(endpoint=name, state=state):
                self.row(name).breaker = state
                self.row(name).breaker_opened += state == "open"
            case RatePaused():
                self.pause = (event.limiter, now + event.seconds, event.reason)
            case BudgetExhausted(reason=reason):
                self.notices.append(reason)
            case EndpointStarted(endpoint=name):
                row = self.row(name)
                row.parent, row.total_jobs, row.started = event.parent, event.total_jobs, now
            case EndpointFinished(summary=s):
                self.row(s.name).finished = now
            case RunStarted():
                self.run_id, self.limits = event.run_id, event.rate_limits
                for name in event.endpoints:
                    self.row(name)
            case RunFinished(result=r):
                self.result = r

    # -- derived -------------------------------------------------------------------------------

    def rate(self, row: EndpointProgress) -> float:
        if row.started is None:
            return 0.0
        return row.request_rate.rate(row.finished or self.now(), row.started)

    def wait_per_request(self, row: EndpointProgress) -> float:
        """Mean seconds a request waited on the limits (rate windows, concurrency)."""
        return row.waited / row.requests if row.requests else 0.0

    def in_flight(self, row: EndpointProgress) -> int:
        if self.in_flight_sampler is not None:
            return self.in_flight_sampler(row.name)
        return max(0, row.started_requests - row.requests)

    def progress(self, row: EndpointProgress) -> Progress | None:
        if row.total_jobs is not None:
            return Progress(row.jobs_done, row.total_jobs, "jobs", True)
        if row.jobs_queued:
            parent = self.rows.get(row.parent) if row.parent else None
            final = row.finished is not None or (parent is not None and parent.finished is not None)
            return Progress(row.jobs_done, row.jobs_queued, "jobs", final)
        if row.records_expected:
            return Progress(row.received, row.records_expected, "records", True)
        return None

    def eta(self, row: EndpointProgress) -> float | None:
        """Seconds left at the recent pace, or None when there is no total or no pace yet."""
        p = self.progress(row)
        if p is None or row.started is None or row.finished is not None:
            return None
        meter = row.job_rate if p.unit == "jobs" else row.record_rate
        pace = meter.rate(self.now(), row.started)
        return max(0, p.total - p.done) / pace if pace > 0 else None

    def paused(self) -> tuple[str, float, str] | None:
        """(limiter, seconds left, reason) while a shared budget is paused."""
        if self.pause is None:
            return None
        limiter, until, reason = self.pause
        left = until - self.now()
        return (limiter, left, reason) if left > 0 else None
