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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from yarl import URL

from ..config.models import EndpointConfig
from ..core.crashpoints import crash_point
from ..core.events import (
    EventBus,
    JobFinished,
    RecordsExpected,
    RequestFinished,
    RequestStarted,
)
from ..core.pagination import PaginationLoop, PaginatorFailed, paginator_for
from ..core.records import (
    Job,
    copy_parent_fields,
    missing_key_reason,
    parse_page,
    split_by_key,
)
from ..core.request import Page, Request, RequestTemplate, UnsafePathValue, lookup
from ..core.retry import Failure, FailureKind, RetryPolicy
from ..core.snapshot import EndpointSnapshot
from ..http.client import STOPPED, HttpClient, Response, scrub_next
from ..limits.breaker import CircuitOpen
from ..limits.budget import BudgetWatch
from ..limits.clock import Clock
from ..limits.limiter import Limit, Permit
from ..sink.batches import BatchSink
from ..sink.deadletter import DeadLetter, DeadLetters
from ..sink.parquet import ParquetSink
from ..state.checkpoint import Journal
from ..state.ledger import EndpointLedger
from ..state.progress import Token
from .channel import Channel
from .guards import EndpointGuards
from .writer import PageDone, Writer

T = TypeVar("T")


class EndpointRunner:
    """One endpoint at run time: its job channel, its worker coroutines (fetch, retry, page), its
    writer, and the children its records feed.
    """

    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        base_url: URL,
        client: HttpClient,
        limits: Limit,
        policy: RetryPolicy,
        sink: ParquetSink | BatchSink,
        dead_letters: DeadLetters,
        journal: Journal | None,
        events: EventBus,
        clock: Clock,
        workers: int,
        rng: random.Random,
        row_group_rows: int,
        files: Executor | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.base_url = base_url
        self.client = client
        self.limits = limits
        # The limits' synchronous fast path, looked up once (see limits.limiter.try_acquire).
        self._try_acquire: Callable[[str], Permit | None] | None = getattr(
            limits, "try_acquire", None
        )
        # Asked by the client for each redirect hop's own slot.
        self._acquire_hop = self._acquire_again
        # Links the API sends back may carry the secret; kept requests must not.
        self._credentials = client.credentials
        self.policy = policy
        self.events = events
        # Per-job and per-request events are built only while someone wants them.
        self._listening_jobs = events.listening_to(JobFinished)
        self._listening_starts = events.listening_to(RequestStarted)
        self.clock = clock
        self.n_workers = workers
        self.rng = rng
        self.journal = journal  # where this endpoint's own jobs are journaled (for_each)
        self.children: list[EndpointRunner] = []
        self.ledger = EndpointLedger(
            endpoint.name,
            events.emit,
            client.redact,
            listening=events.listening_to(RequestFinished),
        )
        self.stats = self.ledger.stats
        self.paginator = paginator_for(endpoint.pagination)
        self.template = RequestTemplate(base_url, endpoint)
        # Producers (a feeder, a parent's workers) refill it once it is down to half.
        self.jobs: Channel[Job | None] = Channel(maxsize=max(2, workers * 2), refill_at=workers)
        self.writer = Writer(
            self.name, sink, dead_letters, {}, self.ledger, row_group_rows, files=files
        )
        self.in_flight = 0
        self.started = False
        self.done = False  # its workers and writer have ended
        self.stopping = False  # graceful stop: finish the page in hand, start nothing new
        self.halted = False  # cancelled: drop the requests in flight too (halt)
        self.workers: list[asyncio.Task[None]] = []
        self.producers = 1  # who may still submit jobs; input closes when they are all done
        self._pk = endpoint.primary_key
        self._children_by_name: dict[str, EndpointRunner] = {}
        self._waiting: set[asyncio.Task[Any]] = set()  # workers waiting on limits or back-off
        self.budget: BudgetWatch | None = None
        self.guards: EndpointGuards | None = None
        # Run once its own walks are done, before its writer finishes (the engine's sweep of a
        # current table for for_each children with parents: all); not on a stop.
        self.before_finish: Callable[[], Awaitable[None]] | None = None
        pagination = endpoint.pagination
        self._total_path: str | None = getattr(pagination, "total_path", None)
        inc = endpoint.incremental
        # A token cursor: where each page's "changes since" token is (the writer keeps it).
        self._token_path = inc.token_path if inc is not None else None

    def stop(self) -> None:
        """Graceful stop: requests in flight finish; waits for the limiter or a back-off end."""
        self.stopping = True
        for task in list(self._waiting):
            task.cancel("asyncingest: stopping")

    def halt(self) -> None:
        """Stop at once (the run was cancelled): requests in flight and waits on the limits or a
        back-off are dropped (a resumed run asks for those pages again). The writer goes on, so
        the engine's last checkpoint can commit what it was handed; the engine ends it."""
        self.stopping = self.halted = True
        for task in self.workers:
            task.cancel("asyncingest: cancelled")

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
            if self.stopping and not self.halted and task.cancelling() == 1:
                task.uncancel()
                return None
            raise
        finally:
            self._waiting.discard(task)

    def link(self, children: Sequence[EndpointRunner]) -> None:
        """Make ``children`` the endpoints this one's records bind (``for_each``): the writer then
        numbers their jobs into each child's journal as it writes a page."""
        self.children = list(children)
        self._children_by_name = {c.name: c for c in self.children}
        for c in self.children:
            assert c.endpoint.for_each is not None and c.journal is not None
            self.writer.link_child(c.name, c.endpoint.for_each, c.journal)

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"EndpointRunner({self.name}, workers={self.n_workers}, in_flight={self.in_flight}, "
            f"queued={len(self.jobs)}, requests={s.requests}, records={s.records_written}, "
            f"failed={s.failed_requests}{', stopping' if self.stopping else ''})"
        )

    def snapshot(self) -> EndpointSnapshot:
        """This endpoint's figures now (O(1))."""
        s = self.stats
        return EndpointSnapshot(
            name=self.name,
            parent=self.endpoint.parent,
            in_flight=self.in_flight,
            queued=len(self.jobs),
            queue_size=self.jobs.maxsize,
            workers=self.n_workers,
            jobs=s.jobs,
            jobs_done=s.jobs_done,
            requests=s.requests,
            retries=s.retries,
            failures=s.failed_requests,
            throttled=s.statuses.get(429, 0),
            records_received=s.records_received,
            records_written=s.records_written,
            records_rejected=s.records_rejected,
            limiter_wait=s.limiter_wait,
            started=self.started,
            done=self.done,
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run workers until the input is closed and drained, then finish the writer."""
        if self.halted:
            return
        self.stats.started = self.clock.time()
        self.started = True
        self.writer.start()
        assert self.writer.task is not None
        workers = self.workers = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}")
            for i in range(self.n_workers)
        ]
        writer = self.writer.task
        all_workers = asyncio.gather(*workers)
        try:
            # A writer only ends on its own when it fails: then the workers may be waiting
            # for room in its inbox forever, so its error ends the endpoint at once.
            await asyncio.wait((all_workers, writer), return_when=asyncio.FIRST_COMPLETED)
            if writer.done():
                writer.result()  # raises the writer's own error
                raise RuntimeError(f"{self.name}: the writer ended before its input did")
            if self.halted:
                # Workers cancelled by halt(): the engine takes the writer's last barrier, then
                # ends it (and this task).
                await asyncio.gather(all_workers, return_exceptions=True)
                await writer
                return
            await all_workers
            if self.before_finish is not None and not self.stopping:
                await self.before_finish()
            self.writer.finish()
            await writer
        except BaseException:
            all_workers.cancel()
            writer.cancel()
            await asyncio.gather(all_workers, writer, return_exceptions=True)
            raise
        finally:
            self.writer.dead.close()
            self.stats.finished = self.clock.time()
            self.done = True

    async def submit_many(self, jobs: Sequence[Job]) -> int:
        """Queue ``jobs`` in order, as many at a time as there is room for; stops early on a
        graceful stop (the rest are still in the input or a journal). Returns how many."""
        queue, done, n = self.jobs, 0, len(jobs)
        while done < n and not self.stopping:
            if queue.full():
                await queue.wait_for_room()
                continue
            batch = jobs[done : done + queue.maxsize - len(queue)]
            self.ledger.jobs_submitted(len(batch))
            for job in batch:
                queue.put_nowait(job)
            done += len(batch)
        return done

    async def producer_done(self) -> None:
        """One producer (a feeder, a backlog replay, the parent) will submit no more jobs."""
        self.producers -= 1
        if self.producers == 0:
            for _ in range(self.n_workers):
                await self.jobs.put(None)

    async def _worker(self) -> None:
        jobs = self.jobs
        while True:
            job = jobs.pop() if jobs else await jobs.get()
            if job is None:
                return
            if self.stopping:
                if self.halted:
                    return
                continue  # drain without working: the job is in the input or a journal
            await self._walk(job)

    # ------------------------------------------------------------------ one job

    async def _walk(self, job: Job) -> None:
        request: Request | None = job.resume
        if request is None:
            try:
                request = self.paginator.first(self.template.build(job.variables))
            except (UnsafePathValue, PaginatorFailed) as exc:  # the job cannot start
                dead = self.ledger.refused(job, str(exc))
                await self.writer.put(PageDone([], Token(job.number, None), dead=[dead]))
                self.stats.jobs_done += 1
                self.events.emit(JobFinished(self.name, False, 0))
                return
        pages = 0
        while request is not None:
            if self.stopping:
                return  # the checkpoint has this walk's last durable page
            page = await self._fetch_page(request, job)
            if page is None:
                if not self.stopping:
                    self.stats.jobs_done += 1
                    self.events.emit(JobFinished(self.name, False, pages))
                return
            pages += 1
            if pages == 1 and self._total_path and job.resume is None:
                total = lookup(page.body, self._total_path)
                if isinstance(total, int) and not isinstance(total, bool):
                    self.events.emit(RecordsExpected(self.name, total))
            try:
                next_request = self.paginator.next(page)
                if self._credentials is not None:
                    next_request = scrub_next(self._credentials, page, next_request)
            except PaginationLoop as exc:
                await self._deliver(page, job, None)
                failure = Failure(FailureKind.WRONG_SHAPE, str(exc))
                dead = self._give_up(page.request, job, failure, 1)
                await self.writer.put(PageDone([], Token(job.number, None), dead=[dead]))
                self.stats.jobs_done += 1
                self.events.emit(JobFinished(self.name, False, pages))
                return
            crash_point("page")
            await self._deliver(page, job, next_request)
            request = next_request
        self.stats.jobs_done += 1
        if self._listening_jobs():
            self.events.emit(JobFinished(self.name, True, pages))

    async def _fetch_page(self, request: Request, job: Job) -> Page | None:
        """The page, or ``None`` when the request gave up (already recorded) or we stop."""
        time = self.clock.time
        started = time()
        attempt = 0
        guards = self.guards
        breaker = guards.breaker if guards is not None else None
        while True:
            attempt += 1
            if self.budget is not None:
                self.budget.check(self.name)
            ticket = breaker.try_pass() if breaker is not None else None
            if breaker is not None and ticket is None:
                assert guards is not None
                try:
                    ticket = await self._interruptible(
                        guards.admit(deadline=started + self.policy.max_time)
                    )
                except CircuitOpen as exc:
                    failure = Failure(FailureKind.CIRCUIT_OPEN, str(exc))
                    dead = self._give_up(request, job, failure, attempt - 1)
                    await self.writer.put(PageDone([], Token(job.number, None), dead=[dead]))
                    return None
                if ticket is None:
                    return None  # stopping
            t0 = time()
            permit = self._try_acquire(self.name) if self._try_acquire is not None else None
            if permit is not None:
                waited = 0.0
            else:
                permit = await self._interruptible(self.limits.acquire(self.name))
                if permit is None:
                    if guards is not None:
                        guards.abandoned(ticket)
                    return None  # stopping: the resumed run asks for this page again
                waited = time() - t0
            self.in_flight += 1
            if self._listening_starts():
                url = self.client.display_url(request)
                self.events.emit(RequestStarted(self.name, request.method, url, attempt))
            try:
                # The client releases the permit (and takes one per redirect hop).
                result = await self.client.fetch(request, permit, self._acquire_hop)
            except BaseException:
                if guards is not None:
                    guards.abandoned(ticket)
                raise
            finally:
                self.in_flight -= 1
            if result is STOPPED:
                if guards is not None:
                    guards.abandoned(ticket)
                return None  # stopping: the resumed run asks for this page again
            now = time()
            duration = now - t0 - waited
            outcome: Page | Failure
            if isinstance(result, Response):
                body = result.body
                outcome = parse_page(request, result.status, result.headers, body, self.endpoint)
                nbytes = len(body)
            else:
                outcome, nbytes = result, 0
            status = result.status
            self.ledger.attempted(request, attempt, status, nbytes, outcome, duration, waited)
            if guards is not None:
                guards.answered(
                    ticket,
                    sent=t0 + waited,
                    latency=duration,
                    status=status,
                    kind=None if isinstance(outcome, Page) else outcome.kind,
                    headers=result.headers,
                )
            if isinstance(outcome, Page):
                return outcome
            failure = outcome
            decision = self.policy.decide(attempt, now - started, failure, self.rng)
            if not decision.retry:
                dead = self._give_up(request, job, failure, attempt, decision.reason)
                await self.writer.put(PageDone([], Token(job.number, None), dead=[dead]))
                return None
            self.ledger.retrying(request, failure, attempt, decision.wait)
            await self._interruptible(self.clock.sleep(decision.wait))
            if self.stopping:
                return None  # not recorded: the resumed run asks for this page again

    async def _acquire_again(self) -> Permit | None:
        """A slot for one more request of this endpoint (a redirect hop), or None if stopping."""
        permit = self._try_acquire(self.name) if self._try_acquire is not None else None
        if permit is not None:
            return permit
        return await self._interruptible(self.limits.acquire(self.name))

    def _give_up(
        self, request: Request, job: Job, failure: Failure, attempts: int, reason: str | None = None
    ) -> DeadLetter:
        return self.ledger.gave_up(request, job, failure, attempts, reason)

    # ------------------------------------------------------------------ records

    async def _deliver(self, page: Page, job: Job, next_request: Request | None) -> None:
        """Hand one page to the writer (records, child jobs, rejects, progress) in one item,
        then give the child jobs to the children's queues (waiting when they are full)."""
        records = page.records
        if job.copy:
            copy_parent_fields(records, job.copy)
        dead: list[DeadLetter] = []
        if self._pk:
            records, unkeyed = split_by_key(records, self._pk)
            if unkeyed:
                why = missing_key_reason(self._pk)
                for r in unkeyed:
                    dead.append(DeadLetter.rejected_record(r, why))
                    self.ledger.rejected(why)
        self.ledger.received(len(records))
        mark = lookup(page.body, self._token_path) if self._token_path else None
        children = await self.writer.put_page(records, Token(job.number, next_request), dead, mark)
        for link, jobs in children:
            child = self._children_by_name[link.name]
            await child.submit_many(jobs)
            child.ledger.jobs_queued(len(jobs))
