"""One endpoint at run time, for threads: walk a job's pages, retry, deliver records.

The blocking twin of ``asyncingest.engine.endpoint``. What a page means (parse, keys, parent fields,
child bindings, retry decisions) comes from ``core.records``; counters, dead letters and events
from ``state.ledger``; paging from ``core.pagination``. What is left here is how a thread waits: the
limiter blocks, backoff sleeps on the run's stop event (so a stopping run is not held up by a
long Retry-After), and the Parquet sink is shared under a lock. See docs/architecture.md,
steps 5-9.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from yarl import URL

from ..config.models import EndpointConfig, ForEach
from ..core.pagination import PaginationLoop, PaginatorFailed, paginator_for
from ..core.records import (
    Job,
    bind_children,
    copy_parent_fields,
    missing_key_reason,
    parse_page,
    split_by_key,
)
from ..core.request import Page, Record, Request, RequestTemplate, UnsafePathValue
from ..core.retry import Failure, FailureKind, RetryPolicy
from ..http.client import scrub_next
from ..limits.limiter import Permit
from ..sink.deadletter import DeadLetter, DeadLetters
from ..sink.parquet import ParquetSink
from ..state.ledger import EndpointLedger
from .http import SyncHttpClient
from .limiter import ThreadLimit

Submit = Callable[[str, Job], None]


class Aborted(Exception):
    """The run is stopping; the job is left unfinished."""


class SyncEndpoint:
    """One endpoint's pages, records and sink, shared by every pool thread."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        base_url: URL,
        client: SyncHttpClient,
        limits: ThreadLimit,
        policy: RetryPolicy,
        sink: ParquetSink,
        dead_letters: DeadLetters,
        ledger: EndpointLedger,
        stop: threading.Event,
        rng: random.Random,
        row_group_rows: int,
    ) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.base_url = base_url
        self.client = client
        self.limits = limits
        self.policy = policy
        self.ledger = ledger
        self.dead = LockedDeadLetters(dead_letters)
        self.stop = stop
        self.rng = rng  # random.Random's methods are atomic under the GIL
        self.numbers = itertools.count()  # this endpoint's job numbers, when it is a child
        self.writer = _Writer(sink, self.dead, ledger, row_group_rows)
        self.paginator = paginator_for(endpoint.pagination)
        self.template = RequestTemplate(base_url, endpoint)  # compiled once, filled per job
        self.children: list[tuple[SyncEndpoint, ForEach]] = []
        self._submit: Submit | None = None
        self._pk = endpoint.primary_key

    def link(self, children: list[SyncEndpoint], submit: Submit) -> None:
        """Make ``children`` the endpoints this one's records bind; ``submit`` queues their jobs."""
        self.children = [(c, c.endpoint.for_each) for c in children if c.endpoint.for_each]
        self._submit = submit

    def __repr__(self) -> str:
        return f"SyncEndpoint({self.name}, {self.ledger!r})"

    # -- one job ------------------------------------------------------------------------------

    def run_job(self, job: Job) -> None:
        """Walk every page of ``job``, delivering records as they come."""
        request: Request | None = job.resume
        if request is None:
            try:
                request = self.paginator.first(self.template.build(job.variables))
            except (UnsafePathValue, PaginatorFailed) as exc:  # the job cannot start
                self.dead.add(self.ledger.refused(job, str(exc)))
                return
        while request is not None:
            page = self._fetch_page(request, job)
            if page is None:
                return
            try:
                next_request = scrub_next(self.client.credentials, page, self.paginator.next(page))
            except PaginationLoop as exc:
                self._deliver(page.records, job)  # the page itself is good
                failure = Failure(FailureKind.WRONG_SHAPE, str(exc))
                self.dead.add(self.ledger.gave_up(page.request, job, failure, 1))
                return
            self._deliver(page.records, job)
            request = next_request

    def _acquire_hop(self) -> Permit:
        return self.limits.acquire(self.name)

    def _fetch_page(self, request: Request, job: Job) -> Page | None:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            t0 = time.monotonic()
            permit = self.limits.acquire(self.name)
            waited = time.monotonic() - t0
            # The client releases the permit, and takes a new one for each redirect hop.
            result = self.client.fetch(request, permit, self._acquire_hop)
            duration = time.monotonic() - t0 - waited
            if isinstance(result, Failure):
                outcome: Page | Failure = result
                nbytes = 0
            else:
                outcome = parse_page(
                    request, result.status, result.headers, result.body, self.endpoint
                )
                nbytes = len(result.body)
            self.ledger.attempted(
                request, attempt, result.status, nbytes, outcome, duration, waited
            )
            if isinstance(outcome, Page):
                return outcome
            elapsed = time.monotonic() - started
            decision = self.policy.decide(attempt, elapsed, outcome, self.rng)
            if not decision.retry:
                self.dead.add(self.ledger.gave_up(request, job, outcome, attempt, decision.reason))
                return None
            self.ledger.retrying(request, outcome, attempt, decision.wait)
            if self.stop.wait(decision.wait):  # time.sleep that a stopping run interrupts
                raise Aborted(self.name)

    # -- records ------------------------------------------------------------------------------

    def _deliver(self, records: list[Record], job: Job) -> None:
        copy_parent_fields(records, job.copy)
        if self._pk:
            records, unkeyed = split_by_key(records, self._pk)
            for r in unkeyed:
                self._reject(r, missing_key_reason(self._pk))
        self.ledger.received(len(records))
        if records:
            self.writer.add(records)
        if not self.children or not records:
            return
        assert self._submit is not None, "SyncEndpoint.link() was not called"
        for child, spec in self.children:
            jobs, unbound = bind_children(records, spec, child.name, child.numbers)
            for record, reason in unbound:
                self._reject(record, reason)
            child.ledger.jobs_submitted(len(jobs))
            for child_job in jobs:
                self._submit(child.name, child_job)
            child.ledger.jobs_queued(len(jobs))

    def _reject(self, record: Record, reason: str) -> None:
        self.ledger.rejected(reason)
        self.dead.add(DeadLetter.rejected_record(record, reason))

    def finish(self) -> None:
        """All jobs are done: write what is buffered, commit the last file, close the books."""
        self.writer.close()
        self.dead.close()
        self.ledger.finished(time.monotonic())


