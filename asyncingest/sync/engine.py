"""The thread-pool engine: the same ``PipelineConfig`` run the classic way.

Data flow (docs/architecture.md, with threads for coroutines): config -> limits (blocking
twins) + a ``requests`` client -> one ``SyncEndpoint`` per endpoint -> one
``ThreadPoolExecutor(max_workers)`` whose threads loop over the ``Scheduler``'s per-endpoint
queues (children first; a full child queue is run inline, never waited on) -> roots fed by
feeder threads, ``concurrency.endpoints`` trees at a time -> records to each endpoint's
Parquet sink -> a ``RunResult``.

Thread safety: each endpoint's counters, dead letters and events go through its
``EndpointLedger`` under the endpoint's lock; events reach subscribers one at a time
(:class:`LockedBus`); the sink is written under its own lock; limiters and the scheduler lock
themselves. Lock order, to stay deadlock-free: endpoint lock, then the bus lock; no other
lock is held while waiting.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

from ..config.models import EndpointConfig, PipelineConfig
from ..config.sources import check_ids_file, count_ids, iter_ids
from ..core.events import (
    EndpointFinished,
    EndpointStarted,
    Event,
    EventBus,
    RunFinished,
    RunStarted,
    Subscriber,
)
from ..core.records import Job
from ..core.request import base_url_of
from ..core.result import RunResult
from ..core.retry import retry_policy
from ..errors import ConfigError, Problem, environment_failure
from ..http.client import credentials_from_env
from ..sink.deadletter import DeadLetters
from ..sink.parquet import ParquetSink, SinkOptions
from ..state.checkpoint import has_data, load_state, wipe
from ..state.ledger import EndpointLedger
from ..state.lock import OutputLock
from ..state.resume import write_run_report
from .endpoint import Aborted, SyncEndpoint
from .http import SyncHttpClient
from .limiter import (
    LimiterClosed,
    ThreadConcurrencyLimit,
    ThreadLimit,
    ThreadLimits,
    ThreadSlidingWindowLimiter,
)
from .scheduler import Scheduler, SchedulerStopped

_STOPPING = (Aborted, SchedulerStopped, LimiterClosed)  # consequences of stopping, not causes


class LockedBus:
    """An ``EventBus`` whose ``emit`` may be called from any thread: subscribers see one event
    at a time, so a display written for the event loop works unchanged."""

    def __init__(self, subscribers: Iterable[Subscriber]) -> None:
        self._bus = EventBus(subscribers)
        self._lock = threading.Lock()
        self.listening = self._bus.listening  # per-request events only when someone listens

    def emit(self, event: Event) -> None:
        """Give ``event`` to the subscribers, one thread at a time (nothing without subscribers)."""
        if self._bus:
            with self._lock:
                self._bus.emit(event)


def default_workers(config: PipelineConfig) -> int:
    """As many threads as the async engine has worker coroutines (each endpoint's
    ``concurrency``, else ``requests_per_endpoint``), capped by ``http.max_connections``: the
    same requests in flight at most, one connection per thread."""
    api = config.api
    wanted = sum(e.concurrency or api.concurrency.requests_per_endpoint for e in config.endpoints)
    return max(1, min(wanted, api.http.max_connections))


class SyncEngine:
    """Runs one pipeline on threads. ``SyncEngine(cfg).run()`` blocks until it is done."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        output: str | os.PathLike[str] | None = None,
        subscribers: Iterable[Subscriber] = (),
        max_workers: int | None = None,
        seed: int | None = None,
        fresh: bool = False,
    ) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.config = config
        self.output = Path(output if output is not None else config.output.directory)
        self.events = LockedBus(subscribers)
        self.max_workers = max_workers or default_workers(config)
        self.fresh = fresh
        self.rng = random.Random(seed)
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self.endpoints: dict[str, SyncEndpoint] = {}
        self.stop = threading.Event()
        self._limits: list[ThreadLimit] = []
        self._lock = threading.Lock()
        self._tree_of: dict[str, str] = {}
        self._tree_left: dict[str, int] = {}
        self._tree_done: dict[str, threading.Event] = {}
        self._scheduler: Scheduler | None = None

    def __repr__(self) -> str:
        return (
            f"SyncEngine(run_id={self.run_id}, output={self.output}, "
            f"max_workers={self.max_workers}, scheduler={self._scheduler!r})"
        )

    def run(self) -> RunResult:
        """Run to the end holding the output folder (``OutputLocked`` when another run does)."""
        problems = unsupported(self.config)
        if problems:  # refused rather than silently run without them, before touching disk
            raise ConfigError("--mode sync", problems)
        lock = OutputLock(self.output)
        try:
            lock.acquire()  # before --fresh deletes anything or the output is checked
            return self._run()
        except OSError as exc:  # a full disk, a read-only output: not a bug, not the config
            raise environment_failure(exc, self.output, resumes=False) from exc
        finally:
            lock.release()

    def _run(self) -> RunResult:
        cfg = self.config
        credentials = credentials_from_env(cfg)
        for e in cfg.endpoints:
            if e.from_file is not None:
                check_ids_file(e.from_file)
        self.output.mkdir(parents=True, exist_ok=True)
        self._prepare_output()
        started = time.monotonic()
        client = SyncHttpClient(cfg.api, credentials)
        errors: list[BaseException] = []
        try:
            self._build(client)
            scheduler = self._scheduler
            assert scheduler is not None
            self.events.emit(
                RunStarted(
                    self.run_id,
                    tuple(self.endpoints),
                    str(self.output),
                    tuple(str(w) for w in cfg.api.rate_limits),
                )
            )
            roots = [e for e in cfg.order() if e.parent is None]
            with (
                ThreadPoolExecutor(self.max_workers, "asyncingest-worker") as pool,
                ThreadPoolExecutor(cfg.api.concurrency.endpoints, "asyncingest-feeder") as feeders,
            ):
                futures: list[Future[None]] = [
                    pool.submit(scheduler.work) for _ in range(self.max_workers)
                ]
                futures += [feeders.submit(self._run_tree, root.name) for root in roots]
                try:
                    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                except BaseException:  # KeyboardInterrupt: stop, let the threads finish
                    self._abort()
                    raise
                errors = [exc for f in done if (exc := f.exception()) is not None]
                if errors:
                    self._abort()
            if errors:
                causes = [e for e in errors if not isinstance(e, _STOPPING)]
                raise (causes or errors)[0]
        except BaseException:
            # Every thread has finished (the pools are shut down): as the async engine after
            # a failure (a full disk), staging files go and committed files stay.
            for ep in self.endpoints.values():
                ep.writer.abandon()
            raise
        finally:
            client.close()
            for ep in self.endpoints.values():
                ep.dead.close()
        result = RunResult(
            run_id=self.run_id,
            output=str(self.output),
            endpoints=tuple(ep.ledger.summary() for ep in self.endpoints.values()),
            duration=time.monotonic() - started,
        )
        write_run_report(self.output, "complete", result)
        self.events.emit(RunFinished(result))
        return result

    # -- wiring -------------------------------------------------------------------------------

    def _prepare_output(self) -> None:
        """Sync mode keeps no checkpoint, so it cannot resume: it refuses an output that holds
        an earlier run (which it would duplicate), as the async engine refuses data without
        state. ``fresh`` deletes what ``--fresh`` deletes, first. (Async-only settings the
        config asks for were refused before the output was locked: :func:`unsupported`.)"""
        folders = [e.name for e in self.config.endpoints]
        if self.fresh:
            wipe(self.output, folders)
        elif load_state(self.output) is not None or has_data(self.output, folders):
            problem = Problem(
                "output",
                "holds an earlier run; sync mode does not resume, so a run here could "
                "duplicate its records; use --fresh to replace it, or another --output",
            )
            raise ConfigError(str(self.output), [problem])

    def _build(self, client: SyncHttpClient) -> None:
        cfg = self.config
        api = cfg.api
        policy = retry_policy(api.retry)
        options = SinkOptions(
            compression=cfg.output.compression,
            row_group_rows=cfg.output.row_group_rows,
            max_rows_per_file=cfg.output.max_rows_per_file,
        )
        base = base_url_of(str(api.base_url))
        shared = (
            ThreadSlidingWindowLimiter(
                [(w.requests, w.per_seconds) for w in api.rate_limits], "api"
            )
            if api.rate_limits
            else None
        )
        lanes: list[tuple[str, int, int]] = []
        for e in cfg.order():
            workers = e.concurrency or api.concurrency.requests_per_endpoint
            ledger = EndpointLedger(
                e.name,
                self.events.emit,
                client.redact,
                lock=threading.Lock(),
                listening=self.events.listening,
            )
            self.endpoints[e.name] = SyncEndpoint(
                e,
                base_url=base,
                client=client,
                limits=self._limits_for(e, workers, shared),
                policy=policy,
                sink=ParquetSink(self.output, e.name, options, e.schema_, e.columns),
                dead_letters=DeadLetters(self.output, e.name),
                ledger=ledger,
                stop=self.stop,
                rng=random.Random(self.rng.random()),
                row_group_rows=cfg.output.row_group_rows,
            )
            root = e.name if e.parent is None else self._tree_of[e.parent]
            self._tree_of[e.name] = root
            self._tree_left[root] = self._tree_left.get(root, 0) + 1
            self._tree_done.setdefault(root, threading.Event())
            lanes.append((e.name, _depth(cfg, e), workers))
        # Per endpoint: at most 2 jobs queued per pool thread, as the async engine's 2 per worker.
        scheduler = Scheduler(
            lanes, max(2, 2 * self.max_workers), self._run_job, self._endpoint_done
        )
        for name, ep in self.endpoints.items():
            ep.link([self.endpoints[c.name] for c in cfg.children(name)], scheduler.submit)
        self._scheduler = scheduler

    def _limits_for(
        self, e: EndpointConfig, workers: int, shared: ThreadSlidingWindowLimiter | None
    ) -> ThreadLimit:
        # In-flight cap first, rate limits last (a window slot is taken closest to sending).
        parts: list[ThreadLimit] = [ThreadConcurrencyLimit(workers, e.name)]
        if e.rate_limits:
            windows = [(w.requests, w.per_seconds) for w in e.rate_limits]
            parts.append(ThreadSlidingWindowLimiter(windows, e.name))
        if shared is not None:
            parts.append(shared)
        self._limits.extend(parts)
        return ThreadLimits(parts)

    # -- running ------------------------------------------------------------------------------

    def _run_job(self, name: str, job: Job) -> None:
        self.endpoints[name].run_job(job)

    def _run_tree(self, root: str) -> None:
        """A feeder: start a tree, feed its root, hold the tree slot until the tree is done."""
        scheduler = self._scheduler
        assert scheduler is not None
        for name, ep in self.endpoints.items():
            if self._tree_of[name] == root:
                spec = ep.endpoint.from_file
                total = count_ids(spec) if spec is not None else None
                ep.ledger.started(time.monotonic())
                self.events.emit(EndpointStarted(name, ep.endpoint.parent, total))
        ep = self.endpoints[root]
        spec = ep.endpoint.from_file
        if spec is None:
            ep.ledger.jobs_submitted(1)
            scheduler.feed(root, Job(0, {}))
        else:
            copy_field = spec.variable if spec.copy_id else None
            for chunk in iter_ids(spec):
                ep.ledger.jobs_submitted(len(chunk))
                for row, value in chunk:
                    copy = {copy_field: value} if copy_field else {}
                    scheduler.feed(root, Job(row, {spec.variable: value}, copy))
                ep.ledger.jobs_queued(len(chunk))
        scheduler.close_input(root)
        self._tree_done[root].wait()

    def _endpoint_done(self, name: str) -> None:
        """Called once per endpoint, when its input is closed and its jobs are all done."""
        ep = self.endpoints[name]
        if self.stop.is_set():  # as the async engine on cancellation: no final commit
            ep.dead.close()
        else:
            ep.finish()
            self.events.emit(EndpointFinished(ep.ledger.summary()))
            assert self._scheduler is not None
            for child in self.config.children(name):
                self._scheduler.close_input(child.name)
        root = self._tree_of[name]
        with self._lock:
            self._tree_left[root] -= 1
            tree_done = not self._tree_left[root]
        if tree_done:
            self._tree_done[root].set()

    def _abort(self) -> None:
        """Stop everything: waits, sleeps and queues end; threads finish their request."""
        self.stop.set()
        if self._scheduler is not None:
            self._scheduler.stop()
        for limit in self._limits:
            limit.close()
        for event in self._tree_done.values():
            event.set()


