"""One endpoint's books: its counters (``EndpointStats``) and the events that report them.

Every engine counts and reports the same facts the same way through this class, so an attempt,
a retry, a request that gave up, a refused record or a committed file looks identical in the
``RunResult`` and to event subscribers, whichever engine ran. Dead letters are *described*
here (:meth:`EndpointLedger.gave_up` returns the entry) but written by the engine, which
decides when: the async engine through its writer task, in checkpoint order; the thread-pool
engine at once.

No I/O, no waiting. Not thread-safe by itself: the async engine uses it from one event loop;
the thread-pool engine passes ``lock`` (a ``threading.Lock``), held for each call, so counters
stay exact and events leave one at a time per endpoint. See docs/architecture.md, steps 5-9.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from ..core.events import (
    BreakerChanged,
    Event,
    FileCommitted,
    JobsQueued,
    RecordsRejected,
    RecordsWritten,
    RequestFailed,
    RequestFinished,
    RequestRetried,
)
from ..core.records import Job
from ..core.request import Page, Request
from ..core.result import EndpointStats, EndpointSummary
from ..core.retry import Failure, FailureKind
from ..limits.breaker import Transition
from ..sink.deadletter import DeadLetter
from .checkpoint import request_to_json


class EndpointLedger:
    """Counters and events of one endpoint.

    ``redact`` removes the secret from any text (URLs, server messages) before it is kept or
    shown; ``emit`` hands an event to the subscribers.
    """

    def __init__(
        self,
        name: str,
        emit: Callable[[Event], None],
        redact: Callable[[str], str],
        *,
        lock: AbstractContextManager[Any] | None = None,
        listening: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.stats = EndpointStats(name)
        self._emit = emit
        self._redact = redact
        # Per-request events cost a URL rendering; skipped while nobody subscribes.
        self._listening = listening or (lambda: True)
        self._lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()

    def url(self, request: Request) -> str:
        """The request's URL for events and dead letters (the secret redacted)."""
        return self._redact(str(request.full_url))

    def summary(self) -> EndpointSummary:
        """A snapshot of the endpoint's counters (thread-safe)."""
        with self._lock:
            return self.stats.summary()

    # -- requests ------------------------------------------------------------------------------

    def attempted(
        self,
        request: Request,
        attempt: int,
        status: int | None,
        nbytes: int,
        outcome: Page | Failure,
        duration: float,
        waited: float,
    ) -> None:
        """One attempt is over: ``outcome`` is a usable page or why it is not."""
        event = None
        if self._listening():
            page = outcome if isinstance(outcome, Page) else None
            event = RequestFinished(
                self.name,
                request.method,
                self.url(request),
                status,
                attempt,
                page is not None,
                duration,
                waited,
                nbytes,
                len(page.records) if page is not None else 0,
                None if isinstance(outcome, Page) else self._redact(outcome.detail),
            )
        with self._lock:
            st = self.stats
            st.requests += 1
            st.limiter_wait += waited
            st.nbytes += nbytes
            if status is not None:
                st.statuses[status] += 1
            if event is not None:
                self._emit(event)

    def retrying(self, request: Request, failure: Failure, attempt: int, wait: float) -> None:
        """Count a retry of ``request`` after ``failure`` and emit :class:`RequestRetried` (``wait``
        seconds before the next attempt)."""
        event = RequestRetried(
            self.name,
            self.url(request),
            self._redact(failure.detail),
            attempt,
            wait,
            failure.status,
        )
        with self._lock:
            self.stats.retries += 1
            self._emit(event)

    def gave_up(
        self,
        request: Request,
        job: Job,
        failure: Failure,
        attempts: int,
        reason: str | None = None,
    ) -> DeadLetter:
        """The request failed for good: count it, tell the subscribers, and return its dead
        letter (URL and reason redacted)."""
        why = self._redact(reason or failure.detail)
        url = self.url(request)
        with self._lock:
            st = self.stats
            st.failed_requests += 1
            st.failures[failure.kind.value] += 1
            st.note_error(f"{url}: {why}")
            self._emit(RequestFailed(self.name, url, why, attempts, failure.status))
        return DeadLetter.failed_request(
            job=job.number,
            url=url,
            method=request.method,
            reason=why,
            attempts=attempts,
            status=failure.status,
            variables=job.variables,
            copy=job.copy,
            request=request_to_json(request),
        )

    def refused(self, job: Job, reason: str) -> DeadLetter:
        """A job was refused before any request (an unsafe value for its path): count it as a
        failed request of its own kind, tell the subscribers, and return its dead letter
        (reason redacted)."""
        why = self._redact(reason)
        kind = FailureKind.UNSAFE_PATH_VALUE.value
        with self._lock:
            st = self.stats
            st.failed_requests += 1
            st.failures[kind] += 1
            st.note_error(f"job {job.number}: {why}")
            self._emit(RequestFailed(self.name, f"job {job.number}", why, 0, None))
        return DeadLetter.refused_job(
            job=job.number, reason=why, variables=job.variables, copy=job.copy
        )

    # -- jobs and records ----------------------------------------------------------------------

    def jobs_submitted(self, n: int) -> None:
        """Count ``n`` jobs given to the endpoint."""
        with self._lock:
            self.stats.jobs += n

    def jobs_queued(self, n: int) -> None:
        """Emit :class:`JobsQueued` for ``n`` child jobs (nothing for 0)."""
        if n:
            with self._lock:
                self._emit(JobsQueued(self.name, n))

    def received(self, n: int) -> None:
        """Count ``n`` records received (before writing)."""
        with self._lock:
            self.stats.records_received += n

    def rejected(self, reason: str, n: int = 1) -> None:
        """``n`` records were refused for one ``reason`` (their dead letters are the engine's
        to write): one event, one lock, however many records."""
        with self._lock:
            self.stats.records_rejected += n
            self.stats.note_error(reason)
            self._emit(RecordsRejected(self.name, n, reason))

    def written(self, accepted: int) -> None:
        """``accepted`` records went into the sink."""
        with self._lock:
            self.stats.records_written += accepted
            if accepted:
                self._emit(RecordsWritten(self.name, accepted))

    def schema_noted(self, dropped: Mapping[str, int], json_fallbacks: Mapping[str, str]) -> None:
        """The sink's schema report so far: undeclared fields dropped (``only_declared``) and
        inferred columns that fell back to JSON text."""
        with self._lock:
            self.stats.dropped_fields = dict(dropped)
            self.stats.json_fallbacks = dict(json_fallbacks)

    def breaker_changed(self, t: Transition) -> None:
        """The endpoint's circuit breaker moved (counted for the run report, and reported)."""
        with self._lock:
            if t.state.value == "open":
                self.stats.breaker_opens += 1
            self._emit(
                BreakerChanged(self.name, t.state.value, t.previous.value, t.failures, t.cooldown)
            )

    def transformed(self, n: int) -> None:
        """``n`` records came out of the endpoint's transform and were written."""
        with self._lock:
            self.stats.records_transformed += n

    def committed(self, files: Sequence[Path]) -> None:
        """Parquet files were completed and are visible."""
        with self._lock:
            for path in files:
                self.stats.files.append(str(path))
                self._emit(FileCommitted(self.name, str(path)))

    # -- lifecycle -----------------------------------------------------------------------------

    def started(self, now: float) -> None:
        """Note when the endpoint started (monotonic seconds)."""
        with self._lock:
            self.stats.started = now

    def finished(self, now: float) -> None:
        """Note when the endpoint finished (monotonic seconds)."""
        with self._lock:
            self.stats.finished = now

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"EndpointLedger({self.name}, jobs={s.jobs}, requests={s.requests}, "
            f"records={s.records_written}, failed={s.failed_requests})"
        )
