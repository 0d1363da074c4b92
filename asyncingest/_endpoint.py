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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from yarl import URL

from ._clock import Clock
from ._config import EndpointConfig, ForEach
from ._deadletter import DeadLetters
from ._events import (
    EventBus,
    FileCommitted,
    JobsQueued,
    RecordsRejected,
    RecordsWritten,
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

_WRITE_QUEUE_BATCHES = 64


@dataclass(frozen=True, slots=True)
class Job:
    variables: dict[str, Any]
    copy: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Attempted:
    failure: Failure
    attempts: int


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
        self.sink = sink
        self.dead = dead_letters
        self.events = events
        self.clock = clock
        self.n_workers = workers
        self.rng = rng
        self.row_group_rows = row_group_rows
        self.children: list[EndpointRunner] = []
        self.stats = EndpointStats(endpoint.name)
        self.paginator = paginator_for(endpoint.pagination)
        self.jobs: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=max(2, workers * 2))
        self.writes: asyncio.Queue[list[Record] | None] = asyncio.Queue(_WRITE_QUEUE_BATCHES)
        self.in_flight = 0
        self._pk = endpoint.primary_key
        self._children_bindings: list[tuple[EndpointRunner, ForEach]] = []

    def link(self, children: Sequence[EndpointRunner]) -> None:
        self.children = list(children)
        self._children_bindings = [
            (c, c.endpoint.for_each) for c in self.children if c.endpoint.for_each is not None
        ]

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"EndpointRunner({self.name}, workers={self.n_workers}, in_flight={self.in_flight}, "
            f"queued={self.jobs.qsize()}, requests={s.requests}, records={s.records_written}, "
            f"failed={s.failed_requests})"
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run workers until the input is closed and drained, then finish the sink."""
        self.stats.started = self.clock.time()
        writer = asyncio.create_task(self._writer(), name=f"{self.name}-writer")
        workers = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}")
            for i in range(self.n_workers)
        ]
        try:
            await asyncio.gather(*workers)
            await self.writes.put(None)
            await writer
        except BaseException:
            for t in [*workers, writer]:
                t.cancel()
            await asyncio.gather(*workers, writer, return_exceptions=True)
            raise
        finally:
            self.dead.close()
            self.stats.finished = self.clock.time()

    async def submit(self, job: Job) -> None:
        self.stats.jobs += 1
        await self.jobs.put(job)

    async def close_input(self) -> None:
        for _ in range(self.n_workers):
            await self.jobs.put(None)

    async def _worker(self) -> None:
        while True:
            job = await self.jobs.get()
            if job is None:
                return
            await self._walk(job)

    # ------------------------------------------------------------------ one job

    async def _walk(self, job: Job) -> None:
        request: Request | None = self.paginator.first(
            build_request(self.base_url, self.endpoint, job.variables)
        )
        while request is not None:
            page = await self._fetch_page(request, job)
            if page is None:
                return
            if page.records:
                await self._deliver(page.records, job)
            try:
                request = self.paginator.next(page)
            except PaginationLoop as exc:
                self._give_up(page.request, job, Failure(FailureKind.WRONG_SHAPE, str(exc)), 1)
                return

    async def _fetch_page(self, request: Request, job: Job) -> Page | None:
        started = self.clock.time()
        attempt = 0
        while True:
            attempt += 1
            t0 = self.clock.time()
            permit = await self.limits.acquire(self.name)
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
            if isinstance(result, Response):
                st.nbytes += len(result.body)
            ok = isinstance(outcome, Page)
            self.events.emit(
                RequestFinished(
                    self.name,
                    request.method,
                    self.client.display_url(request),
                    status,
                    attempt,
                    ok,
                    duration,
                    waited,
                    len(result.body) if isinstance(result, Response) else 0,
                    len(outcome.records) if isinstance(outcome, Page) else 0,
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
                self._give_up(request, job, failure, attempt, decision.reason)
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
            await self.clock.sleep(decision.wait)

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
    ) -> None:
        why = self.client.redact(reason or failure.detail)
        url = self.client.display_url(request)
        st = self.stats
        st.failed_requests += 1
        st.failures[failure.kind.value] += 1
        st.note_error(f"{url}: {why}")
        self.dead.request_failed(
            url=url,
            method=request.method,
            reason=why,
            attempts=attempts,
            status=failure.status,
            variables=job.variables,
            body=request.json_body,
        )
        self.events.emit(RequestFailed(self.name, url, why, attempts, failure.status))

    # ------------------------------------------------------------------ records

    async def _deliver(self, records: list[Record], job: Job) -> None:
        if job.copy:
            for r in records:
                for k, v in job.copy.items():
                    r.setdefault(k, v)
        if self._pk:
            records = self._check_keys(records)
        self.stats.records_received += len(records)
        await self.writes.put(records)
        for child, spec in self._children_bindings:
            queued = 0
            for r in records:
                variables = {var: lookup(r, fieldpath) for var, fieldpath in spec.bind.items()}
                if None in variables.values():
                    missing = [spec.bind[var] for var, v in variables.items() if v is None]
                    child.reject_binding(r, f"parent record has no {missing} to bind")
                    continue
                copy = {k: lookup(r, p) for k, p in spec.copy_fields.items()}
                await child.submit(Job(variables, copy))
                queued += 1
            if queued:
                self.events.emit(JobsQueued(child.name, queued))

    def _check_keys(self, records: list[Record]) -> list[Record]:
        good = [r for r in records if all(r.get(k) is not None for k in self._pk)]
        if len(good) != len(records):
            for r in records:
                if any(r.get(k) is None for k in self._pk):
                    self._reject(r, f"primary key {list(self._pk)} missing or null")
        return good

    def reject_binding(self, parent_record: Record, reason: str) -> None:
        self._reject(parent_record, reason)

    def _reject(self, record: Any, reason: str) -> None:
        self.stats.records_rejected += 1
        self.stats.note_error(reason)
        self.dead.record_rejected(record=record, reason=reason)
        self.events.emit(RecordsRejected(self.name, 1, reason))

    async def _writer(self) -> None:
        buffer: list[Record] = []
        while True:
            batch = await self.writes.get()
            if batch is None:
                break
            buffer.extend(batch)
            if len(buffer) >= self.row_group_rows:
                await self._write(buffer)
                buffer = []
        if buffer:
            await self._write(buffer)
        before = len(self.sink.files)
        await asyncio.to_thread(self.sink.close)
        self._committed(before)

    async def _write(self, records: list[Record]) -> None:
        before = len(self.sink.files)
        rejected = await asyncio.to_thread(self.sink.write, records)
        for rej in rejected:
            self._reject(rej.record, rej.reason)
        self._committed(before)
        accepted = len(records) - len(rejected)
        self.stats.records_written += accepted
        if accepted:
            self.events.emit(RecordsWritten(self.name, accepted))

    def _committed(self, before: int) -> None:
        for path in self.sink.files[before:]:
            self.stats.files.append(str(path))
            self.events.emit(FileCommitted(self.name, str(path)))
