"""An endpoint's CPU stage inside its writer: ordered, bounded, crash-safe.

The writer (``engine/writer.py``) hands each page's records here. They are cut into batches of
``batch_size``, encoded once with orjson and run in the run's shared process pool
(``transform.pool.TransformPool``, through ``loop.run_in_executor``); up to
``max_in_flight`` batches run at once while the writer goes on taking pages. Results are
taken *in batch order*: the oldest batch's output is written to the transform's own Parquet
sink (or, when the transform raised or its worker kept dying, its input records are
dead-lettered with the reason), and only then are the progress tokens of the pages whose
last record was in that batch released to the checkpoint. So a checkpoint never names a
page whose transformed records are not durable, and a killed run redoes exactly those.

When ``max_in_flight`` batches are out, ``feed`` waits for the oldest: the writer stops
taking pages, workers stop fetching (backpressure), memory stays flat.

The pipe takes the endpoint's parsed :class:`~asyncingest.config.models.TransformConfig`
itself: one spec type for the transform, validated once at the edge. ``max_in_flight``
defaults to twice the pool's workers. Measured in ``benchmarks/bench_cpu_stage.py``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..config.models import TransformConfig
from ..core.json import dumps as json_dumps
from ..core.request import Record
from .pool import (
    TransformOutcome,
    TransformPool,
    describe_error,
    run_with_crash_retries,
)


@dataclass
class _Batch:
    records: list[Record]
    tokens: list[object]
    task: asyncio.Task[TransformOutcome] | None


WriteOutput = Callable[[list[Record]], Awaitable[None]]
SetAside = Callable[[list[Record], str], None]
Release = Callable[[object], None]


class TransformPipe:
    """One endpoint's records through ``pool`` in batches, output taken in batch order.

    ``write_output`` gets each successful batch's output records, ``set_aside`` a failed
    batch's input records and the reason, ``release`` each page's progress token once every
    record of that page is written or set aside.
    """

    def __init__(
        self,
        pool: TransformPool,
        spec: TransformConfig,
        write_output: WriteOutput,
        set_aside: SetAside,
        release: Release,
    ) -> None:
        self.pool = pool
        self.spec = spec
        self.max_in_flight = spec.max_in_flight or 2 * pool.workers
        self._write_output = write_output
        self._set_aside = set_aside
        self._release = release
        self._buffer: list[Record] = []
        self._waiting_tokens: list[tuple[int, object]] = []  # (records fed so far, token)
        self._fed = 0  # records fed since the last batch was cut
        self._in_flight: deque[_Batch] = deque()
        self.batches = 0
        self.failed_batches = 0
        self.crashes = 0
        self.worker_seconds = 0.0  # time the batches spent in worker processes

    @property
    def in_flight(self) -> int:
        """Batches cut and not yet finished (at most ``max_in_flight``)."""
        return len(self._in_flight)

    def __repr__(self) -> str:
        return (
            f"TransformPipe({self.spec.function}, buffered={len(self._buffer)}, "
            f"in_flight={len(self._in_flight)}/{self.max_in_flight}, batches={self.batches}, "
            f"failed={self.failed_batches}, crashes={self.crashes})"
        )

    async def feed(self, records: list[Record], token: object | None) -> None:
        """One page: its records, then its progress token (released once they are durable)."""
        self._buffer.extend(records)
        self._fed += len(records)
        if token is not None:
            self._waiting_tokens.append((self._fed, token))
        while len(self._buffer) >= self.spec.batch_size:
            await self._cut(self.spec.batch_size)

    async def drain(self) -> None:
        """Send the partial batch and wait for everything (a checkpoint or the end)."""
        if self._buffer or self._waiting_tokens:
            await self._cut(len(self._buffer))
        while self._in_flight:
            await self._finish_oldest()

    async def _cut(self, n: int) -> None:
        while len(self._in_flight) >= self.max_in_flight:
            await self._finish_oldest()
        records, self._buffer = self._buffer[:n], self._buffer[n:]
        # Tokens of pages whose last record is in this batch ride with it.
        tokens = [t for end, t in self._waiting_tokens if end <= n]
        self._waiting_tokens = [(end - n, t) for end, t in self._waiting_tokens if end > n]
        self._fed -= n
        task = None
        if records:
            try:
                payload = json_dumps(records)  # integers beyond 64 bits exact
            except TypeError as exc:
                self._set_aside(records, f"records cannot be sent: {describe_error(exc)}")
                records = []
            else:
                task = asyncio.create_task(self._run(payload), name="transform-batch")
        self._in_flight.append(_Batch(records, tokens, task))

    async def _finish_oldest(self) -> None:
        batch = self._in_flight[0]
        if batch.task is not None:
            outcome = await batch.task
            self.batches += 1
            if outcome.output is not None:
                await self._write_output(outcome.records())
            else:
                self.failed_batches += 1
                self._set_aside(batch.records, outcome.error or "transform failed")
        self._in_flight.popleft()
        for token in batch.tokens:
            self._release(token)

    async def _run(self, payload: bytes) -> TransformOutcome:
        spec = self.spec
        outcome, crashes = await run_with_crash_retries(
            self.pool, spec.function, payload, spec.initializer, spec.max_crash_retries
        )
        self.crashes += crashes
        self.worker_seconds += outcome.seconds
        return outcome

    async def aclose(self) -> None:
        """Cancel batches still out (a hard stop); their pages were never released."""
        for batch in self._in_flight:
            if batch.task is not None:
                batch.task.cancel()
        await asyncio.gather(
            *(b.task for b in self._in_flight if b.task is not None), return_exceptions=True
        )
        self._in_flight.clear()
