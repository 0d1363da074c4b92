"""The engine: wires config into runners and runs the endpoint graph on one event loop.

Data flow (docs/architecture.md): config -> checkpoint state (fresh, resume or refuse) ->
limits + HTTP client -> one EndpointRunner per endpoint, linked parent -> children -> roots
fed (one root call, or ids streamed from an input file; done jobs skipped) -> records stream
to each endpoint's writer -> periodic checkpoints -> a RunResult and a run report.

Endpoints form trees (a root and everything that iterates over it, transitively). A tree
runs as a unit: a child starts with its parent and takes jobs as the parent's records
arrive. ``concurrency.endpoints`` caps how many trees run at once; counting trees rather
than single endpoints is what keeps a bounded parent->child queue from deadlocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..config.models import EndpointConfig, FromFile, PipelineConfig
from ..config.sources import check_ids_file, count_ids, iter_id_rows, iter_ids
from ..core.crashpoints import crash_point
from ..core.cursor import CursorMax, bind_window
from ..core.events import (
    CursorAhead,
    EndpointFinished,
    EndpointStarted,
    EventBus,
    IncrementStarted,
    JobsQueued,
    RunFinished,
    RunStarted,
    Subscriber,
)
from ..core.records import Job
from ..core.request import Request, base_url_of
from ..core.result import Compaction, IncrementSummary, RunResult, WindowSummary
from ..core.retry import RetryPolicy, retry_policy
from ..core.snapshot import EndpointSnapshot, RunPhase, Snapshot
from ..errors import ConfigError, Problem, environment_failure
from ..http.client import HttpClient, credentials_from_env
from ..limits.adaptive import AdaptiveConcurrency
from ..limits.breaker import CircuitBreaker
from ..limits.budget import BudgetWatch, Watched
from ..limits.clock import BoundLoopClock, Clock, LoopClock
from ..limits.limiter import Limit, Limits, SlidingWindowLimiter
from ..limits.rate_budget import Budget, BudgetShare, RateBudget
from ..limits.throttle import AdaptiveThrottle
from ..sink.batches import BatchSink
from ..sink.deadletter import DeadLetters
from ..sink.parquet import ParquetSink, SinkOptions
from ..state.checkpoint import (
    Journal,
    RunState,
    discard_uncommitted,
    save_state,
)
from ..state.compact import CommittedFile, CompactOptions, compact_folders, compact_running, recover
from ..state.increments import (
    Increment,
    begin_increment,
    check_full_refresh,
    complete_increment,
    fold_high,
    partition_name,
)
from ..state.lock import OutputLock
from ..state.resume import (
    JobPlan,
    apply,
    dead_letters_left,
    dead_requests_by_endpoint,
    prepare,
    write_run_report,
)
from ..transform.pool import TransformPool
from .endpoint import EndpointRunner
from .guards import EndpointGuards, concurrency_events
from .tap import BatchStream, BatchTap

log = logging.getLogger("asyncingest")


#: How long a cancelled run may take to commit what its writers hold (_halt): seconds of real
#: time, a bound on disk work, not on the API.
CANCEL_SAVE_SECONDS = 10.0


class Engine:
    """Runs one pipeline. ``await Engine(cfg).run()`` inside any running event loop; most callers
    want :class:`~asyncingest.Pipeline` (a task of its own, ``stop``, ``wait``, ``result``), which
    wraps one.

    A run resumes from the checkpoint under the output directory when there is one (same
    config), ``fresh=True`` starts over, ``retry_failed=True`` re-requests dead-lettered
    requests. ``stop()`` asks for a graceful stop: no new work, in-flight requests finish,
    files and state are committed; ``result.stopped`` is then true. ``snapshot()`` shows where
    the run is at any moment. ``batches(endpoint)`` gives an endpoint's records back as Arrow
    batches (``engine/tap.py``). Everything else on it is private.

    ``budget``: the API's rate budget, shared with other pipelines given the same one (it then
    replaces ``config.api.rate_limits``); without it the engine makes its own from the config.

    A config with an ``incremental:`` endpoint runs as increments (``state/increments.py``): on a
    finished output a run starts the next increment (each endpoint's window from the committed
    high-water mark), on an interrupted one it resumes the increment under way with its saved
    window; ``full_refresh`` names endpoints refetched from ``initial`` (their current table
    replaced). After an increment's files are committed, each ``merge: latest`` endpoint's
    current table is rebuilt (``state/current.py``); a rebuild a kill interrupted is finished
    when the next run starts.

    With ``output: none`` nothing is written as Parquet: the state (checkpoint, journals, dead
    letters, run reports) goes to ``output.state_dir``, or, without one, to a temporary
    folder deleted at the end (every run starts afresh).
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        output: str | os.PathLike[str] | None = None,
        subscribers: Iterable[Subscriber] = (),
        clock: Clock | None = None,
        seed: int | None = None,
        fresh: bool = False,
        retry_failed: bool = False,
        budget: RateBudget | None = None,
        full_refresh: Iterable[str] = (),
        pool: TransformPool | None = None,
    ) -> None:
        self.config = config
        self._shared_pool = pool  # entered and closed by its owner, not by this run
        names = (full_refresh,) if isinstance(full_refresh, str) else full_refresh  # one name
        self._full_refresh = tuple(dict.fromkeys(names))
        self.batches_only = config.output.format == "none"
        self._ephemeral = False  # output: none without state_dir: a temporary state folder
        if self.batches_only:
            if output is not None:
                raise ValueError(
                    "output: the pipeline's output format is none (no Parquet); give "
                    "output.state_dir for its checkpoint state instead"
                )
            self._ephemeral = config.output.state_dir is None
            self.output = Path(config.output.state_dir or tempfile.gettempdir())
        else:
            where = os.fspath(output if output is not None else config.output.directory)
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", where) and not where.startswith("file:"):
                raise ConfigError(  # not a folder named "s3:" in the working directory
                    "output.directory",
                    [
                        Problem(
                            where.split("?")[0],
                            "an object store is an output of the scale-out commands (submit, "
                            "worker); a run in one process writes to a folder",
                        )
                    ],
                )
            self.output = Path(where)
        self._taps: dict[str, BatchTap] = {}
        self._ended = False
        self._checkpoint_wanted = False
        self._checkpoint_wake: asyncio.Future[None] | None = None
        self.events = EventBus(subscribers)
        self._clock: Clock = clock or LoopClock()
        self._rng = random.Random(seed)
        self._fresh = fresh
        self._retry_failed = retry_failed
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self._runners: dict[str, EndpointRunner] = {}
        self._stopping = False
        self._stop_reason = ""
        self._phase: RunPhase = "new"
        self._started_at: float | None = None  # on the run's clock
        self._wall_start: float | None = None  # seconds since the epoch (the cursor guard)
        self._ended_at: float | None = None
        self._result: RunResult | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._own_limiters: dict[str, SlidingWindowLimiter] = {}
        self._state: RunState | None = None
        self._increment: Increment | None = None  # incremental configs: the one this run runs
        self._began_increment = False  # this run began it (else it resumes one under way)
        self._prior_files: dict[str, list[str]] = {}
        self._checkpoint_lock = asyncio.Lock()
        # Compaction during the run (asyncingest.state.compact.compact_running): the file thread it
        # runs on, the names each folder's compactions replaced, and the files it has read.
        self._files: Executor | None = None
        self._merged_away: dict[str, set[str]] = {}
        self._known_files: dict[str, dict[str, CommittedFile]] = {}
        self._compacted: dict[str, tuple[int, int]] = {}  # folder -> files saved, rows
        self._clock_given = clock is not None
        self._budget_given = budget
        self._budget: RateBudget | None = budget
        self._adaptive: dict[str, AdaptiveConcurrency] = {}

    def __repr__(self) -> str:
        runners = list(self._runners.values())
        return (
            f"Engine(run_id={self.run_id}, output={self.output}, {self.phase}, runners={runners!r})"
        )

    def batches(self, endpoint: str) -> BatchStream:
        """``endpoint``'s records as ``pyarrow.RecordBatch`` es (``async for``), typed as its
        Parquet files are; see :mod:`asyncingest.engine.tap`. One consumer per endpoint, and
        before the endpoint has written anything (before ``run``, or right after it starts).
        """
        names = [e.name for e in self.config.endpoints]
        if endpoint not in names:
            raise ValueError(
                f"batches({endpoint!r}): no such endpoint (endpoints: {', '.join(names)})"
            )
        if endpoint in self._taps:
            raise RuntimeError(
                f"batches({endpoint!r}) was already called: one consumer per endpoint"
            )
        if self._ended:
            raise RuntimeError(f"batches({endpoint!r}): the run has ended")
        tap = BatchTap(endpoint)
        runner = self._runners.get(endpoint)
        if runner is not None:  # running already: only if nothing was written yet
            self._attach(runner, tap)
        elif (t := self.config.endpoint(endpoint).transform) is not None and not t.keep_raw:
            raise ValueError(
                f"batches({endpoint!r}): the endpoint keeps no raw records "
                "(transform.keep_raw: false)"
            )
        self._taps[endpoint] = tap
        return BatchStream(tap)

    def _attach(self, runner: EndpointRunner, tap: BatchTap) -> None:
        writer = runner.writer
        writer.attach_tap(tap)
        if self.batches_only and not self._ephemeral:
            # A restart continues after the last delivered batch: batches end at checkpoints,
            # and the next one is handed out once the state naming the last is saved.
            writer.cut_at_barriers = True
            writer.request_checkpoint = self._checkpoint_soon
            tap.strict = True

    def _checkpoint_soon(self) -> None:
        """Checkpoint now instead of at the next ``checkpoint_seconds`` (coalesced)."""
        self._checkpoint_wanted = True
        if self._checkpoint_wake is not None and not self._checkpoint_wake.done():
            self._checkpoint_wake.set_result(None)

    async def _next_checkpoint(self, seconds: float) -> None:
        """Until ``seconds`` have passed or a writer asked for a checkpoint."""
        if not self._checkpoint_wanted:
            wake = self._checkpoint_wake = asyncio.get_running_loop().create_future()
            sleep = asyncio.ensure_future(self._clock.sleep(seconds))
            try:
                await asyncio.wait((wake, sleep), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleep.cancel()
                self._checkpoint_wake = None
        self._checkpoint_wanted = False

    def _end_taps(self, error: BaseException | None) -> None:
        """The run is over: every stream ends, or raises the run's error."""
        self._ended = True
        for tap in self._taps.values():
            if error is None:
                tap.end()
            else:
                tap.fail(error)

    def stop(self) -> None:
        """Graceful stop: take no new work, let in-flight requests finish, commit, save."""
        self._stopping = True
        if self._phase == "running":
            self._phase = "stopping"
        for r in self._runners.values():
            r.stop()

    @property
    def phase(self) -> RunPhase:
        """Where the run is: ``new``, ``running``, ``stopping``, then how it ended (``stopped``,
        ``finished``, ``cancelled``, ``failed``)."""
        return self._phase

    def snapshot(self) -> Snapshot:
        """The run's figures now (see :class:`~asyncingest.core.snapshot.Snapshot`): cheap
        (O(endpoints + windows)), safe at any moment, before the start and after the end."""
        if self._runners:
            endpoints = tuple(r.snapshot() for r in self._runners.values())
        else:
            endpoints = tuple(EndpointSnapshot(e.name, e.parent) for e in self.config.order())
        elapsed = 0.0
        if self._started_at is not None:
            end = self._ended_at if self._ended_at is not None else self._clock.time()
            elapsed = max(0.0, end - self._started_at)
        windows = {name: lim.usage() for name, lim in self._limiters().items()}
        return Snapshot(self.run_id, self._phase, elapsed, endpoints, windows)

    def _limiters(self) -> dict[str, SlidingWindowLimiter | RateBudget]:
        """The rate limiters by name: ``api`` (the budget, maybe shared: listed once the run has
        started, and only with windows) and any endpoint's own."""
        out: dict[str, SlidingWindowLimiter | RateBudget] = dict(self._own_limiters)
        if self._budget is not None and self._budget.usage():
            out["api"] = self._budget
        return out

    def _limits_for(self, e: EndpointConfig, workers: int) -> Limit:
        parts: list[Limit] = []
        if self.config.api.concurrency.adaptive:
            adaptive = AdaptiveConcurrency(
                workers, on_change=concurrency_events(e.name, self.events.emit)
            )
            self._adaptive[e.name] = adaptive
            parts.append(adaptive)
        if e.rate_limits:
            own = SlidingWindowLimiter(
                [(w.requests, w.per_seconds) for w in e.rate_limits], self._clock, name=e.name
            )
            self._own_limiters[e.name] = own
            parts.append(own)
        assert self._budget is not None
        parts.append(BudgetShare(self._budget, self.run_id))  # last: taken closest to sending
        return parts[0] if len(parts) == 1 else Limits(parts)

    def _guards_for(self, e: EndpointConfig) -> EndpointGuards:
        api = self.config.api
        breaker = None
        if api.circuit_breaker is not None:
            b = api.circuit_breaker
            breaker = CircuitBreaker(
                b.failures,
                b.cooldown,
                self._clock,
                max_cooldown=b.max_cooldown,
                name=e.name,
                on_change=self._runners[e.name].ledger.breaker_changed,
            )
        return EndpointGuards(
            e.name,
            self._clock,
            self.events.emit,
            breaker=breaker,
            throttle=AdaptiveThrottle(max_pause=api.retry.max_retry_after)
            if api.adaptive_rate
            else None,
            budget=self._budget,
            adaptive=self._adaptive.get(e.name),
        )

    def _budget_watch(self, e: EndpointConfig) -> BudgetWatch | None:
        limiters: list[Watched] = (
            [self._own_limiters[e.name]] if e.name in self._own_limiters else []
        )
        if self._budget is not None and self._budget.usage():  # a pause alone is no used-up budget
            limiters.append(self._budget)
        if not limiters:
            return None
        api = self.config.api
        stop = self._stop_for_budget if api.on_budget_exhausted == "stop" else None
        return BudgetWatch(
            limiters, self._clock, self.events, threshold=api.budget_wait_threshold, stop=stop
        )

    def _stop_for_budget(self, reason: str) -> None:
        if not self._stopping:
            self._stop_reason = reason
            self.stop()

    def _make_limits(self) -> None:
        """The run's clock and, unless one was given, the API's budget on it (made when the
        run's loop is known). With no windows configured the budget only pauses: a 429 still
        needs a shared budget to pause."""
        if not self._clock_given:
            self._clock = BoundLoopClock(asyncio.get_running_loop())
        if self._budget_given is None:
            self._budget = Budget(self.config.api.rate_limits, clock=self._clock, name="api")

    async def run(self) -> RunResult:
        """Run to the end (or a stop) holding the output folder; see the class docstring.

        Raises :class:`OutputLocked` at once when another run holds the output folder.
        """
        if self._phase != "new":
            raise RuntimeError(f"{self!r} has run already: an engine runs once")
        self._phase = "stopping" if self._stopping else "running"
        try:
            if self._ephemeral:  # output: none, no state_dir: state for this run only
                self.output = Path(
                    await asyncio.to_thread(tempfile.mkdtemp, prefix="asyncingest-state-")
                )
            lock = OutputLock(self.output)
            try:
                lock.acquire()  # before anything reads the state or --fresh deletes anything
                result = await self._run()
            except asyncio.CancelledError:
                self._phase = "cancelled"
                raise
            except OSError as exc:  # a full disk, a read-only output: not a bug, not the config
                self._phase = "failed"
                raise environment_failure(exc, self.output) from exc
            except BaseException:
                self._phase = "failed"
                raise
            finally:
                lock.release()
                if self._started_at is not None:
                    self._ended_at = self._clock.time()
                if self._ephemeral:
                    await asyncio.shield(
                        asyncio.to_thread(shutil.rmtree, self.output, ignore_errors=True)
                    )
        except BaseException as exc:
            self._end_taps(exc)
            raise
        self._end_taps(None)
        self._result = result
        self._phase = "stopped" if result.stopped else "finished"
        return result

    @property
    def result(self) -> RunResult | None:
        """What the run did, once it has ended (a cancelled run's too: ``cancelled`` is true);
        None before, and after a failure that ended it before it began."""
        return self._result

    async def _run(self) -> RunResult:
        cfg = self.config
        self._wall_start = self._clock.wall()
        self._make_limits()
        credentials = credentials_from_env(cfg)
        for e in cfg.endpoints:
            if e.from_file is not None:
                check_ids_file(e.from_file)
        self.output.mkdir(parents=True, exist_ok=True)
        start = await asyncio.to_thread(
            prepare, cfg, self.output, fresh=self._fresh, retry_failed=self._retry_failed
        )
        state = self._state = start.state
        folders = {e.name: e.name for e in cfg.endpoints}
        folders.update({f: f for e in cfg.endpoints if (f := e.transform_folder)})
        # output: none has no Parquet folders: nothing to clean up or compact.
        parquet = {} if self.batches_only else folders
        # A compaction cut short by a kill is finished first (it was committed), or its
        # staging files deleted (it was not); an output already complete gets it done now.
        if await asyncio.to_thread(recover, self.output, state):
            await asyncio.to_thread(save_state, self.output, state)
        increment = await self._start_increment(state, parquet)
        if start.already_complete and increment is None:
            merged = await self._compact(list(parquet))
            dead, refused = await asyncio.to_thread(dead_letters_left, self.output, state)
            return RunResult(
                self.run_id,
                str(self.output),
                (),
                0.0,
                note="already complete",
                compacted=merged,
                dead_requests=dead,
                dead_records=refused,
            )
        resumed = start.resumed
        if increment is not None:  # a new increment's windows, or the one under way (resumed)
            self._increment = increment
            resumed = resumed and not self._began_increment
        await asyncio.to_thread(discard_uncommitted, self.output, state, parquet)
        self._prior_files = {f: list(state.endpoint(f).files) for f in folders}
        state.status = "running"
        state.runs.append(self.run_id)
        await asyncio.to_thread(save_state, self.output, state)

        started = self._started_at = self._clock.time()
        policy = retry_policy(cfg.api.retry)
        options = SinkOptions(
            compression=cfg.output.compression,
            row_group_rows=cfg.output.row_group_rows,
            max_rows_per_file=cfg.output.max_rows_per_file,
        )
        cancelled = failed = False
        left = (0, 0)  # dead letters the finished output holds
        compacted: tuple[Compaction, ...] = ()
        pool: TransformPool | None = None
        if any(e.transform for e in cfg.endpoints):
            pool = self._shared_pool or TransformPool(cfg.api.concurrency.cpu_workers)
        async with contextlib.AsyncExitStack() as stack:
            if pool is not None and pool is not self._shared_pool:
                await stack.enter_async_context(pool)
            client = await stack.enter_async_context(
                HttpClient(cfg.api, credentials, clock=self._clock)
            )
            # Every writer's file work (Arrow conversion, Parquet, fsync) on one thread: the
            # memory a conversion frees stays in one thread's heap instead of growing a heap
            # in each of the default executor's threads over a long run (measured: about
            # 10 MB lower peak RSS on a 1,000,000-id fan-out).
            files = ThreadPoolExecutor(1, thread_name_prefix="asyncingest-files")
            stack.callback(files.shutdown, wait=False)
            self._files = files
            self._build_runners(client, pool, options, policy, files)
            if self._stopping:
                self.stop()
            self.events.emit(
                RunStarted(
                    self.run_id,
                    tuple(self._runners),
                    str(self.output),
                    tuple(str(w) for w in cfg.api.rate_limits),
                )
            )
            summary = self._increment_summary()
            if summary is not None:
                self.events.emit(IncrementStarted(summary, resumed))
            trees = asyncio.Semaphore(cfg.api.concurrency.endpoints)
            roots = [e for e in cfg.order() if e.parent is None]
            # The endpoints run in a task of their own, so that a cancellation of this one
            # reaches _halt() before it reaches them (their writers must still be there).
            work = asyncio.create_task(self._work(roots, trees), name=f"{self.run_id}-work")
            try:
                try:
                    await asyncio.wait((work,))
                except asyncio.CancelledError:
                    cancelled = True
                    await self._halt(work, files)
                    raise
                work.result()  # the first error of an endpoint or a checkpoint, if any
                await self._checkpoint(final=True)
                compacted = await self._compact(list(parquet))
                if self._increment is not None and state.status == "complete":
                    await self._rebuild_current(self._increment)
                if state.status == "complete":
                    left = await asyncio.to_thread(dead_letters_left, self.output, state)
            except asyncio.CancelledError:
                cancelled = True
                raise
            except BaseException as exc:
                failed = True
                await asyncio.shield(self._quiet_files(files))
                if isinstance(exc, BaseExceptionGroup):  # an endpoint failed: its own error
                    raise first_cause(exc) from None
                raise
            finally:
                for r in self._runners.values():
                    if r.journal is not None:
                        r.journal.close()
                result = RunResult(
                    run_id=self.run_id,
                    output=str(self.output),
                    endpoints=tuple(r.stats.summary() for r in self._runners.values()),
                    duration=self._clock.time() - started,
                    cancelled=cancelled,
                    stopped=self._stopping and not cancelled,
                    note=self._stop_reason or ("resumed" if resumed else ""),
                    dead_requests=left[0],
                    dead_records=left[1],
                    compacted=compacted,
                    increment=self._increment_summary(),
                )
                self._result = result
                try:
                    await asyncio.shield(asyncio.to_thread(self._write_report, result))
                except OSError:
                    if not (failed or cancelled):
                        raise  # else the failure that ended the run is the one to report
        self.events.emit(RunFinished(result))
        return result

    async def _work(self, roots: list[EndpointConfig], trees: asyncio.Semaphore) -> None:
        """Every endpoint tree, and the periodic checkpoints, until all are done."""
        async with asyncio.TaskGroup() as tg:
            # In the group: a checkpoint that cannot be saved (a full disk) stops the run at
            # once with its error, as a failing endpoint does.
            self._checkpointer = tg.create_task(
                self._checkpoint_every(self.config.output.checkpoint_seconds), name="checkpoints"
            )
            await self._run_trees(roots, trees)
            self._checkpointer.cancel()

    async def _halt(self, work: asyncio.Task[None], files: ThreadPoolExecutor) -> None:
        """The run was cancelled: stop at once, keep what is safe (docs/architecture.md,
        "Stopping and cancelling").

        Requests in flight and waits on the limits or a back-off are dropped: the next run asks
        for those pages again. Pages already handed to the writers are committed by one last
        checkpoint, given ``CANCEL_SAVE_SECONDS`` at most; past that (a hung disk), or if it
        fails, the previous checkpoint stands (at most ``output.checkpoint_seconds`` of work is
        redone). Then every task of the run ends and the staging files are removed. This waits
        for all of that, whatever further cancellations arrive: it is bounded."""
        self._stopping = True
        self._phase = "stopping"
        # Readers of batches() get RunCancelled now; a writer holding batches nobody will
        # take fails the last checkpoint at once (it may name only delivered work), so the
        # one before stands: with a state_dir, right after the last delivered batch.
        self._end_taps(asyncio.CancelledError())
        if self._checkpointer is not None:
            self._checkpointer.cancel()  # shielded: a checkpoint under way finishes first
        for r in self._runners.values():
            r.halt()
        if not await _bounded(self._save_halted(), CANCEL_SAVE_SECONDS):
            log.warning(
                "%s: cancelled; what the writers held could not be committed (within %gs); "
                "the checkpoint before stands",
                self.run_id,
                CANCEL_SAVE_SECONDS,
            )
        work.cancel()
        for r in self._runners.values():
            if r.writer.task is not None:
                r.writer.task.cancel()
        await _bounded(asyncio.wait((work,)), None)
        if not work.cancelled():
            work.exception()  # seen: the cancellation is what this run reports
        await _bounded(self._quiet_files(files), None)

    async def _save_halted(self) -> None:
        """Once no worker is left, barrier every writer: what they were handed is committed."""
        workers = [t for r in self._runners.values() for t in r.workers]
        if workers:
            await asyncio.wait(workers)
        await self._checkpoint(final=True)

    def _build_runners(
        self,
        client: HttpClient,
        pool: TransformPool | None,
        options: SinkOptions,
        policy: RetryPolicy,
        files: Executor,
    ) -> None:
        """One runner per endpoint (parents first), linked to its children, with its sinks,
        journal, limits, guards and, for a transform, the CPU stage in its writer."""
        cfg, state = self.config, self._state
        assert state is not None
        base = base_url_of(str(cfg.api.base_url))
        for e in cfg.order():
            journal = None
            if e.for_each is not None:
                es = state.endpoint(e.name)
                journal = Journal(self.output, e.name)
                journal.open(es.journal_lines, es.journal_bytes)
            workers = e.concurrency or cfg.api.concurrency.requests_per_endpoint
            sink: ParquetSink | BatchSink
            if self.batches_only:
                sink = BatchSink(self.output, e.name, e.schema_, e.columns)
            else:
                sink = ParquetSink(
                    *self._sink_place(e.name),
                    options,
                    e.schema_,
                    e.columns,
                    seed_from=self._earlier_partition(e.name),
                )
            endpoint = e
            window = self._increment.windows.get(e.name) if self._increment is not None else None
            if window is not None and e.incremental is not None:
                endpoint = bind_window(e, window.start, window.end)
            self._runners[e.name] = EndpointRunner(
                endpoint,
                base_url=base,
                client=client,
                limits=self._limits_for(e, workers),
                policy=policy,
                sink=sink,
                dead_letters=DeadLetters(self.output, e.name),
                journal=journal,
                events=self.events,
                clock=self._clock,
                workers=workers,
                rng=random.Random(self._rng.random()),
                row_group_rows=cfg.output.row_group_rows,
                files=files,
            )
        for name, runner in self._runners.items():
            runner.link([self._runners[c.name] for c in cfg.children(name)])
            inc = runner.endpoint.incremental
            if inc is not None and self._increment is not None:
                runner.writer.cursor = CursorMax(inc, now=self._wall_start)
                window = self._increment.windows.get(name)
                if window is not None and inc.kind.timed and inc.future_tolerance is not None:
                    assert self._wall_start is not None
                    window.future_limit = self._wall_start + inc.future_tolerance
            t = runner.endpoint.transform
            if t is not None and pool is not None:
                folder = runner.endpoint.transform_folder
                assert folder is not None
                tsink = ParquetSink(
                    *self._sink_place(folder), options, seed_from=self._earlier_partition(folder)
                )
                runner.writer.attach_transform(pool, t, tsink, folder)
            tap = self._taps.get(name)
            if tap is not None:
                self._attach(runner, tap)
            runner.budget = self._budget_watch(runner.endpoint)
            runner.guards = self._guards_for(runner.endpoint)
            if self._increment is not None and any(_sweeps(c.endpoint) for c in runner.children):
                runner.before_finish = functools.partial(self._sweep_parents, runner)

    def _sink_place(self, folder: str) -> tuple[Path, str]:
        """Where ``folder``'s sink writes: ``(output, folder)``, or for an incremental config
        ``(output/folder, increment=<n>)``, the increment's partition."""
        state = self._state
        assert state is not None
        place = state.folder_path(self.output, folder)
        return place.parent, place.name

    def _earlier_partition(self, folder: str) -> Path | None:
        """The newest earlier increment's partition of ``folder`` holding files: a new
        increment's sink starts from its column types, so the partitions agree (None: not
        incremental, or no earlier files)."""
        state = self._state
        assert state is not None
        for n in range(state.increment - 1, 0, -1):
            place = self.output / folder / partition_name(n)
            if any(place.glob("part-*.parquet")):
                return place
        return None

    # ------------------------------------------------------------------ increments

    async def _start_increment(self, state: RunState, parquet: dict[str, str]) -> Increment | None:
        """For an incremental config: finish what the last increment left (compaction, current
        tables), then begin the next increment, or return the one under way (resumed). None for
        a config that is not incremental (``full_refresh`` is refused there)."""
        cfg = self.config
        if not cfg.incremental:
            if self._full_refresh:
                raise ConfigError(
                    str(self.output),
                    [
                        Problem(
                            f"--full-refresh {self._full_refresh[0]}",
                            "no endpoint of this config is incremental: every run fetches "
                            "everything (or resumes)",
                        )
                    ],
                )
            return None
        if self._retry_failed and state.status == "complete":
            return None  # nothing was put back: the last increment stands; no new one
        last = state.current_increment
        finished = last is None or state.status == "complete"
        running = None if finished else last
        problems = check_full_refresh(cfg, self._full_refresh, running)
        if problems:
            raise ConfigError(str(self.output), problems)
        if running is not None:
            return running
        if last is not None:  # killed after the last increment's final save: finish its work
            if any(es.files for es in state.endpoints.values()):
                for c in await self._compact(list(parquet)):
                    log.info("increment %d: %s", last.number, c)
            await self._rebuild_current(last)
        dead = await asyncio.to_thread(dead_requests_by_endpoint, self.output, state)
        new = begin_increment(cfg, state, self._full_refresh, dead)
        self._began_increment = True
        self._compacted.clear()  # the last increment's compactions are not this run's
        await asyncio.to_thread(save_state, self.output, state)
        return new

    async def _rebuild_current(self, increment: Increment) -> None:
        """Rebuild the current table of every ``merge: latest`` endpoint whose rebuild for
        ``increment`` is pending, from the increment's committed files; each one done is
        saved in the state. Idempotent: a rebuild a kill interrupted is redone."""
        state = self._state
        assert state is not None
        for e in self.config.endpoints:
            window = increment.windows.get(e.name)
            if window is None or window.current != "pending":
                continue
            # A --retry-failed that reopened a completed increment (revision > 0) and made no
            # record durable leaves the published table as it is.
            unchanged = window.revision > 0 and window.rows == window.built_rows
            if not unchanged and (
                state.endpoint(e.name).files or window.full_refresh or increment.number == 1
            ):
                # (Else nothing changes: the table stays at its version, and the next rebuild
                # merges onto it. The first increment publishes a table even when empty.)
                await asyncio.shield(asyncio.to_thread(self._rebuild_one, e, increment))
            window.built_rows = window.rows
            window.current = "done"
            await asyncio.shield(asyncio.to_thread(save_state, self.output, state))

    def _rebuild_one(self, e: EndpointConfig, increment: Increment) -> None:
        """One endpoint's current table from ``increment``'s files (state/current.py)."""
        from ..state.current import rebuild_current

        state = self._state
        assert state is not None and e.incremental is not None
        folder = self.output / e.name / increment.folder
        files = [folder / name for name in state.endpoint(e.name).files]
        inc = e.incremental
        assert inc.cursor_type is not None
        rebuild_current(
            self.output,
            e.name,
            increment.number,
            files,
            primary_key=e.primary_key,
            cursor_field=inc.cursor_field,
            cursor_type=inc.cursor_type,
            deleted_field=inc.deleted_field,
            replace=increment.windows[e.name].full_refresh,
            options=CompactOptions.from_config(self.config.output),
            revision=increment.windows[e.name].revision,
            future_limit=increment.windows[e.name].future_limit,
        )

    async def _sweep_parents(self, runner: EndpointRunner) -> None:
        """``for_each: {parents: all}``: once ``runner`` (a ``merge: latest`` parent) has walked
        its window, give its ``parents: all`` children a job for every row of its current
        table (the version published when the sweep began) whose key no record of this
        increment has (those had their jobs from the pages, at their new version).

        The increment's keys are read back from its committed files (a checkpoint first makes
        every record durable), so memory follows the increment; the table is streamed in
        ``row_group_rows`` batches in a fixed order, and ``Window.swept`` counts the rows
        swept in the saves that commit their jobs' journal lines: a resumed run goes on where
        the last save left it, and a finished sweep is not done again (``--retry-failed``)."""
        from ..state.current import published_folder, sweep_rows, table_keys

        state, increment = self._state, self._increment
        assert state is not None and increment is not None
        e = runner.endpoint
        window = increment.windows[runner.name]
        if window.full_refresh:
            return  # the increment holds every parent key now: the pages gave every job
        if window.sweep is None:
            published = await asyncio.to_thread(published_folder, self.output, e.name)
            if published is None:
                return  # the first increment: every parent is a record of it
            window.sweep, window.sweep_rows = published
        if window.swept >= window.sweep_rows:
            return
        await self._checkpoint()  # the increment's parent records durable, in its files
        folder = self.output / e.name / increment.folder
        files = [folder / n for n in state.endpoint(e.name).files]
        keys = await asyncio.to_thread(table_keys, files, e.primary_key)
        links = [c for c in runner.children if _sweeps(c.endpoint)]
        fields = [p for c in links for p in _for_each_paths(c.endpoint)]
        batches = sweep_rows(
            self.output,
            window.sweep,
            fields,
            e.primary_key,
            self.config.output.row_group_rows,
            window.swept,
        )
        names = {c.name for c in links}
        by_name = {c.name: c for c in links}
        while not runner.stopping:
            batch = await asyncio.to_thread(next, batches, None)
            if batch is None:
                break
            rows, row_keys, consumed = batch
            todo = [r for r, k in zip(rows, row_keys, strict=True) if k not in keys]
            children = await runner.writer.put_children(todo, consumed, names)
            for link, jobs in children:
                child = by_name[link.name]
                await child.submit_many(jobs)
                child.ledger.jobs_queued(len(jobs))
            crash_point("sweep")

    def _cursor_ahead(self, runner: EndpointRunner, records: int, value: Any) -> None:
        """Report records whose cursor was beyond the run's start + ``future_tolerance``."""
        inc = runner.endpoint.incremental
        cursor = runner.writer.cursor
        assert inc is not None and cursor is not None
        limit = None if cursor.limit is None else inc.kind.to_json(cursor.limit)
        self.events.emit(CursorAhead(runner.name, str(inc.cursor_field), value, limit, records))

    def _increment_summary(self) -> IncrementSummary | None:
        """The increment this run ran, for the result and the report."""
        inc = self._increment
        if inc is None:
            return None
        windows = tuple(
            WindowSummary(
                endpoint=name,
                incremental=w.incremental,
                start=w.start,
                end=w.end,
                high=w.high,
                rows=w.rows,
                full_refresh=w.full_refresh,
                skipped=w.skipped,
                held=w.held,
                unreadable=w.unreadable,
                parent=w.parent,
                future=w.future,
                all_parents=w.all_parents,
            )
            for name, w in inc.windows.items()
        )
        return IncrementSummary(inc.number, inc.status == "complete", windows)

    # ------------------------------------------------------------------ checkpoints

    async def _checkpoint_every(self, seconds: float) -> None:
        while True:
            await self._next_checkpoint(seconds)
            # Shielded: a checkpoint holds tokens handed out once; cancelling it half way
            # would lose them. The final checkpoint waits for it on the lock, and so does
            # the clean-up after a failure or a cancel (_quiet_files) before it shuts the file
            # thread down. Left alone by a cancel, its own error (if any) is not the run's: the
            # run ends with the error that cancelled it.
            checkpoint = asyncio.ensure_future(self._checkpoint())
            checkpoint.add_done_callback(_retrieve)
            await asyncio.shield(checkpoint)

    async def _quiet_files(self, files: ThreadPoolExecutor) -> None:
        """After a failure or a cancel: let a checkpoint under way finish with the file thread
        (it is shielded), then shut it down and delete every staging file."""
        async with self._checkpoint_lock:
            pass
        await asyncio.to_thread(self._abandon_files, files)

    async def _checkpoint(self, final: bool = False) -> None:
        """Barrier every writer at once, then save a state naming only durable work."""
        state = self._state
        assert state is not None
        async with self._checkpoint_lock:
            runners = list(self._runners.values())
            futures = [r.writer.barrier() for r in runners]  # one synchronous step
            results = await asyncio.gather(*futures)
            complete = final and not self._stopping
            increment = self._increment
            for r, res in zip(runners, results, strict=True):
                apply(state, r.name, self._prior_files[r.name], res, complete)
                if increment is not None and r.name in increment.windows:
                    window = increment.windows[r.name]
                    fold_high(self.config, window, r.name, res.cursor, res.rows)
                    window.unreadable += res.unreadable
                    window.swept += res.swept
                    if res.future:
                        window.future += res.future
                        self._cursor_ahead(r, res.future, res.future_value)
                for folder, names in res.extra_files.items():
                    prior = self._prior_files[folder]
                    state.endpoint(folder).files = prior + [n for n in names if n not in prior]
            for folder, gone in self._merged_away.items():  # a sink still lists them
                es = state.endpoint(folder)
                es.files = [f for f in es.files if f not in gone]
            if final:
                state.status = "complete" if complete else "interrupted"
                state.note = self._stop_reason
                if complete and increment is not None:
                    # The marks move in the save that completes the increment (checkpoint rule).
                    dead = await asyncio.to_thread(dead_requests_by_endpoint, self.output, state)
                    complete_increment(self.config, state, dead)
            await asyncio.shield(asyncio.to_thread(save_state, self.output, state))
            for r in runners:
                if r.writer.tap is not None:
                    r.writer.tap.saved_through(r.writer.answered_batches)
            if not final:
                await asyncio.shield(self._compact_running())

    async def _compact_running(self) -> None:
        """After a checkpoint: merge each folder's small committed files once they add up to
        ``min_rows_per_file`` rows, on the file thread (serialized with the sinks' work)."""
        state = self._state
        assert state is not None
        options = CompactOptions.from_config(self.config.output)
        loop = asyncio.get_running_loop()
        for r in self._runners.values():
            # The state's folder names (a sink's directory may be an increment's partition).
            sinks = [(r.name, r.writer.sink)]
            if r.writer.tsink is not None:
                sinks.append((r.writer.tfolder, r.writer.tsink))
            for folder, sink in sinks:
                if not isinstance(sink, ParquetSink):
                    continue  # output: none
                before = list(state.endpoint(folder).files)
                done = await loop.run_in_executor(
                    self._files,
                    compact_running,
                    self.output,
                    state,
                    folder,
                    options,
                    sink,
                    self._known_files.setdefault(folder, {}),
                )
                if done is not None:
                    now = state.endpoint(folder).files
                    self._merged_away.setdefault(folder, set()).update(set(before) - set(now))
                    self._prior_files[folder] = list(now)
                    self._note_compaction(done)

    def _note_compaction(self, c: Compaction) -> None:
        """Add a compaction to the run's per-folder totals (files saved, rows rewritten)."""
        saved, rows = self._compacted.get(c.folder, (0, 0))
        self._compacted[c.folder] = (saved + c.compacted_from - c.files, rows + c.rows)

    def _compaction_report(self) -> tuple[Compaction, ...]:
        """Per folder compacted during this run: its files now and without compaction."""
        assert self._state is not None
        out = []
        for folder, (saved, rows) in self._compacted.items():
            files = len(self._state.endpoint(folder).files)
            out.append(Compaction(folder, files, files + saved, rows))
        return tuple(out)

    def _abandon_files(self, files: ThreadPoolExecutor) -> None:
        """After a failure: wait for the file thread, then delete every staging file."""
        files.shutdown(wait=True, cancel_futures=True)
        for r in self._runners.values():
            r.writer.abandon()

    async def _compact(self, folders: list[str]) -> tuple[Compaction, ...]:
        """Merge each folder's small committed files (after the final checkpoint: the state
        and the files no longer change). Shielded: a commit is not left half done. Returns
        what this run compacted, during the run and now."""
        assert self._state is not None
        options = CompactOptions.from_config(self.config.output)
        done = await asyncio.shield(
            asyncio.to_thread(compact_folders, self.output, self._state, folders, options)
        )
        for c in done:
            self._note_compaction(c)
        return self._compaction_report()

    def _write_report(self, result: RunResult) -> None:
        assert self._state is not None
        write_run_report(self.output, self._state.status, result)

    # ------------------------------------------------------------------ the graph

    async def _run_trees(self, roots: list[EndpointConfig], trees: asyncio.Semaphore) -> None:
        async with asyncio.TaskGroup() as tg:
            for root in roots:
                tg.create_task(self._run_tree(root, trees), name=f"tree-{root.name}")

    async def _run_tree(self, root: EndpointConfig, trees: asyncio.Semaphore) -> None:
        async with trees, asyncio.TaskGroup() as tg:
            for runner in self._tree(root.name):
                tg.create_task(self._run_endpoint(runner), name=f"endpoint-{runner.name}")
                if runner.endpoint.for_each is not None:
                    tg.create_task(self._replay_backlog(runner))
            tg.create_task(self._feed_root(self._runners[root.name]))

    def _tree(self, name: str) -> list[EndpointRunner]:
        runner = self._runners[name]
        out = [runner]
        for child in runner.children:
            out.extend(self._tree(child.name))
        return out

    async def _run_endpoint(self, runner: EndpointRunner) -> None:
        total = None
        if runner.endpoint.from_file is not None:
            total = await asyncio.to_thread(count_ids, runner.endpoint.from_file)
            if total is not None and self._state is not None:
                total = max(0, total - len(self._state.endpoint(runner.name).done))
        self.events.emit(EndpointStarted(runner.name, runner.endpoint.parent, total))
        await runner.run()
        if runner.halted:
            return  # cancelled: _halt() ends the rest
        # Everything this endpoint will ever produce has been handed to its children.
        for child in runner.children:
            await child.producer_done()
        self.events.emit(EndpointFinished(runner.stats.summary()))

    def _plan(self, runner: EndpointRunner) -> JobPlan:
        assert self._state is not None
        return JobPlan(self._state.endpoint(runner.name))

    def _planned(self, plan: JobPlan, jobs: list[Job]) -> list[Job]:
        """``jobs`` less those done, with part-way walks continuing where they stopped."""
        if plan.empty:  # a fresh start: every job is new
            return jobs
        out = []
        for job in jobs:
            point = plan.resume_point(job.number)
            if point is False:
                continue
            if isinstance(point, Request):
                job = Job(job.number, job.variables, job.copy, resume=point)
            out.append(job)
        return out

    async def _feed_root(self, runner: EndpointRunner) -> None:
        spec = runner.endpoint.from_file
        plan = self._plan(runner)
        increment = self._increment
        if increment is not None and increment.windows[runner.name].skipped:
            await runner.producer_done()  # a bounded backfill already done: nothing to fetch
            return
        if spec is None:
            await runner.submit_many(self._planned(plan, [Job(0, {})]))
        else:
            var, copy_field = spec.variable, spec.variable if spec.copy_id else None
            if spec.copy_fields:  # each line's own fields copied too (a scale-out child shard)
                await self._feed_rows(runner, spec, plan)
                return
            chunks = iter_ids(spec)
            while (
                not self._stopping
                and (chunk := await asyncio.to_thread(next, chunks, None)) is not None
            ):
                if copy_field:
                    jobs = [Job(row, {var: value}, {copy_field: value}) for row, value in chunk]
                else:
                    jobs = [Job(row, {var: value}) for row, value in chunk]
                queued = await runner.submit_many(self._planned(plan, jobs))
                if queued:
                    self.events.emit(JobsQueued(runner.name, queued))
        # Not in a `finally`: on cancellation the workers are gone and nobody would drain it.
        await runner.producer_done()

    async def _feed_rows(self, runner: EndpointRunner, spec: FromFile, plan: JobPlan) -> None:
        """Feed a ``from_file`` root whose lines carry ``copy`` fields (JSONL)."""
        var, copy_field = spec.variable, spec.variable if spec.copy_id else None
        chunks = iter_id_rows(spec)
        while not self._stopping and (chunk := await asyncio.to_thread(next, chunks, None)):
            jobs = [
                Job(row, {var: value}, {**({copy_field: value} if copy_field else {}), **extra})
                for row, value, extra in chunk
            ]
            queued = await runner.submit_many(self._planned(plan, jobs))
            if queued:
                self.events.emit(JobsQueued(runner.name, queued))
        await runner.producer_done()

    async def _replay_backlog(self, runner: EndpointRunner) -> None:
        """Child jobs journaled by an earlier run and not done yet."""
        assert runner.journal is not None
        lines = runner.journal.lines
        runner.producers += 1
        plan = self._plan(runner)
        entries = iter(runner.journal.replay(lines))
        queued = 0
        while not self._stopping:
            batch = await asyncio.to_thread(list, itertools.islice(entries, 2_000))
            if not batch:
                break
            jobs = [Job(n, variables, copy) for n, variables, copy in batch]
            queued += await runner.submit_many(self._planned(plan, jobs))
        if queued:
            self.events.emit(JobsQueued(runner.name, queued))
        await runner.producer_done()


def _sweeps(e: EndpointConfig) -> bool:
    """Whether ``e`` is a ``for_each`` child with ``parents: all``."""
    return e.for_each is not None and e.for_each.parents == "all"


def _for_each_paths(e: EndpointConfig) -> list[str]:
    """The parent fields a ``for_each`` child binds and copies."""
    spec = e.for_each
    assert spec is not None
    return [*spec.bind.values(), *spec.copy_fields.values()]


async def _bounded(aw: Awaitable[object], seconds: float | None) -> bool:
    """Await ``aw`` for at most ``seconds`` of loop time (None: no limit), letting no
    cancellation of the caller interrupt it; on time out it is cancelled and awaited. True when
    it completed without an error."""
    task = asyncio.ensure_future(aw)
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    while not task.done():
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            task.cancel()
            deadline = None  # now wait for it to unwind
            continue
        try:
            await asyncio.wait((task,), timeout=left)
        except asyncio.CancelledError:
            continue  # already stopping at once; this is the bounded part of it
    if task.cancelled():
        return False
    if (error := task.exception()) is not None:
        log.warning("while stopping at once: %r", error)
        return False
    return True


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


def first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error in a (nested) task-group error: what actually went wrong."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_cause(exc)
        return exc
    return group
