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

Given ``snapshot`` (``Pipeline.snapshot``), the model reads its counters from snapshots instead,
at the display's pace (:meth:`ProgressModel.refresh`), and wants only the events that say what
a snapshot cannot (``event_types``): the CLI's display then costs nothing per request (no
``RequestStarted``/``RequestFinished``/``JobFinished`` is even built for it). Rates then come
from the counters' trend between refreshes (:class:`Trend`).
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
from ..core.snapshot import Snapshot, WindowUsage

__all__ = ["EndpointProgress", "Progress", "ProgressModel", "RateMeter", "Trend"]

Budget = Callable[[], Mapping[str, Sequence[WindowUsage]]]

#: What a model fed by snapshots still needs events for: starts and ends, totals announced by
#: the API, the breaker, pauses and used-up budgets.
SNAPSHOT_EVENTS: frozenset[type[Event]] = frozenset(
    {
        RunStarted,
        RunFinished,
        EndpointStarted,
        EndpointFinished,
        RecordsExpected,
        BreakerChanged,
        RatePaused,
        BudgetExhausted,
    }
)


class RateMeter:
    """Events per second over the last ``window`` seconds, in ``buckets`` time buckets."""

    __slots__ = ("_buckets", "_n", "_width")

    def __init__(self, window: float, buckets: int = 20) -> None:
        self._width = window / buckets
        self._n = buckets
        self._buckets: deque[list[int]] = deque()  # [bucket index, count], oldest first

    def add(self, now: float, count: int = 1) -> None:
        """Count ``count`` events at time ``now``."""
        i = int(now // self._width)
        if self._buckets and self._buckets[-1][0] == i:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([i, count])
        self._trim(i)

    def rate(self, now: float, since: float) -> float:
        """Events per second over the last ``window`` seconds before ``now``, not counting time
        before ``since``."""
        i = int(now // self._width)
        self._trim(i)
        span = now - max(since, (i - self._n + 1) * self._width)
        return sum(c for _, c in self._buckets) / span if span > 0 else 0.0

    def _trim(self, i: int) -> None:
        while self._buckets and self._buckets[0][0] <= i - self._n:
            self._buckets.popleft()


class Trend:
    """The rate of a growing counter over the last ``window`` seconds, from samples of it (one
    per display refresh): the change since the newest sample at least ``window`` old (or the
    oldest), per second."""

    __slots__ = ("_samples", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> None:
        samples = self._samples
        samples.append((now, value))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self._samples[0], self._samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0

    def __bool__(self) -> bool:
        return bool(self._samples)


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
    in_flight: int = 0  # from the last snapshot
    # From snapshots: the counters' trends (rates between refreshes).
    request_trend: Trend = field(default_factory=lambda: Trend(5.0))
    job_trend: Trend = field(default_factory=lambda: Trend(60.0))
    record_trend: Trend = field(default_factory=lambda: Trend(60.0))


@dataclass(frozen=True, slots=True)
class Progress:
    """How far an endpoint is: done of total, in jobs or records, and whether the total is final."""

    done: int
    total: int
    unit: str  # "jobs" or "records"
    final: bool  # False while the total still grows (a child whose parent still runs)


class ProgressModel:
    """Per-endpoint counters fed by events, or by ``snapshot()`` at each :meth:`refresh` (then
    only the events in ``event_types`` are needed); ``now`` is the clock rates and ETAs use."""

    def __init__(
        self,
        now: Callable[[], float] = time.monotonic,
        *,
        in_flight: Callable[[str], int] | None = None,
        budget: Budget | None = None,
        snapshot: Callable[[], Snapshot] | None = None,
    ) -> None:
        self.now = now
        self.in_flight_sampler = in_flight
        self.snapshot = snapshot
        self._windows: Mapping[str, Sequence[WindowUsage]] = {}
        if budget is None and snapshot is not None:
            budget = self._last_windows
        self.budget = budget
        self.rows: dict[str, EndpointProgress] = {}
        self.run_id = ""
        self.limits: tuple[str, ...] = ()
        self.pause: tuple[str, float, str] | None = None  # limiter, until (now()), reason
        self.notices: list[str] = []  # budgets used up: when they return
        self.result: RunResult | None = None

    @property
    def event_types(self) -> frozenset[type[Event]] | None:
        """The events this model needs (None: all of them, when it counts from events)."""
        return SNAPSHOT_EVENTS if self.snapshot is not None else None

    def refresh(self) -> None:
        """Read the counters from a new snapshot (a display calls this before it renders); does
        nothing without a ``snapshot`` source."""
        if self.snapshot is None:
            return
        snap = self.snapshot()
        self._windows = snap.windows
        now = self.now()
        for e in snap.endpoints:
            row = self.row(e.name)
            row.requests, row.retries, row.throttled = e.requests, e.retries, e.throttled
            row.failed, row.rejected, row.waited = e.failures, e.records_rejected, e.limiter_wait
            row.received, row.written = e.records_received, e.records_written
            row.jobs_queued, row.jobs_done, row.in_flight = e.jobs, e.jobs_done, e.in_flight
            if row.started is None:
                continue
            for trend, value in (
                (row.request_trend, e.requests),
                (row.job_trend, e.jobs_done),
                (row.record_trend, e.records_received),
            ):
                if not trend:
                    trend.add(row.started, 0)
                trend.add(row.finished or now, value)

    def _last_windows(self) -> Mapping[str, Sequence[WindowUsage]]:
        return self._windows

    def row(self, name: str) -> EndpointProgress:
        """The row of endpoint ``name`` (made empty on first use)."""
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
        """The endpoint's recent requests per second (0 before it starts; fixed once it ends)."""
        if row.started is None:
            return 0.0
        if self.snapshot is not None:
            return row.request_trend.rate()
        return row.request_rate.rate(row.finished or self.now(), row.started)

    def wait_per_request(self, row: EndpointProgress) -> float:
        """Mean seconds a request waited on the limits (rate windows, concurrency)."""
        return row.waited / row.requests if row.requests else 0.0

    def in_flight(self, row: EndpointProgress) -> int:
        """Requests of the endpoint in flight now: from the engine's sampler if attached, else
        started minus answered."""
        if self.in_flight_sampler is not None:
            return self.in_flight_sampler(row.name)
        if self.snapshot is not None:
            return row.in_flight
        return max(0, row.started_requests - row.requests)

    def progress(self, row: EndpointProgress) -> Progress | None:
        """How far the endpoint is: jobs of a known total, jobs queued so far, or records of an
        announced total; None when nothing says."""
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
        if self.snapshot is not None:
            pace = (row.job_trend if p.unit == "jobs" else row.record_trend).rate()
        else:
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
