"""A pipeline as a service runs it: a task of its own in the host's loop, with a graceful stop,
a cancel, a wait, a result and snapshots of where it is.

:class:`Pipeline` wraps one :class:`~asyncingest.engine.engine.Engine`; ``asyncingest.run``,
``asyncingest.run_sync`` and the CLI are thin layers over it. It installs no signal handler,
prints nothing and never exits the process: the host decides all of that.

Ending a run, three ways (docs/architecture.md, "Stopping and cancelling"):

* ``await p.stop()``: graceful. No new work; requests in flight finish; every file and the state
  are committed; ``result.stopped``; the same config resumes where it stopped.
* cancelling (``await p.cancel()``, ``task.cancel()`` of a task awaiting ``p.wait()`` or inside
  ``async with p``, or the host shutting the loop down): at once. Requests in flight and waits on
  the limits are dropped; what the writers already hold is committed by one last checkpoint,
  bounded in time; staging files are removed. A later run resumes and asks again for what was
  dropped. ``CancelledError`` propagates as asyncio expects.
* the run's own end: ``await p.wait()`` returns the :class:`~asyncingest.RunResult` or raises
  the run's error.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection, Iterable
from types import TracebackType
from typing import Self

from ..config.models import PipelineConfig
from ..core.events import Event, RunStarted, Subscriber
from ..core.result import RunResult
from ..core.snapshot import Snapshot
from ..limits.clock import Clock
from ..limits.rate_budget import RateBudget
from ..transform.pool import TransformPool
from .engine import Engine
from .tap import BatchStream

__all__ = ["Pipeline", "PipelineStateError", "run", "run_sync"]


class PipelineStateError(RuntimeError):
    """A :class:`Pipeline` asked to do what its state does not allow: start twice, stop or wait
    before the start, ``result`` before the end."""


class Pipeline:
    """One pipeline run in the host's event loop.

    >>> async with asyncingest.Pipeline(cfg) as p:    # doctest: +SKIP
    ...     while not p.snapshot().done: ...         # poll, serve status, or just wait
    >>> p.result.records_written                       # doctest: +SKIP

    ``async with`` starts the run and, on leaving the block, waits for its end (or, after
    ``stop()``, for the stop to complete); the run's error is raised there. An exception or a
    cancellation inside the block cancels the run (see the module docstring for what a cancel
    keeps). A pipeline runs once. ``pool``: a :class:`~asyncingest.transform.pool.TransformPool`
    its owner entered and will close, shared by pipelines run one after another or side by side
    (a scale-out worker's, so each shard does not start processes of its own).

    For a config with ``incremental:`` endpoints a run is one increment (README, "Incremental
    runs"): ``full_refresh`` names endpoints refetched from their ``initial`` this time.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        budget: RateBudget | None = None,
        output: str | os.PathLike[str] | None = None,
        subscribers: Iterable[Subscriber] = (),
        clock: Clock | None = None,
        fresh: bool = False,
        retry_failed: bool = False,
        full_refresh: Iterable[str] = (),
        pool: TransformPool | None = None,
    ) -> None:
        self.config = config
        self._engine = Engine(
            config,
            output=output,
            subscribers=subscribers,
            clock=clock,
            fresh=fresh,
            retry_failed=retry_failed,
            budget=budget,
            full_refresh=full_refresh,
            pool=pool,
        )
        self._task: asyncio.Task[RunResult] | None = None
        self._began: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"Pipeline({self.run_id}, {self._engine.phase}, output={self.output})"

    @property
    def run_id(self) -> str:
        """This run's id (the name of its report under ``OUTPUT/_asyncingest/runs/``)."""
        return self._engine.run_id

    @property
    def output(self) -> str:
        """The output folder (the config's, unless ``output=`` was given)."""
        return str(self._engine.output)

    def subscribe(
        self, subscriber: Subscriber, events: Collection[type[Event]] | None = None
    ) -> None:
        """Add an event subscriber (for the ``events`` classes only, when given; see
        :data:`~asyncingest.Subscriber`). It runs inline in the loop: keep it quick."""
        self._engine.events.subscribe(subscriber, events)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the run as a task of the running loop and return once it is under way (the
        output folder locked, the state read), or raise why it could not start
        (:class:`~asyncingest.OutputLocked`, :class:`~asyncingest.StateCorrupt`, ...).
        A run with nothing left to do may already be finished when this returns."""
        if self._task is not None:
            raise PipelineStateError(f"{self!r} was started already: a pipeline runs once")
        loop = asyncio.get_running_loop()
        began = self._began = loop.create_future()

        def on_start(event: Event) -> None:
            if isinstance(event, RunStarted) and not began.done():
                began.set_result(None)

        self._engine.events.subscribe(on_start, events=(RunStarted,))
        task = self._task = loop.create_task(self._engine.run(), name=f"asyncingest-{self.run_id}")
        task.add_done_callback(_retrieve)
        try:
            await asyncio.wait((began, task), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await _absorbing(task)
            raise
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            raise error

    async def stop(self) -> RunResult:
        """Graceful stop: no new work, requests in flight finish, files and state are committed.
        Returns the result once done (``result.stopped``, unless the run had finished first);
        the same config resumes. Raises the run's error if it failed."""
        task = self._started("stop")
        self._engine.stop()
        return await self._wait(task)

    async def cancel(self) -> None:
        """Stop at once, as a cancelled task does (see the module docstring), and return once
        what could be saved is saved. Does nothing after the end."""
        task = self._started("cancel")
        if not task.done():
            task.cancel()
        await _absorbing(task)

    async def wait(self) -> RunResult:
        """Wait for the end and return the :class:`~asyncingest.RunResult`; raises the run's
        error. Cancelling the task that waits cancels the run (wrap it in ``asyncio.shield``
        to wait with a timeout without that)."""
        return await self._wait(self._started("wait for"))

    async def _wait(self, task: asyncio.Task[RunResult]) -> RunResult:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise  # the run itself was cancelled (cancel(), the loop shutting down)
            # The waiter was cancelled: so is the run; it saves what it can first.
            task.cancel()
            await _absorbing(task)
            raise

    @property
    def result(self) -> RunResult:
        """The :class:`~asyncingest.RunResult` once the run has ended (a cancelled run's says
        ``cancelled``); before, :class:`PipelineStateError`; after a failure, the run's error."""
        task = self._started("read the result of")
        if not task.done():
            raise PipelineStateError(f"{self!r} is still running: await p.wait() first")
        if task.cancelled():
            cancelled = self._engine.result
            if cancelled is None:
                raise PipelineStateError(f"{self!r} was cancelled before it began")
            return cancelled
        return task.result()

    def snapshot(self) -> Snapshot:
        """Where the run is now (see :class:`~asyncingest.Snapshot`): O(endpoints), safe at any
        moment, before the start and after the end.

        Call it from the thread running the pipeline's event loop: the counters it reads are
        updated by that loop without locks. From another thread, ask the loop for it
        (``asyncio.run_coroutine_threadsafe`` of a coroutine that returns ``p.snapshot()``, or
        ``loop.call_soon_threadsafe``); the :class:`~asyncingest.Snapshot` it returns is frozen
        and may then be read anywhere."""
        return self._engine.snapshot()

    def batches(self, endpoint: str) -> BatchStream:
        """``endpoint``'s records as ``pyarrow.RecordBatch`` es, as they are parsed (``async
        for``), typed as its Parquet files are; with Parquet on, exactly its row groups as
        written; with ``output: none``, the only place the records go.

        Call it once per endpoint, before :meth:`start` or right after it (before awaiting
        anything else): the endpoint must not have written anything yet. Read every stream
        you asked for until it ends (one task each): a reader that falls behind slows that
        endpoint's fetching (at most 2 batches wait), and a batch counts as delivered when the
        next is asked for, which is what a checkpoint may name. The stream ends with the
        endpoint (after :meth:`stop` too); the run's error, or :class:`~asyncingest.RunCancelled`,
        is raised in it. README, "Records back as Arrow batches".
        """
        return self._engine.batches(endpoint)

    def _started(self, verb: str) -> asyncio.Task[RunResult]:
        if self._task is None:
            raise PipelineStateError(
                f"cannot {verb} {self!r}: it has not started (await p.start() or async with)"
            )
        return self._task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        if task is None:  # start() failed: nothing runs
            return
        if exc is not None:
            # The block failed or was cancelled: nobody will consume the run; end it at once.
            if not task.done():
                task.cancel()
            await _absorbing(task)
            return
        await self._wait(task)


def _retrieve(task: asyncio.Task[RunResult]) -> None:
    """Mark the run's error as seen: a host that only polls snapshots must not get "exception was
    never retrieved" (wait(), result and snapshot().phase all report it)."""
    if not task.cancelled():
        task.exception()


async def _absorbing(task: asyncio.Task[RunResult]) -> None:
    """Wait for ``task`` to end (it is bounded: a cancelled run saves within its own limit),
    letting further cancellations of the caller wait for it too, then re-deliver them."""
    cancelled = 0
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled += 1
    if cancelled:
        raise asyncio.CancelledError


async def run(
    config: PipelineConfig,
    *,
    output: str | os.PathLike[str] | None = None,
    subscribers: Iterable[Subscriber] = (),
    clock: Clock | None = None,
    fresh: bool = False,
    retry_failed: bool = False,
    budget: RateBudget | None = None,
    full_refresh: Iterable[str] = (),
) -> RunResult:
    """Run a pipeline to completion in the current event loop and return what it did (a
    :class:`Pipeline` run to its end; cancelling the caller cancels the run). ``budget``: an
    :class:`~asyncingest.limits.rate_budget.Budget` shared with other pipelines of the loop."""
    pipeline = Pipeline(
        config,
        budget=budget,
        output=output,
        subscribers=subscribers,
        clock=clock,
        fresh=fresh,
        retry_failed=retry_failed,
        full_refresh=full_refresh,
    )
    await pipeline.start()
    return await pipeline.wait()


def run_sync(
    config: PipelineConfig,
    *,
    output: str | os.PathLike[str] | None = None,
    subscribers: Iterable[Subscriber] = (),
    clock: Clock | None = None,
    fresh: bool = False,
    retry_failed: bool = False,
    budget: RateBudget | None = None,
    full_refresh: Iterable[str] = (),
) -> RunResult:
    """:func:`run` for scripts: runs the pipeline in a new event loop (``asyncio.run``) and returns
    the result. Inside a running event loop, use ``await asyncingest.run(...)`` instead. A
    ``budget`` given here is bound to that loop while it runs (see ``Budget``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise PipelineStateError(
            "asyncingest.run_sync() was called from a running event loop; "
            "use `await asyncingest.run(...)` there instead"
        )
    return asyncio.run(
        run(
            config,
            budget=budget,
            output=output,
            subscribers=subscribers,
            clock=clock,
            fresh=fresh,
            retry_failed=retry_failed,
            full_refresh=full_refresh,
        )
    )
