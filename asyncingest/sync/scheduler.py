"""Work for one pool of threads: a bounded job queue per endpoint, and who finishes when.

Deadlock-free bounded handoff
-----------------------------
The async engine gives each endpoint its own worker coroutines, so a parent blocked on a full
child queue always has child workers draining it. A thread pool shared by all endpoints has no
such guarantee: if every thread runs a parent job and blocks putting child jobs into a full
queue, nobody is left to drain it. So a *worker* never blocks on a full queue: it runs the
overflowing job itself, inline, then carries on with its own (caller-runs, as in Java's
``CallerRunsPolicy``). Threads block only on things that always come back: an empty queue, a
limiter slot, a short lock. Memory stays bounded: each queue holds at most ``capacity`` jobs,
and inline runs nest at most as deep as the endpoint tree (each level holds one page).

Only the feeders of root endpoints (one id after another from an input file; they are not pool
threads) block on a full queue, so a million ids cost one queue, not a million futures.

Which job next
--------------
Children first: a free thread takes from the deepest endpoint with work, so parents never run
far ahead of their children. An endpoint with ``limit`` jobs running (its ``concurrency``) is
skipped, so one endpoint cannot take every thread while others wait; inline runs count
towards it too, but are never refused.

Finishing
---------
An endpoint is done when its input is closed (roots: their feeder is through; others: their
parent is done) and none of its jobs is queued or running. ``on_done`` is then called once,
outside the lock, by whichever thread got it there; it typically closes the endpoint's sink and
the inputs of its children.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..core.records import Job


class SchedulerStopped(Exception):
    """The run is stopping; no more jobs are taken or queued."""


@dataclass(eq=False)
class _Lane:
    name: str
    depth: int
    limit: int  # jobs of this endpoint running at once (taken from the queue)
    jobs: deque[Job] = field(default_factory=deque)
    running: int = 0
    outstanding: int = 0  # queued + running (including inline runs)
    closed: bool = False
    done: bool = False
    peak: int = 0  # most jobs ever queued at once
    inline: int = 0  # jobs run by their producer because the queue was full


class Scheduler:
    """Per-endpoint bounded queues served by one pool of threads.

    ``lanes``: ``(endpoint, depth, concurrency)`` for every endpoint. ``run_job(endpoint, job)``
    does the work; ``on_done(endpoint)`` is told when an endpoint has finished.
    """

    def __init__(
        self,
        lanes: Sequence[tuple[str, int, int]],
        capacity: int,
        run_job: Callable[[str, Job], None],
        on_done: Callable[[str], None],
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._run_job = run_job
        self._on_done = on_done
        self._lanes = {name: _Lane(name, depth, limit) for name, depth, limit in lanes}
        # children first: deepest lanes first, then config order (sorted is stable)
        self._by_priority = sorted(self._lanes.values(), key=lambda lane: -lane.depth)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers wait here for a job
        self._room = threading.Condition(self._lock)  # feeders wait here for queue space
        self._pending = len(self._lanes)  # endpoints not done yet
        self._stopped = False

    # -- the pool's side ----------------------------------------------------------------------

    def work(self) -> None:
        """A worker thread's loop: take jobs and run them until every endpoint is done."""
        while (taken := self._take()) is not None:
            self._execute(*taken)

    def _take(self) -> tuple[_Lane, Job] | None:
        with self._lock:
            while True:
                if self._stopped or not self._pending:
                    return None
                for lane in self._by_priority:
                    if lane.jobs and lane.running < lane.limit:
                        if len(lane.jobs) == self.capacity:
                            self._room.notify_all()
                        lane.running += 1
                        return lane, lane.jobs.popleft()
                self._work.wait()

    def _execute(self, lane: _Lane, job: Job) -> None:
        try:
            self._run_job(lane.name, job)
        finally:
            with self._lock:
                lane.running -= 1
                lane.outstanding -= 1
                if any(other.jobs for other in self._by_priority):
                    self._work.notify()  # a job may have become takeable (lane limit)
                finished = self._check_done(lane)
            if finished:
                self._finish(lane)

    def submit(self, endpoint: str, job: Job) -> None:
        """From a worker thread: queue ``job``, or run it here if the queue is full."""
        lane = self._lanes[endpoint]
        with self._lock:
            if self._stopped:
                raise SchedulerStopped
            lane.outstanding += 1
            if len(lane.jobs) < self.capacity:
                self._queue(lane, job)
                return
            lane.running += 1
            lane.inline += 1
        self._execute(lane, job)  # caller runs: never wait on a queue only workers drain

    # -- the feeders' side --------------------------------------------------------------------

    def feed(self, endpoint: str, job: Job) -> None:
        """From a feeder (not a pool thread): queue ``job``, waiting while the queue is full."""
        lane = self._lanes[endpoint]
        with self._lock:
            while len(lane.jobs) >= self.capacity and not self._stopped:
                self._room.wait()
            if self._stopped:
                raise SchedulerStopped
            lane.outstanding += 1
            self._queue(lane, job)

    def close_input(self, endpoint: str) -> None:
        """No more jobs will come for ``endpoint``; it finishes once its work is done."""
        lane = self._lanes[endpoint]
        with self._lock:
            lane.closed = True
            finished = self._check_done(lane)
        if finished:
            self._finish(lane)

    def stop(self) -> None:
        """Stop handing out jobs; wake every waiting worker and feeder."""
        with self._lock:
            self._stopped = True
            self._work.notify_all()
            self._room.notify_all()

    # -- state --------------------------------------------------------------------------------

    def peak_queued(self, endpoint: str) -> int:
        """The most jobs of ``endpoint`` ever queued at once (tests check the bound)."""
        return self._lanes[endpoint].peak

    def run_inline(self, endpoint: str) -> int:
        """How many of ``endpoint``'s jobs met a full queue and ran in their producer."""
        return self._lanes[endpoint].inline

    def __repr__(self) -> str:
        lanes = ", ".join(
            f"{lane.name}: queued={len(lane.jobs)} running={lane.running} inline={lane.inline}"
            + (" done" if lane.done else "")
            for lane in self._lanes.values()
        )
        return f"Scheduler(capacity={self.capacity}, {lanes}{', stopped' * self._stopped})"

    # -- internals ----------------------------------------------------------------------------

    def _queue(self, lane: _Lane, job: Job) -> None:  # lock held
        lane.jobs.append(job)
        lane.peak = max(lane.peak, len(lane.jobs))
        self._work.notify()

    def _check_done(self, lane: _Lane) -> bool:  # lock held
        if lane.done or not lane.closed or lane.outstanding:
            return False
        lane.done = True
        return True

    def _finish(self, lane: _Lane) -> None:
        try:
            self._on_done(lane.name)
        finally:
            with self._lock:
                self._pending -= 1
                if not self._pending:
                    self._work.notify_all()
