"""The process pool behind the CPU stage: bytes in, bytes out, rebuilt when a worker dies.

:class:`TransformPool` owns one ``ProcessPoolExecutor`` for a whole run (every endpoint with a
transform shares it) and runs one batch per call of :meth:`TransformPool.run` through
``loop.run_in_executor``. :mod:`asyncingest.transform.pipe` (the ordered pipe inside each
endpoint's writer) decides what to send; this module decides how it crosses the process boundary
and what happens when a process dies.

What crosses the boundary
    The payload is the batch already encoded by the pipe with orjson (bytes), and the answer is
    the transform's output encoded with orjson in the worker (bytes) inside a small
    :class:`TransformOutcome`. Pickling ``bytes`` is a copy, so the executor's feeder and result
    threads (which share the GIL with the loop) only copy; the encode is one measured step on the
    loop (~0.08 ms for 500 records). Output that is not a list of JSON-able dicts fails *in the
    worker*, as that batch's error, not later in the Parquet sink. Exceptions are formatted to a
    string in the worker and returned as data, so an unpicklable exception cannot break the pool.

Start method: ``forkserver`` (``spawn`` where it does not exist)
    ``fork`` would copy a parent that runs an event loop, aiohttp sockets and threads
    (``asyncio.to_thread``, the Parquet writer): a lock another thread held at fork time stays
    locked forever in the child, which also inherits the open sockets. The fork server is a
    clean process started once per parent; each worker is a fork of it. This module is
    preloaded in the server (``set_forkserver_preload``, process-wide, only before the server
    starts), so a worker starts with the package imported: measured on 2 cores, a 2-worker pool
    is ready in ~20 ms once the server runs (first pool ~0.35-0.5 s, importing the package in
    the server) against ~0.3-0.45 s per pool without the preload or with ``spawn``. (CPython
    3.11's default preload of ``__main__`` never happens: it looks for a ``main_path`` key that
    ``get_preparation_data`` does not produce.) As with ``spawn``, workers re-import the main
    *script*, so a script that runs a pipeline needs ``if __name__ == "__main__":``; ``python -m
    asyncingest`` and the console script are fine. The server stays up until the parent exits
    (it is shared and holds no work); pool workers are its children.

Priority
    Workers run at niceness +10 (:data:`_WORKER_NICENESS`) so that, with as many workers as
    cores, the waking event loop takes a core from a worker instead of waiting for a scheduler
    slice. Measured on 2 cores, 2 workers, three runs each: timer-lag p99 ~4.3 ms at equal
    priority, ~2.9 ms at +10, throughput unchanged (the loop needs little CPU). Rare single
    spikes of ~20 ms remain either way, with under 2 ms of loop CPU: the VM ran something else.

Crashes
    A worker that dies (``os._exit``, SIGKILL from the OOM killer) breaks the executor: every
    batch in flight fails with ``BrokenProcessPool``. The first batch to see it swaps in a new
    executor at once (one loop step, so several failing batches never race: the others see that
    the generation changed), admissions pause while the new workers start in a thread, and each
    affected batch gets a *crashed* outcome; the pipe retries it. Retries run *isolated* (an
    exclusive admission through :class:`_Gate`: nothing else runs in the pool meanwhile), so a
    crash during a retry is that batch's own fault and innocent batches that happened to be in
    flight are never set aside.

Shutdown
    ``async with TransformPool(...)``: on a clean exit the executor is shut down and joined (in
    a thread, so the loop keeps running); on an exception or cancellation the workers are
    killed at once (their results are not wanted), then joined. No worker outlives the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.forkserver as forkserver
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson

from ..config.callables import REFERENCE, describe_error, load_callable
from ..core.json import dumps as json_dumps
from ..core.json import loads as json_loads
from ..errors import AsyncIngestError

__all__ = [
    "REFERENCE",
    "TransformError",
    "TransformOutcome",
    "TransformPool",
    "describe_error",
    "load_callable",
]

_CLOSED_UNDER_BATCH = "the transform pool was shut down with this batch in flight"
_OUTPUT_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_WORKER_NICENESS = 10
"""Workers yield to the event loop: a worker at equal priority can hold the loop's core for a
scheduler slice when the loop wakes. The loop needs little CPU, so the workers lose almost
nothing; on a busy machine the transforms yield and backpressure slows the fetching to match."""


class TransformError(AsyncIngestError):
    """The transform pool cannot start (its initializer failed or its workers died at once)."""


@dataclass(frozen=True, slots=True)
class TransformOutcome:
    """What one batch's run produced. Exactly one of ``output`` and ``error`` is set."""

    output: bytes | None
    """The transform's records, orjson-encoded (decode with :meth:`records`)."""
    error: str | None = None
    """``"ValueError: ..."`` when the transform (or its initializer) raised."""
    crashed: bool = False
    """The worker process died; the pool has been rebuilt and the batch may be retried."""
    seconds: float = 0.0
    """Time spent in the worker: decode, transform, encode."""

    def records(self) -> list[dict[str, Any]]:
        """The batch's output records; ValueError when the batch failed."""
        if self.output is None:
            raise ValueError(f"no output: {self.error}")
        out: list[dict[str, Any]] = json_loads(self.output)  # integers beyond 64 bits exact
        return out


