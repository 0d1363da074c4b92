"""One endpoint at run time: a bounded job queue, a fixed set of workers, one Parquet writer.

A *job* is one walk of the endpoint (all its pages) for one binding: the root call, one
parent record, or one input id. Workers take jobs from a bounded queue, so a parent that
produces faster than its child consumes waits (backpressure) and memory holds only what is
in flight. For each page a worker: acquires the limits, fetches (retrying as the policy
says), extracts the records, hands them to the writer task and to each child's queue, then
asks the paginator for the next page. See docs/architecture.md, steps 4-8.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from yarl import URL

from ._budget import BudgetWatch
from ._checkpoint import Journal, request_to_json
from ._clock import Clock
from ._config import EndpointConfig, ForEach
from ._crashpoints import crash_point
from ._deadletter import DeadLetters
from ._events import (
    EventBus,
    JobsQueued,
    RecordsRejected,
    RequestFailed,
    RequestFinished,
    RequestRetried,
)
from ._http import Failure, HttpClient, Response
from ._limiter import Limit
from ._pagination import PaginationLoop, paginator_for
from ._request import Page, Record, Request, WrongShape, build_request, extract_records, lookup
from ._result import EndpointStats
from ._retry import FailureKind, Outcome, RetryPolicy, parse_retry_after
from ._sink import ParquetSink
from ._writer import PageDone, Token, Writer, dead_record, dead_request

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Job:
    """One walk: ``number`` identifies it in checkpoints (row, journal line, or 0 for a root)."""

    number: int
    variables: dict[str, Any]
    copy: dict[str, Any] = field(default_factory=dict)
    resume: Request | None = None  # continue a walk that stopped part way


class EndpointRunner:
    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        base_url: URL,
        client: HttpClient,
        limits: Limit,
        policy: RetryPolicy,
        sink: ParquetSink,
        dead_letters: DeadLetters,
        journal: Journal | None,
        events: EventBus,
        clock: Clock,
        workers: int,
        rng: random.Random,
        row_group_rows: int,
    ) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.base_url = base_url
        self.client = client
        self.limits = limits
        self.policy = policy
        self.events = events
        self.clock = clock
        self.n_workers = workers
        self.rng = rng
        self.journal = journal  # where this endpoint's own jobs are journaled (for_each)
        self.children: list[EndpointRunner] = []
        self.stats = EndpointStats(endpoint.name)
        self.paginator = paginator_for(endpoint.pagination)
        self.jobs: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=max(2, workers * 2))
        self.writer = Writer(self.name, sink, dead_letters, {}, events, self.stats, row_group_rows)
        self.in_flight = 0
        self.stopping = False  # graceful stop: finish the page in hand, start nothing new
        self.producers = 1  # who may still submit jobs; input closes when they are all done
        self.next_job = journal.lines if journal is not None else 0  # for_each numbering
        self._pk = endpoint.primary_key
        self._children_bindings: list[tuple[EndpointRunner, ForEach, Journal]] = []
        self._waiting: set[asyncio.Task[Any]] = set()  # workers waiting on limits or back-off
        self.budget: BudgetWatch | None = None

    def stop(self) -> None:
        """Graceful stop: requests in flight finish; waits for the limiter or a back-off end."""
        self.stopping = True
        for task in list(self._waiting):
            task.cancel("asyncingest: stopping")

    async def _interruptible(self, waiter: Coroutine[Any, Any, T]) -> T | None:
        """Await ``waiter`` unless a graceful stop interrupts it (then ``None``)."""
        if self.stopping:
            waiter.close()
            return None
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            return await waiter
        except asyncio.CancelledError:
            if self.stopping and task.cancelling() == 1:
                task.uncancel()
                return None
            raise
        finally:
            self._waiting.discard(task)

    def link(self, children: Sequence[EndpointRunner]) -> None:
        self.children = list(children)
        self._children_bindings = []
        for c in self.children:
            assert c.endpoint.for_each is not None and c.journal is not None
            self._children_bindings.append((c, c.endpoint.for_each, c.journal))
            self.writer.child_journals[c.name] = c.journal

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"EndpointRunner({self.name}, workers={self.n_workers}, in_flight={self.in_flight}, "
            f"queued={self.jobs.qsize()}, requests={s.requests}, records={s.records_written}, "
            f"failed={s.failed_requests}{', stopping' if self.stopping else ''})"
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run workers until the input is closed and drained, then finish the writer."""
        self.stats.started = self.clock.time()
        self.writer.start()
        assert self.writer.task is not None
        workers = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}")
            for i in range(self.n_workers)
        ]
        try:
            await asyncio.gather(*workers)
            self.writer.finish()
            await self.writer.task
        except BaseException:
            for t in [*workers, self.writer.task]:
                t.cancel()
            await asyncio.gather(*workers, self.writer.task, return_exceptions=True)
            raise
        finally:
            self.writer.dead.close()
            self.stats.finished = self.clock.time()

    async def submit(self, job: Job) -> None:
        self.stats.jobs += 1
        await self.jobs.put(job)

    async def producer_done(self) -> None:
        """One producer (a feeder, a backlog replay, the parent) will submit no more jobs."""
        self.producers -= 1
        if self.producers == 0:
            for _ in range(self.n_workers):
                await self.jobs.put(None)

    async def _worker(self) -> None:
        while True:
            job = await self.jobs.get()
            if job is None:
                return
            if self.stopping:
                continue  # drain without working: the job is in the input or a journal
            await self._walk(job)

    # ------------------------------------------------------------------ one job

    async def _walk(self, job: Job) -> None:
        request: Request | None = job.resume or self.paginator.first(
            build_request(self.base_url, self.endpoint, job.variables)
        )
        while request is not None:
            if self.stopping:
                return  # the checkpoint has this walk's last durable page
            page = await self._fetch_page(request, job)
            if page is None:
                return
            try:
                next_request = self.paginator.next(page)
            except PaginationLoop as exc:
                await self._deliver(page, job, None)
                failure = Failure(FailureKind.WRONG_SHAPE, str(exc))
                await self.writer.put(
                    PageDone(
                        [],
                        Token(job.number, None),
                        dead=[self._give_up(page.request, job, failure, 1)],
                    )
                )
                return
            crash_point("page")
            await self._deliver(page, job, next_request)
            request = next_request

    async def _fetch_page(self, request: Request, job: Job) -> Page | None:
        """The page, or ``None`` when the request gave up (already recorded) or we stop."""
        started = self.clock.time()
        attempt = 0
        while True:
            attempt += 1
            if self.budget is not None:
                self.budget.check(self.name)
            t0 = self.clock.time()
            permit = await self._interruptible(self.limits.acquire(self.name))
            if permit is None:
                return None  # stopping: the resumed run asks for this page again
            waited = self.clock.time() - t0
            self.in_flight += 1
            try:
                result = await self.client.fetch(request)
            finally:
                permit.release()
                self.in_flight -= 1
            duration = self.clock.time() - t0 - waited
            st = self.stats
            st.requests += 1
            st.limiter_wait += waited
            outcome = self._parse(request, result)
            status = result.status
            if status is not None:
                st.statuses[status] += 1
            nbytes = len(result.body) if isinstance(result, Response) else 0
            st.nbytes += nbytes
            page = outcome if isinstance(outcome, Page) else None
            self.events.emit(
                RequestFinished(
                    self.name,
                    request.method,
                    self.client.display_url(request),
                    status,
                    attempt,
                    page is not None,
                    duration,
                    waited,
                    nbytes,
                    len(page.records) if page is not None else 0,
                    None if isinstance(outcome, Page) else self.client.redact(outcome.detail),
                )
            )
            if isinstance(outcome, Page):
                return outcome
            failure = outcome
            retry_after = parse_retry_after(failure.retry_after, self.clock.wall())
            decision = self.policy.decide(
                attempt,
                self.clock.time() - started,
                Outcome(failure.kind, failure.status, retry_after, failure.detail),
                self.rng,
            )
            if not decision.retry:
                dead = self._give_up(request, job, failure, attempt, decision.reason)
                await self.writer.put(PageDone([], Token(job.number, None), dead=[dead]))
                return None
            st.retries += 1
            self.events.emit(
                RequestRetried(
                    self.name,
                    self.client.display_url(request),
                    self.client.redact(failure.detail),
                    attempt,
                    decision.wait,
                    failure.status,
                )
            )
            await self._interruptible(self.clock.sleep(decision.wait))
            if self.stopping:
                return None  # not recorded: the resumed run asks for this page again

    def _parse(self, request: Request, result: Response | Failure) -> Page | Failure:
        if isinstance(result, Failure):
            return result
        if not result.body.strip():
            body: Any = None
        else:
            try:
                body = orjson.loads(result.body)
            except orjson.JSONDecodeError as exc:
                return Failure(FailureKind.MALFORMED_JSON, f"malformed JSON: {exc}", result.status)
        try:
            records = extract_records(body, self.endpoint.records, self.endpoint.single_record)
        except WrongShape as exc:
            return Failure(FailureKind.WRONG_SHAPE, f"unexpected body: {exc}", result.status)
        return Page(request, result.status, result.headers, body, records)

    def _give_up(
        self, request: Request, job: Job, failure: Failure, attempts: int, reason: str | None = None
    ) -> Any:
        why = self.client.redact(reason or failure.detail)
        url = self.client.display_url(request)
        st = self.stats
        st.failed_requests += 1
        st.failures[failure.kind.value] += 1
        st.note_error(f"{url}: {why}")
        self.events.emit(RequestFailed(self.name, url, why, attempts, failure.status))
        return dead_request(
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

    # ------------------------------------------------------------------ records

    async def _deliver(self, page: Page, job: Job, next_request: Request | None) -> None:
        """Hand one page to the writer (records, child jobs, rejects, progress) in one item,
        then give the child jobs to the children's queues (waiting when they are full)."""
        records = page.records
        if job.copy:
            for r in records:
                for k, v in job.copy.items():
                    r.setdefault(k, v)
        dead: list[Callable[[DeadLetters], None]] = []
        if self._pk:
            records, rejected = self._check_keys(records)
            dead.extend(dead_record(r, why) for r, why in rejected)
        self.stats.records_received += len(records)
        # Take the writer slot first: numbering the child jobs and enqueueing the page must be
        # one synchronous step, so journal order equals job numbers (see _writer.py).
        await self.writer.slots.acquire()
        children: list[tuple[EndpointRunner, Journal, list[Job]]] = []
        for child, spec, journal in self._children_bindings:
            jobs = []
            for r in records:
                variables = {var: lookup(r, path) for var, path in spec.bind.items()}
                if None in variables.values():
                    missing = [spec.bind[var] for var, v in variables.items() if v is None]
                    why = f"no {missing} to bind for child endpoint '{child.name}'"
                    dead.append(dead_record(r, why))
                    self._count_reject(why)
                    continue
                copy = {k: lookup(r, p) for k, p in spec.copy_fields.items()}
                jobs.append(Job(child.next_job, variables, copy))
                child.next_job += 1
            if jobs:
                children.append((child, journal, jobs))
        self.writer.put_reserved(
            PageDone(
                records,
                Token(job.number, next_request),
                children=[(journal, jobs) for _, journal, jobs in children],
                dead=dead,
            )
        )
        for child, _, jobs in children:
            for j in jobs:
                await child.submit(j)
            self.events.emit(JobsQueued(child.name, len(jobs)))

    def _check_keys(self, records: list[Record]) -> tuple[list[Record], list[tuple[Record, str]]]:
        pk = self._pk
        good = [r for r in records if all(r.get(k) is not None for k in pk)]
        if len(good) == len(records):
            return records, []
        why = f"primary key {list(pk)} missing or null"
        bad = [(r, why) for r in records if any(r.get(k) is None for k in pk)]
        for _ in bad:
            self._count_reject(why)
        return good, bad

    def _count_reject(self, reason: str) -> None:
        self.stats.records_rejected += 1
        self.stats.note_error(reason)
        self.events.emit(RecordsRejected(self.name, 1, reason))
