"""The CPU stage: an endpoint's records, in batches, through a user function in a process pool.

Where it sits (docs/architecture.md, step 7): an endpoint with a transform hands its records to
a :class:`TransformStage` instead of (or as well as) its writer queue. The stage cuts them into
batches of ``batch_size``, encodes each batch with orjson on the loop and runs it in the run's
shared :class:`TransformPool` (:mod:`asyncingest.transform.pool`); the output records go to
``on_output`` (the transform's own Parquet sink), a batch that failed goes to ``on_failed``
with its *input* records and the reason. At most ``max_in_flight`` batches are out at once:
:meth:`TransformStage.submit` waits for a free slot, so when the pool is saturated the
endpoint's workers stop fetching (backpressure) and memory stays flat.

The batch type: a list of dicts, shipped as JSON bytes (benchmarks/bench_cpu_stage.py)
    The function gets ``list[dict]`` and returns ``list[dict]``. Measured with 500 lap records
    in and 500 out, one worker, CPU the parent spends per batch (the share that competes with
    the event loop) over several runs on 2 cores:

    =====================================================  ==============
    what crosses the boundary                              parent CPU, ms
    =====================================================  ==============
    JSON bytes in and out, ``fn(list[dict])`` (chosen)     0.59-0.87
    pickled ``list[dict]`` in and out (run_in_executor)    0.67-0.87
    Arrow IPC in and out, Table built on the loop          1.37-1.70
    JSON bytes in, Table built in the worker, IPC out      0.79-1.03
    =====================================================  ==============

    Arrow costs the parent about twice as much, because the records are dicts on both sides
    (parsed pages in, ``ParquetSink.write`` out) and converting them is the expensive step; a
    vectorised transform can call ``pyarrow.Table.from_pylist(batch)`` itself, in the worker.
    JSON bytes and pickled dicts cost the same here; bytes win on control: the encode is one
    step on the loop (0.07 ms for 500 records, ~1 ms per MB), the executor's threads only copy
    bytes, and output that is not a list of JSON-able dicts fails in the worker as that batch's
    error instead of in the sink. What matters more than the encoding is the fixed cost per
    batch (the executor's threads and pipes: ~0.3-0.5 ms of parent CPU even for one record),
    so keep batches at several milliseconds of work: on a quiet 2-core machine, 2 workers give
    1.6-1.7x at ~2 ms a batch and 1.9x at ~20 ms.

Failures
    The transform raises: the batch is set aside (``on_failed``, reason ``"ValueError: ..."``
    cut to 500 characters) and the run goes on. Its worker process dies: the pool is rebuilt and
    the batch retried, alone in the pool, up to ``max_crash_retries`` times, then set aside with
    ``"worker process died ..."``; batches that were merely in flight at the crash succeed on
    their isolated retry, so nothing else is lost. Output order across batches is not kept.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..core.json import dumps as json_dumps
from .pool import (
    REFERENCE,
    TransformError,
    TransformOutcome,
    TransformPool,
    describe_error,
    load_callable,
    run_with_crash_retries,
)

__all__ = [
    "TransformError",
    "TransformOutcome",
    "TransformPool",
    "TransformSpec",
    "TransformStage",
    "load_callable",
]

Record = dict[str, Any]
OnOutput = Callable[[list[Record]], Awaitable[None]]
OnFailed = Callable[[list[Record], str], Awaitable[None] | None]


@dataclass(frozen=True)
class TransformSpec:
    """An endpoint's transform, as the engine needs it (config validates and builds it)."""

    function: str
    """``"package.module:function"``; ``fn(batch: list[dict]) -> list[dict]``."""
    initializer: str | None = None
    """``"package.module:function"`` run once per worker process before its first batch."""
    batch_size: int = 500
    """Records per batch sent to the pool."""
    workers: int | None = None
    """Pool size (default: ``os.cpu_count()``); the engine sizes the shared pool from it."""
    max_in_flight: int | None = None
    """Batches out at once for this endpoint (default: twice the pool's workers)."""
    max_crash_retries: int = 2
    """Retries of a batch whose worker process died, before it is set aside."""

    def __post_init__(self) -> None:
        for name in ("function", "initializer"):
            ref = getattr(self, name)
            if ref is not None and not REFERENCE.fullmatch(ref):
                raise ValueError(f"{name}: {ref!r} is not a 'package.module:function' reference")
        for name, value, least in (
            ("batch_size", self.batch_size, 1),
            ("workers", self.workers, 1),
            ("max_in_flight", self.max_in_flight, 1),
            ("max_crash_retries", self.max_crash_retries, 0),
        ):
            if value is not None and value < least:
                raise ValueError(f"{name} must be at least {least}, not {value}")


