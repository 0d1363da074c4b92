"""One endpoint's writer task: the single, ordered path from fetched pages to durable files.

Workers never touch files. Each page becomes one :class:`PageDone` item on the writer's
queue carrying the page's records, the child jobs it made (to journal), its dead letters and
a progress token (which job, and the next request or "done"). The writer applies items in
queue order: records to the Parquet sink, child jobs to the child's journal, dead letters to
the dead-letter file, tokens to a pending list.

A :class:`Barrier` on the queue makes everything before it durable: the sink commits its
current file, journals and dead letters are fsynced, and the barrier answers with the
pending tokens, the committed files and the committed lengths. Because a barrier is put on
every writer's queue in one synchronous step, a checkpoint built from the answers names only
durable work, and a child job can only be durable if the parent page that made it is
(docs/architecture.md, "Checkpoints").

With a :class:`~asyncingest.engine.tap.BatchTap` attached (``Pipeline.batches``), the batches
the sink produced go to the tap after each sink call (the writer waits while the tap is full:
backpressure), and a barrier's answer waits until the consumer has taken every batch made
before it, so a checkpoint names only delivered work; the writer's end waits for the
consumer to see the end. With ``cut_at_barriers`` (``output: none`` with a ``state_dir``) a
batch ends only at a barrier: once ``row_group_rows`` records are buffered the writer asks
the engine for a checkpoint (``request_checkpoint``) and applies nothing more until that
barrier is in its inbox, so each checkpoint names exactly the batches up to one boundary and
a restart continues right after the last batch delivered.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..config.models import ForEach, TransformConfig
from ..core.cursor import CursorMax
from ..core.records import bind_children
from ..core.request import Record
from ..errors import environment_failure
from ..sink.batches import BatchSink
from ..sink.deadletter import DeadLetter, DeadLetters
from ..sink.parquet import ParquetSink
from ..state.checkpoint import Journal
from ..state.ledger import EndpointLedger
from ..state.progress import BarrierResult, Progress, Token
from ..transform.pipe import TransformPipe
from ..transform.pool import TransformPool
from .channel import Channel
from .tap import BatchTap

if TYPE_CHECKING:
    from ..core.records import Job

MAX_PAGES_QUEUED = 64
R = TypeVar("R")


@dataclass(slots=True)
class ChildLink:
    """A child endpoint fed by this writer's pages: how records bind to its jobs, the journal
    its jobs go to, and the number the next one gets (its journal line)."""

    name: str
    spec: ForEach
    journal: Journal
    next_number: int


@dataclass(slots=True)
class PageDone:
    """One page for the writer, as one item: its records, the child jobs it made (per
    child), its dead letters and its progress token."""

    records: list[Record]
    token: Token | None
    children: Sequence[tuple[ChildLink, list[Job]]] = ()
    dead: Sequence[DeadLetter] = ()
    mark: Any = None  # a token cursor's "changes since" token the page carried
    swept: int = 0  # parents: all: current-table rows of the parent this item swept


class Barrier:
    """A checkpoint marker on a writer's queue: the writer makes everything before it
    durable and answers ``future`` with what it committed."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[BarrierResult] = asyncio.get_running_loop().create_future()