class LockedDeadLetters:
    """``DeadLetters`` shared by threads: one entry written at a time."""

    def __init__(self, dead: DeadLetters) -> None:
        self._dead = dead
        self._lock = threading.Lock()

    def add(self, letter: DeadLetter) -> None:
        """Write one dead letter (one thread at a time)."""
        with self._lock:
            self._dead.add(letter)

    def close(self) -> None:
        """Close the dead-letter file (one thread at a time)."""
        with self._lock:
            self._dead.close()


class _Writer:
    """Batches records into row groups for the endpoint's one ``ParquetSink``.

    Two locks: appending to the buffer is quick; writing a full batch holds the sink's lock
    (a sink is single-threaded) while other threads go on filling the next batch. Memory: at
    most one batch buffering plus one per thread waiting to write.
    """

    def __init__(
        self,
        sink: ParquetSink,
        dead: LockedDeadLetters,
        ledger: EndpointLedger,
        row_group_rows: int,
    ) -> None:
        self.sink = sink
        self.dead = dead
        self.ledger = ledger
        self.rows = row_group_rows
        self._buffer: list[Record] = []
        self._buffer_lock = threading.Lock()
        self._sink_lock = threading.Lock()

    def add(self, records: list[Record]) -> None:
        with self._buffer_lock:
            self._buffer.extend(records)
            if len(self._buffer) < self.rows:
                return
            batch, self._buffer = self._buffer, []
        self._write(batch)

    def _write(self, batch: list[Record]) -> None:
        with self._sink_lock:
            before = len(self.sink.files)
            rejected = self.sink.write(batch)
            committed = self._committed_since(before)
        for rej in rejected:
            self.ledger.rejected(rej.reason)
            self.dead.add(DeadLetter.rejected_record(rej.record, rej.reason))
        self.ledger.written(len(batch) - len(rejected))
        self.ledger.schema_noted(self.sink.dropped_fields, self.sink.json_fallbacks)
        self.ledger.committed(committed)

    def close(self) -> None:
        with self._buffer_lock:
            batch, self._buffer = self._buffer, []
        if batch:
            self._write(batch)
        with self._sink_lock:
            before = len(self.sink.files)
            self.sink.close()
            committed = self._committed_since(before)
        self.ledger.committed(committed)

    def abandon(self) -> None:
        """After a failure, once no thread writes: staging files go, committed files stay
        (the sink's own clean-up, as the async engine's writer does)."""
        with self._sink_lock:
            self.sink.abort()

    def _committed_since(self, before: int) -> list[Path]:
        return self.sink.files[before:]