class TransformStage:
    """Batches one endpoint's records through the pool, with bounded batches in flight."""

    def __init__(
        self,
        pool: TransformPool,
        spec: TransformSpec,
        on_output: OnOutput,
        on_failed: OnFailed,
    ) -> None:
        self.pool = pool
        self.spec = spec
        self.max_in_flight = spec.max_in_flight or 2 * pool.workers
        self.in_flight = 0
        self.batches_done = 0
        self.batches_failed = 0
        self.crashes = 0
        self.records_in = 0
        self.records_out = 0
        self.worker_seconds = 0.0
        self._on_output = on_output
        self._on_failed = on_failed
        self._buffer: list[Record] = []
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: Exception | None = None

    def __repr__(self) -> str:
        return (
            f"TransformStage({self.spec.function}, batch_size={self.spec.batch_size}, "
            f"in_flight={self.in_flight}/{self.max_in_flight}, buffered={len(self._buffer)}, "
            f"done={self.batches_done}, failed={self.batches_failed}, crashes={self.crashes}, "
            f"records_in={self.records_in}, records_out={self.records_out})"
        )

    async def __aenter__(self) -> TransformStage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """A clean exit flushes; an error or a cancellation abandons the batches in flight."""
        if exc_type is None:
            await self.flush()
        else:
            await self.aclose()

    async def submit(self, records: list[Record]) -> None:
        """Buffer ``records``; send each full batch, waiting while ``max_in_flight`` are out."""
        self._raise_failure()
        self.records_in += len(records)
        self._buffer.extend(records)
        size = self.spec.batch_size
        while len(self._buffer) >= size:
            batch = self._buffer[:size]
            del self._buffer[:size]
            await self._launch(batch)

    async def flush(self) -> None:
        """Send the partial batch, then wait until every batch is delivered or set aside."""
        self._raise_failure()
        if self._buffer:
            batch, self._buffer = self._buffer, []
            await self._launch(batch)
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        self._raise_failure()

    async def aclose(self) -> None:
        """Abandon the stage (on an error or cancellation): cancel the batches in flight."""
        self._buffer = []
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ one batch

    async def _launch(self, batch: list[Record]) -> None:
        await self._slots.acquire()
        try:
            payload = json_dumps(batch)  # ~0.1 ms for 500 records: cheap enough for the loop
        except TypeError as exc:
            self._slots.release()
            self.batches_failed += 1
            await self._set_aside(batch, f"records cannot be sent: {describe_error(exc)}")
            return
        self.in_flight += 1
        task = asyncio.create_task(self._process(batch, payload), name=f"transform-{id(batch)}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, batch: list[Record], payload: bytes) -> None:
        try:
            outcome = await self._run(payload)
            self.worker_seconds += outcome.seconds
            if outcome.output is not None:
                records = outcome.records()
                await self._on_output(records)
                self.records_out += len(records)
                self.batches_done += 1
            else:
                self.batches_failed += 1
                await self._set_aside(batch, outcome.error or "transform failed")
        except Exception as exc:  # from a callback or a closed pool: surfaced by submit/flush
            if self._error is None:
                self._error = exc
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def _run(self, payload: bytes) -> TransformOutcome:
        outcome, crashes = await run_with_crash_retries(
            self.pool,
            self.spec.function,
            payload,
            self.spec.initializer,
            self.spec.max_crash_retries,
        )
        self.crashes += crashes
        return outcome

    async def _set_aside(self, batch: list[Record], reason: str) -> None:
        result = self._on_failed(batch, reason)
        if inspect.isawaitable(result):
            await result

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error