class Writer:
    """One endpoint's writer task (see the module docstring): applies pages in queue order
    and answers barriers; ``put_page`` is the one hand-off."""

    def __init__(
        self,
        name: str,
        sink: ParquetSink | BatchSink,
        dead: DeadLetters,
        child_journals: dict[str, Journal],
        ledger: EndpointLedger,
        row_group_rows: int,
        *,
        files: Executor | None = None,
    ) -> None:
        self.name = name
        self.files = files  # where file work runs (None: asyncio's default executor)
        self.sink = sink
        self.dead = dead
        self.child_journals = child_journals
        self.ledger = ledger
        self.row_group_rows = row_group_rows
        # Pages wait for room (put, wait_for_room); a barrier or the end is enqueued at once
        # and wakes the writer (flush). Otherwise the writer wakes for a quarter of the bound
        # at a time, and producers waiting for room when it is down to half: one task switch
        # per several pages, not one per page.
        self._inbox: Channel[PageDone | Barrier | None] = Channel(
            MAX_PAGES_QUEUED, batch=MAX_PAGES_QUEUED // 4, refill_at=MAX_PAGES_QUEUED // 2
        )
        self._links: list[ChildLink] = []
        self._buffer: list[Record] = []
        self._progress = Progress()
        self._committed = 0
        self._final: BarrierResult | None = None
        self._finishing = False
        self._failed: BaseException | None = None  # why the writer task ended early
        self._answering: Barrier | None = None  # the barrier being made durable
        self.task: asyncio.Task[None] | None = None
        # The CPU stage, when the endpoint has a transform (attach_transform).
        self.pipe: TransformPipe | None = None
        self.tsink: ParquetSink | None = None
        self.tfolder = ""  # the transform's output folder (attach_transform)
        self.keep_raw = True
        self._tcommitted = 0
        self.tap: BatchTap | None = None  # Pipeline.batches: the consumer of this endpoint
        self.fed = False  # records have reached the sink (too late to attach a tap)
        # output: none with a state_dir: batches end at barriers only (module docstring).
        self.cut_at_barriers = False
        self.request_checkpoint: Callable[[], None] | None = None
        self.answered_batches = 0  # batches the last settled barrier answer covered
        self._barriers_queued = 0
        self._barrier_queued: asyncio.Future[None] | None = None
        # An incremental endpoint: the high-water mark of the records applied since the last
        # barrier, and their count; a barrier hands both out with what it made durable.
        self.cursor: CursorMax | None = None
        self._rows = 0
        self._swept = 0  # parents: all: current-table rows swept since the last barrier

    def attach_tap(self, tap: BatchTap) -> None:
        """Hand every batch the sink makes to ``tap``; only before any record reached it."""
        if self.fed:
            raise RuntimeError(
                f"batches({self.name!r}): the endpoint has already written records; call "
                "batches() before the pipeline starts, or right after (before awaiting "
                "anything else)"
            )
        if not self.keep_raw:
            raise ValueError(
                f"batches({self.name!r}): the endpoint keeps no raw records "
                "(transform.keep_raw: false)"
            )
        self.tap = tap
        self.sink.tap = True

    async def _hand_batches(self) -> None:
        """The batches the sink made since the last call, to the tap (waiting for room)."""
        tap = self.tap
        if tap is None:
            return
        for batch in self.sink.take_batches():
            await tap.put(batch)

    def _answer(self, b: Barrier, result: BarrierResult) -> None:
        """Answer ``b`` now, or with a tap once every batch made so far is delivered."""
        tap = self.tap
        if tap is None:
            b.future.set_result(result)
            return
        covered = tap.put_count
        delivered = tap.when_delivered(covered)
        delivered.add_done_callback(lambda f: self._settle(b, f, result, covered))

    def _settle(
        self,
        b: Barrier,
        delivered: asyncio.Future[None],
        result: BarrierResult,
        covered: int,
    ) -> None:
        """Answer ``b`` once the batches before it are delivered (or fail it)."""
        if b.future.done():
            return
        if delivered.cancelled():
            b.future.cancel()
        elif (exc := delivered.exception()) is not None:
            b.future.set_exception(exc)
        else:
            self.answered_batches = covered
            b.future.set_result(result)

    async def _wait_for_a_barrier(self) -> None:
        """``cut_at_barriers``: a batch is full; ask for a checkpoint and wait for its barrier."""
        if self.request_checkpoint is not None:
            self.request_checkpoint()
        if self._barriers_queued:
            return
        fut = self._barrier_queued = asyncio.get_running_loop().create_future()
        try:
            await fut
        finally:
            self._barrier_queued = None

    def attach_transform(
        self, pool: TransformPool, spec: TransformConfig, sink: ParquetSink, folder: str
    ) -> None:
        """Send this endpoint's records through ``pool`` (the transform ``spec``) in order; what it
        returns goes to ``sink``, the output folder ``folder`` (the state's name for it; the
        sink's directory may be an increment's partition inside it). Call before
        :meth:`start`."""
        self.tfolder = folder
        self.pipe = TransformPipe(
            pool, spec, self._write_transformed, self._set_aside, self._release
        )
        self.tsink = sink
        self.keep_raw = spec.keep_raw

    def _release(self, token: object) -> None:
        assert isinstance(token, Token)
        self._progress.add(token)

    def _set_aside(self, records: list[Record], reason: str) -> None:
        why = f"transform: {reason}"
        for r in records:
            self.dead.add(DeadLetter.rejected_record(r, why))
        self.ledger.rejected(why, len(records))  # one event and one lock for the batch

    async def _write_transformed(self, records: list[Record]) -> None:
        assert self.tsink is not None
        rejected = await self._in_files(self.tsink.write, records)
        for rej in rejected:
            self.dead.add(DeadLetter.rejected_record(rej.record, f"transform output: {rej.reason}"))
            self.ledger.rejected(rej.reason)
        self.ledger.transformed(len(records) - len(rejected))

    def __repr__(self) -> str:
        return (
            f"Writer({self.name}, queued={len(self._inbox)}, buffered={len(self._buffer)}, "
            f"pending={len(self._progress.done)} done/{len(self._progress.partial)} partial, "
            f"files={len(self.sink.files)})"
        )

    def _in_files(self, fn: Callable[..., R], *args: Any) -> asyncio.Future[R]:
        return asyncio.get_running_loop().run_in_executor(self.files, fn, *args)

    def start(self) -> None:
        """Start the writer's task (it applies items from the inbox until :meth:`finish`)."""
        self.task = asyncio.create_task(self._run(), name=f"{self.name}-writer")

    def link_child(self, name: str, spec: ForEach, journal: Journal) -> None:
        """Feed child endpoint ``name``: each page's records bind to its jobs (``spec``),
        numbered by ``journal`` line from the journal's current end."""
        self.child_journals[name] = journal
        self._links.append(ChildLink(name, spec, journal, journal.lines))

    async def put(self, item: PageDone) -> None:
        """Enqueue an item that makes no child jobs (a dead letter and a token); waits while
        ``MAX_PAGES_QUEUED`` items are waiting to be applied."""
        await self._inbox.put(item)

    async def put_page(
        self,
        records: list[Record],
        token: Token,
        dead: list[DeadLetter],
        mark: Any = None,
    ) -> Sequence[tuple[ChildLink, list[Job]]]:
        """Hand over one page: wait for room, bind the records to each child's jobs, number
        them and enqueue the page, and return the jobs per child for the caller to queue.

        Binding, numbering and enqueueing are one synchronous step after the wait, so the
        order pages reach the journals (and so each job's journal line) is the order of
        their numbers. Records that bind to no job are added to ``dead``.
        """
        inbox = self._inbox
        if inbox.full():
            await inbox.wait_for_room()
        children: list[tuple[ChildLink, list[Job]]] = []
        for link in self._links:
            jobs, unbound = bind_children(
                records, link.spec, link.name, itertools.count(link.next_number)
            )
            link.next_number += len(jobs)
            for r, why in unbound:
                dead.append(DeadLetter.rejected_record(r, why))
                self.ledger.rejected(why)
            if jobs:
                children.append((link, jobs))
        inbox.put_nowait(PageDone(records, token, children, dead, mark))
        return children

    async def put_children(
        self, rows: list[Record], swept: int, links: Collection[str]
    ) -> Sequence[tuple[ChildLink, list[Job]]]:
        """Hand over parent rows that are not records of this run (``for_each: {parents:
        all}``: the rows of the parent's current table no record of the increment replaced):
        bind them to the jobs of the children named ``links``, numbered into their journals
        like a page's, and count ``swept`` rows as done in the barrier answers. Nothing is
        written and no cursor moves; a row that cannot be bound is skipped (it was
        dead-lettered when it was fetched). Returns the jobs per child, as :meth:`put_page`."""
        inbox = self._inbox
        if inbox.full():
            await inbox.wait_for_room()
        children: list[tuple[ChildLink, list[Job]]] = []
        for link in self._links:
            if link.name not in links:
                continue
            jobs, _ = bind_children(rows, link.spec, link.name, itertools.count(link.next_number))
            link.next_number += len(jobs)
            if jobs:
                children.append((link, jobs))
        inbox.put_nowait(PageDone([], None, children, (), None, swept))
        return children

    def barrier(self) -> asyncio.Future[BarrierResult]:
        """Synchronously enqueue a barrier; the future answers once all before it is durable.

        The progress in an answer is handed out once: the caller must not lose it (the
        engine shields its checkpoints from cancellation).
        """
        b = Barrier()
        if self._failed is not None:  # a dead writer answers no barrier: say so at once
            _fail(b, self._failed)
        elif self.task is None:  # not started: nothing written, nothing pending
            b.future.set_result(self._snapshot())
        elif self._finishing:  # the final answer comes when the writer has closed the sink
            self.task.add_done_callback(lambda _: self._answer_final(b))
        else:
            self._inbox.put_nowait(b)
            self._inbox.flush()
            self._barriers_queued += 1
            if self._barrier_queued is not None and not self._barrier_queued.done():
                self._barrier_queued.set_result(None)
        return b.future

    def _answer_final(self, b: Barrier) -> None:
        if self._failed is not None:
            _fail(b, self._failed)
        elif self._final is None:
            # Every ending of _run sets _failed or _final, except a cancel before its first
            # step (the body never ran): nothing was closed, so nothing is final.
            b.future.cancel()
        elif not b.future.done():
            b.future.set_result(self._take_final())

    def finish(self) -> None:
        """No more pages come: once the inbox is applied, the writer drains the transform, writes
        what is buffered and closes its files, and its task ends."""
        self._finishing = True
        self._inbox.put_nowait(None)
        self._inbox.flush()
        if self._barrier_queued is not None and not self._barrier_queued.done():
            self._barrier_queued.set_result(None)  # no barrier needed: the end cuts the batch

    def _take_final(self) -> BarrierResult:
        final = self._final
        assert final is not None
        self._final = self._snapshot(finished=True)  # tokens are handed out once
        return final

    async def _run(self) -> None:
        try:
            try:
                await self._apply_until_done()
            except OSError as exc:  # the disk, not the data: name the folder it was writing
                raise environment_failure(exc, self.sink.directory) from exc
        except BaseException as exc:
            # Every barrier waiting on this writer fails with it: a checkpoint must not wait
            # for an answer that will never come.
            self._failed = exc
            waiting = [self._answering] if self._answering is not None else []
            while self._inbox:
                item = self._inbox.pop()
                if isinstance(item, Barrier):
                    waiting.append(item)
            for b in waiting:
                _fail(b, exc)
            if self.tap is not None:  # answers waiting for deliveries: they never come now
                self.tap.abandon_waiters(exc)
            if self.pipe is not None:  # a hard stop or a failure: no batch left running
                await self.pipe.aclose()
            raise

    async def _apply_until_done(self) -> None:
        inbox = self._inbox
        while True:
            item = inbox.pop() if inbox else await inbox.get()
            if item is None:
                if self.pipe is not None:
                    await self.pipe.drain()
                await self._write_buffer()
                await self._in_files(self._close)
                if self.tap is not None:
                    await self._hand_batches()
                    await self.tap.finish()  # the consumer has taken (and let go of) the last
                    self.answered_batches = self.tap.put_count
                self._final = self._snapshot(self._take_progress(), finished=True)
                return
            if isinstance(item, Barrier):
                self._barriers_queued -= 1
                self._answering = item
                if self.pipe is not None:
                    await self.pipe.drain()
                await self._write_buffer()
                await self._in_files(self._sync)
                await self._hand_batches()
                self._answer(item, self._snapshot(self._take_progress()))
                self._answering = None
                continue
            self._apply(item)
            if self.pipe is not None:
                await self.pipe.feed(item.records, item.token)
            if len(self._buffer) >= self.row_group_rows:
                if self.cut_at_barriers:
                    # Finishing: no barrier comes through the inbox now; the end cuts it.
                    if not self._barriers_queued and not self._finishing:
                        await self._wait_for_a_barrier()
                else:
                    await self._write_buffer()

    def _apply(self, item: PageDone) -> None:
        if item.records and self.keep_raw:
            self._buffer.extend(item.records)
        self._rows += len(item.records)
        self._swept += item.swept
        if self.cursor is not None:
            if item.records:
                self.cursor.fold(item.records)
            if item.mark is not None:
                self.cursor.fold_token(item.mark)
        for link, jobs in item.children:
            journal = link.journal
            for job in jobs:
                line = journal.append(job.variables, job.copy)
                assert line == job.number, f"journal line {line} != job {job.number}"
        for letter in item.dead:
            self.dead.add(letter)
        if item.token is not None and self.pipe is None:
            self._progress.add(item.token)  # else released when the transform output is

    def _take_progress(self) -> Progress:
        progress, self._progress = self._progress, Progress()
        return progress

    async def _write_buffer(self) -> None:
        if not self._buffer:
            return
        records, self._buffer = self._buffer, []
        self.fed = True
        rejected = await self._in_files(self.sink.write, records)
        for rej in rejected:
            self.dead.add(DeadLetter.rejected_record(rej.record, rej.reason))
            self.ledger.rejected(rej.reason)
        self.ledger.written(len(records) - len(rejected))
        self.ledger.schema_noted(self.sink.dropped_fields, self.sink.json_fallbacks)
        self._announce_files()
        await self._hand_batches()

    def abandon(self) -> None:
        """After a failure, once no file work runs: staging files go, committed files stay."""
        self.sink.abort()
        if self.tsink is not None:
            self.tsink.abort()

    def _sync(self) -> None:
        self.sink.flush()
        if self.tsink is not None:
            self.tsink.flush()
        for journal in self.child_journals.values():
            journal.sync()
        self.dead.sync()

    def _close(self) -> None:
        self.sink.close()
        if self.tsink is not None:
            self.tsink.close()
        for journal in self.child_journals.values():
            journal.sync()
        self.dead.sync()

    def _snapshot(self, progress: Progress | None = None, finished: bool = False) -> BarrierResult:
        self._announce_files()
        cursor, rows, unreadable, future, future_value, swept = None, 0, 0, 0, None, 0
        if progress is not None:  # handed out once, like the progress
            rows, self._rows = self._rows, 0
            swept, self._swept = self._swept, 0
            if self.cursor is not None:
                cursor = self.cursor.take()
                unreadable, self.cursor.unreadable = self.cursor.unreadable, 0
                future, future_value = self.cursor.take_future()
        return BarrierResult(
            progress=progress if progress is not None else Progress(),
            files=[Path(p).name for p in self.sink.files],
            journals={k: (j.lines, j.nbytes) for k, j in self.child_journals.items()},
            dead_letter_bytes=self.dead.nbytes,
            finished=finished,
            extra_files=(
                {self.tfolder: [Path(p).name for p in self.tsink.files]}
                if self.tsink is not None
                else {}
            ),
            cursor=cursor,
            rows=rows,
            unreadable=unreadable,
            future=future,
            future_value=future_value,
            swept=swept,
        )

    def _announce_files(self) -> None:
        files = self.sink.files
        if len(files) > self._committed:
            self.ledger.committed(files[self._committed :])
        self._committed = len(files)
        if self.tsink is not None:
            tfiles = self.tsink.files
            if len(tfiles) > self._tcommitted:
                self.ledger.committed(tfiles[self._tcommitted :])
            self._tcommitted = len(tfiles)


def _fail(b: Barrier, cause: BaseException) -> None:
    if b.future.done():
        return
    if isinstance(cause, asyncio.CancelledError):
        b.future.cancel()
        return
    # The writer's own error: whichever task reports it first, the run ends with it.
    b.future.set_exception(cause)