# ------------------------------------------------------------------ inside a worker process

_FUNCTIONS: dict[str, Callable[..., Any]] = {}
_INITIALIZED: dict[str, str | None] = {}  # initializer ref -> None (ran) or its error


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies, even by
    SIGKILL (an OOM kill, ``kill -9``), so a killed run leaves no orphan workers behind.
    Elsewhere a no-op: workers then exit when their call queue breaks."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _worker_start(initializer: str | None) -> None:
    """Runs once when a worker process starts."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it shuts us
    if hasattr(os, "nice"):  # not on Windows
        os.nice(_WORKER_NICENESS)
    if initializer:
        _initialize(initializer)


def _initialize(ref: str) -> str | None:
    if ref not in _INITIALIZED:
        try:
            load_callable(ref)()
            _INITIALIZED[ref] = None
        except (Exception, SystemExit) as exc:
            _INITIALIZED[ref] = f"initializer {ref} failed: {describe_error(exc)}"
    return _INITIALIZED[ref]


def _ping(initializer: str | None) -> tuple[int, str | None]:
    return os.getpid(), _INITIALIZED.get(initializer) if initializer else None


def _run_batch(function: str, payload: bytes, initializer: str | None) -> TransformOutcome:
    """Decode, transform, encode; never raises (errors come back as data)."""
    started = time.perf_counter()
    if initializer and (failed := _initialize(initializer)):
        return TransformOutcome(None, failed)
    try:
        fn = _FUNCTIONS.get(function)
        if fn is None:
            fn = _FUNCTIONS[function] = load_callable(function)
        result = fn(json_loads(payload))
        if not isinstance(result, list | tuple) or not all(isinstance(r, dict) for r in result):
            raise TypeError(f"{function} must return a list of dicts, not {_shape(result)}")
        try:
            output = orjson.dumps(result, option=_OUTPUT_OPTIONS)
        except orjson.JSONEncodeError:
            output = json_dumps(result)  # integers beyond 64 bits, exactly (or the real error)
    except (Exception, SystemExit) as exc:  # SystemExit too: sys.exit() in a transform is a bug
        return TransformOutcome(None, describe_error(exc), seconds=time.perf_counter() - started)
    return TransformOutcome(output, seconds=time.perf_counter() - started)


def _shape(value: object) -> str:
    if isinstance(value, list | tuple):
        bad = next(r for r in value if not isinstance(r, dict))
        return f"a {type(value).__name__} holding a {type(bad).__name__}"
    return f"a {type(value).__name__}"


def _warm_up(executor: ProcessPoolExecutor, n: int, initializer: str | None) -> list[str]:
    """Start the workers (off the loop: starting a process blocks) and return init errors."""
    futures = [executor.submit(_ping, initializer) for _ in range(n)]
    return [err for f in futures if (err := f.result()[1])]


def _start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _context(method: str) -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context(method)
    if isinstance(context, multiprocessing.context.ForkServerContext):
        # Import this module (so the asyncingest package, pyarrow, orjson) once in the fork
        # server; each worker is then a fork with it loaded. Without it, every worker imports
        # the package itself: a pool is ready in ~300-400 ms instead of ~20 ms (2 workers).
        # It only takes effect if the fork server is not running yet; it is process-wide.
        context.set_forkserver_preload([__name__])
        # Start the server from the calling thread (the event loop's), not from a thread of
        # an executor: the server dies with the thread that started it (PR_SET_PDEATHSIG
        # follows the parent *thread*), and executor threads come and go.
        forkserver.ensure_running()
    return context


# ------------------------------------------------------------------ in the parent


class _Gate:
    """Admission to the pool: many *shared* holders or one *exclusive* one; none while paused.

    A readers-writer lock that prefers writers (a waiting exclusive holder stops new shared
    ones, so isolated retries do not starve). Waiters sleep on futures woken when the state
    changes; nothing polls. Only the event loop thread touches it, so it needs no lock.
    """

    def __init__(self) -> None:
        self.shared = 0
        self.exclusive = False
        self.paused = False
        self._exclusive_waiting = 0
        self._waiters: list[asyncio.Future[None]] = []

    def _admits(self, exclusive: bool) -> bool:
        if self.paused or self.exclusive:
            return False
        return self.shared == 0 if exclusive else self._exclusive_waiting == 0

    async def acquire(self, exclusive: bool) -> None:
        self._exclusive_waiting += exclusive
        try:
            while not self._admits(exclusive):
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
        except BaseException:
            self._wake()  # a cancelled exclusive waiter may have been all that held others back
            raise
        finally:
            self._exclusive_waiting -= exclusive
        if exclusive:
            self.exclusive = True
        else:
            self.shared += 1

    def release(self, exclusive: bool) -> None:
        if exclusive:
            self.exclusive = False
        else:
            self.shared -= 1
        self._wake()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


class TransformPool:
    """One process pool for a run's transforms. Use ``async with``; see the module docstring."""

    def __init__(self, workers: int | None = None, initializer: str | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.initializer = initializer
        self.start_method = _start_method()
        self.generation = 0
        self.rebuilds = 0
        self.batches = 0
        self._gate = _Gate()
        self._executor: ProcessPoolExecutor | None = None
        self._warming: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pids(self) -> frozenset[int]:
        """Process ids of the current workers."""
        processes = getattr(self._executor, "_processes", None)  # CPython's pid -> Process map
        return frozenset(processes or ())

    def __repr__(self) -> str:
        state = "closed" if self._closed else "rebuilding" if self._gate.paused else "open"
        return (
            f"TransformPool({state}, workers={self.workers}, start={self.start_method}, "
            f"running={self._gate.shared + self._gate.exclusive}, "
            f"isolated={self._gate.exclusive}, batches={self.batches}, rebuilds={self.rebuilds})"
        )

    async def __aenter__(self) -> TransformPool:
        if self._executor is not None or self._closed:
            raise RuntimeError("a TransformPool is entered once")
        if self.initializer:
            load_callable(self.initializer)  # a bad reference fails here, not in every worker
        executor = self._new_executor()
        try:
            errors = await asyncio.to_thread(_warm_up, executor, self.workers, self.initializer)
        except BaseException as exc:
            _kill(executor)
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
            if isinstance(exc, BrokenProcessPool):
                raise TransformError(f"transform workers died while starting: {exc}") from exc
            raise
        if errors:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
            raise TransformError(errors[0])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(graceful=exc_type is None)

    async def aclose(self, *, graceful: bool = True) -> None:
        """Stop the workers: join them after their batch (graceful) or kill them now."""
        self._closed = True
        executor, self._executor = self._executor, None
        if self._warming is not None:
            self._warming.cancel()
        if executor is None:
            return
        if not graceful:
            _kill(executor)  # before any await: even a second cancellation leaves no worker
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def run(
        self,
        function: str,
        payload: bytes,
        *,
        initializer: str | None = None,
        isolated: bool = False,
    ) -> TransformOutcome:
        """Transform one encoded batch in a worker; never raises for the transform's faults.

        ``isolated`` runs it alone in the pool (used for retries after a crash). A crashed
        outcome means the worker died and the pool has already been replaced.
        """
        await self._gate.acquire(exclusive=isolated)
        try:
            executor, generation = self._usable_executor(), self.generation
            try:
                outcome: TransformOutcome = await asyncio.get_running_loop().run_in_executor(
                    executor, _run_batch, function, payload, initializer
                )
            except BrokenProcessPool as exc:
                if self._closed:
                    raise RuntimeError(_CLOSED_UNDER_BATCH) from exc
                self._replace(generation)
                return TransformOutcome(None, f"worker process died ({exc})", crashed=True)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    # shutdown(cancel_futures=True) cancelled it, not our caller: say so
                    raise RuntimeError(_CLOSED_UNDER_BATCH) from None
                raise
        finally:
            self._gate.release(exclusive=isolated)
        self.batches += 1
        return outcome

    def _usable_executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            raise RuntimeError(
                "the transform pool was shut down" if self._closed else "use 'async with' first"
            )
        return self._executor

    def _new_executor(self) -> ProcessPoolExecutor:
        self.generation += 1
        self._executor = ProcessPoolExecutor(
            self.workers,
            mp_context=_context(self.start_method),
            initializer=_worker_start,
            initargs=(self.initializer,),
        )
        return self._executor

    def _replace(self, broken_generation: int) -> None:
        """Swap in a new executor, once per broken one (later callers see a new generation)."""
        if broken_generation != self.generation:
            return
        old = self._executor
        assert old is not None
        old.shutdown(wait=False, cancel_futures=True)  # its workers are already gone or going
        self.rebuilds += 1
        executor = self._new_executor()
        self._gate.pause()
        self._warming = asyncio.get_running_loop().create_task(self._warm(executor))

    async def _warm(self, executor: ProcessPoolExecutor) -> None:
        try:
            with contextlib.suppress(Exception):  # a pool broken again: the next batch sees it
                await asyncio.to_thread(_warm_up, executor, self.workers, self.initializer)
        finally:
            self._warming = None
            self._gate.resume()


def _kill(executor: ProcessPoolExecutor) -> None:
    processes: dict[int, Any] = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        if process.is_alive():
            process.kill()


async def run_with_crash_retries(
    pool: TransformPool,
    function: str,
    payload: bytes,
    initializer: str | None,
    max_crash_retries: int,
) -> tuple[TransformOutcome, int]:
    """Run a batch until it neither crashes nor is out of retries (retries run alone in the
    pool, so a crash during one is that batch's fault). Returns the outcome and the crashes."""
    crashes = 0
    while True:
        outcome = await pool.run(function, payload, initializer=initializer, isolated=crashes > 0)
        if not outcome.crashed:
            return outcome, crashes
        crashes += 1
        if crashes > max_crash_retries:
            return TransformOutcome(None, _crash_reason(crashes), crashed=True), crashes


def _crash_reason(crashes: int) -> str:
    if crashes == 1:
        return "worker process died while transforming this batch (no retries allowed)"
    return (
        f"worker process died on each of {crashes} attempts at this batch "
        f"(the last {crashes - 1} with the batch alone in the pool)"
    )


def _is_pool_helper_process() -> bool:
    """The fork server (it preloads this module; CPython starts it as ``python -c ...
    forkserver import main``) or a worker started by multiprocessing."""
    if multiprocessing.parent_process() is not None:
        return True
    return sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules


# Tie the fork server's life (and a spawned worker's) to its parent: a parent killed with
# SIGKILL then takes the server and, through it, every worker along (see _die_with_parent).
if _is_pool_helper_process():
    _die_with_parent()