def unsupported(config: PipelineConfig) -> list[Problem]:
    """What the config asks for that sync mode does not do, so it is refused, never ignored:
    the CPU stage, and the async engine's protections when the config *sets* them. The
    circuit breaker and adaptive rate are on by default; a default is not a request (sync
    mode would otherwise refuse every config), so only fields the user wrote count
    (``model_fields_set``), and writing ``circuit_breaker: null`` or ``adaptive_rate: false``
    is accepted: that is what sync mode does. See docs/sync-mode.md."""
    problems = [
        Problem(f"endpoints[{e.name}].transform", "not run in sync mode")
        for e in config.endpoints
        if e.transform is not None
    ]
    problems += [
        Problem(f"endpoints[{e.name}].from_file.copy", "not done in sync mode")
        for e in config.endpoints
        if e.from_file is not None and e.from_file.copy_fields
    ]
    problems += [
        Problem(
            f"endpoints[{e.name}].incremental",
            "not run in sync mode: it keeps no checkpoint, so no high-water mark to start the "
            "next increment from; run it in the async mode (without --mode sync)",
        )
        for e in config.endpoints
        if e.incremental is not None
    ]
    if config.output.format == "none":
        problems.append(
            Problem(
                "output.format",
                "none (Arrow batches through Pipeline.batches) is not available in sync mode",
            )
        )
    api = config.api
    why = "not available in sync mode (see docs/sync-mode.md)"
    if "circuit_breaker" in api.model_fields_set and api.circuit_breaker is not None:
        problems.append(Problem("api.circuit_breaker", f"{why}; remove it or set it to null"))
    if "adaptive_rate" in api.model_fields_set and api.adaptive_rate:
        problems.append(Problem("api.adaptive_rate", f"{why}; remove it or set it to false"))
    if api.on_budget_exhausted == "stop":
        problems.append(
            Problem("api.on_budget_exhausted", f"stop: {why}; sync mode waits for the budget")
        )
    if api.concurrency.adaptive:
        problems.append(Problem("api.concurrency.adaptive", why))
    return problems


def _depth(cfg: PipelineConfig, e: EndpointConfig) -> int:
    return 0 if e.parent is None else 1 + _depth(cfg, cfg.endpoint(e.parent))


def run_sync(
    config: PipelineConfig,
    *,
    output: str | os.PathLike[str] | None = None,
    subscribers: Iterable[Subscriber] = (),
    max_workers: int | None = None,
    fresh: bool = False,
) -> RunResult:
    """Run a pipeline on a pool of threads (``requests``, blocking limiter, ``time``-based
    backoff) and return what it did: the same records and ``RunResult`` as the async engine.

    ``max_workers`` defaults to :func:`default_workers`. Sync mode does not checkpoint, so it
    does not resume: an output holding an earlier run is refused unless ``fresh``.
    """
    engine = SyncEngine(
        config, output=output, subscribers=subscribers, max_workers=max_workers, fresh=fresh
    )
    return engine.run()
