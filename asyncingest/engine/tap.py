"""Records back as Arrow batches: the bounded hand-off from an endpoint's writer to one consumer.

``Pipeline.batches(endpoint)`` (or ``Engine.batches``) returns a :class:`BatchStream`, the
consumer's end of a :class:`BatchTap`; the endpoint's writer holds the other end. The writer
puts each batch its sink produced (with Parquet on: each row group as written, so the batches
are exactly the files' rows in order; with ``output: none``: each converted batch) and waits
while ``MAX_BATCHES_QUEUED`` are waiting: a slow consumer stops the writer, the writer's
bounded inbox fills, and the endpoint's workers wait in ``put_page``. Memory stays flat.

Delivered
    A batch counts as delivered when the consumer asks for the next one (``__anext__``
    again): until then it may still be in hand when the process dies. A writer's barrier
    answer (what a checkpoint may name) waits until every batch made before the barrier is
    delivered (:meth:`BatchTap.when_delivered`), and the writer's end waits until the consumer
    has seen the end. So a checkpoint names only delivered work, and a restart redelivers at
    most the batch that was in hand (at least once), plus anything after it.

Ends
    The stream ends (``StopAsyncIteration``) after the endpoint's last batch. If the run fails
    or is cancelled first, the stream raises the run's error (:class:`RunCancelled` for a
    cancel). A consumer that closes the stream early (``aclose``, or leaving ``async with``)
    fails the run with :class:`BatchesClosed`: the checkpoint keeps what was delivered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from ..errors import BatchesClosed, RunCancelled

if TYPE_CHECKING:
    from types import TracebackType

    import pyarrow as pa

MAX_BATCHES_QUEUED = 2


class BatchTap:
    """One endpoint's batches between its writer (``put``, ``finish``, ``when_delivered``)
    and its one consumer (:class:`BatchStream`). Loop-bound, not thread-safe."""

    def __init__(self, endpoint: str, maxsize: int = MAX_BATCHES_QUEUED) -> None:
        self.endpoint = endpoint
        self.maxsize = maxsize
        self._queue: deque[pa.RecordBatch] = deque()
        self.put_count = 0  # batches the writer has put
        self.handed = 0  # batches the consumer has received
        self.delivered = 0  # batches the consumer is done with (it asked for the next)
        self._ended = False  # the writer put its last batch
        self._seen_end = False  # the consumer was told the stream ended
        self._closed = False  # the consumer gave up
        self._error: BaseException | None = None  # why the stream ends early
        self._consumer: asyncio.Future[None] | None = None  # the consumer waiting for a batch
        self._producer: asyncio.Future[None] | None = None  # the writer waiting for room or end
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()  # when_delivered
        # strict (output: none with a state_dir): the next batch is handed out only once the
        # state naming every delivered batch is saved, so a restart repeats only the batch
        # in hand. ``saved``: batches a saved checkpoint names.
        self.strict = False
        self.saved = 0

    def __repr__(self) -> str:
        state = (
            "closed"
            if self._closed
            else "failed"
            if self._error is not None
            else "ended"
            if self._seen_end
            else "ending"
            if self._ended
            else "open"
        )
        return (
            f"BatchTap({self.endpoint}, {state}, queued={len(self._queue)}/{self.maxsize}, "
            f"put={self.put_count}, delivered={self.delivered}, "
            f"waiting_checkpoints={len(self._waiters)})"
        )

    @property
    def queued(self) -> int:
        """Batches put and not yet received."""
        return len(self._queue)

    @property
    def queued_rows(self) -> int:
        """Rows in the batches put and not yet received."""
        return sum(b.num_rows for b in self._queue)

    # -- the writer's end ----------------------------------------------------------------------

    async def put(self, batch: pa.RecordBatch) -> None:
        """Queue ``batch``; waits while ``maxsize`` batches wait for the consumer."""
        while len(self._queue) >= self.maxsize and not self._closed and self._error is None:
            await self._producer_wait()
        if self._error is not None:  # the run is ending at once: nobody takes it now
            raise self._error
        if self._closed:
            raise BatchesClosed(self.endpoint)
        self._queue.append(batch)
        self.put_count += 1
        _wake(self._consumer)

    async def finish(self) -> None:
        """The last batch is in: wait until the consumer has received everything and asked
        once more (so the last batch counts as delivered too)."""
        self._ended = True
        _wake(self._consumer)
        while not self._seen_end and not self._closed and self._error is None:
            await self._producer_wait()
        if self._error is not None and not self._seen_end:
            raise self._error
        if self._closed and not self._seen_end:
            raise BatchesClosed(self.endpoint)

    def when_delivered(self, count: int) -> asyncio.Future[None]:
        """A future done once ``count`` batches are delivered (failed if the consumer closes
        the stream first)."""
        fut = asyncio.get_running_loop().create_future()
        if self.delivered >= count:
            fut.set_result(None)
        elif self._error is not None:
            fut.set_exception(self._error)
        elif self._closed:
            fut.set_exception(BatchesClosed(self.endpoint))
        else:
            self._waiters.append((count, fut))
        return fut

    def abandon_waiters(self, cause: BaseException) -> None:
        """The writer died: checkpoints waiting on deliveries fail with it."""
        while self._waiters:
            _, fut = self._waiters.popleft()
            _fail(fut, cause)

    def fail(self, cause: BaseException) -> None:
        """The run ended before this stream did: the consumer gets ``cause`` next."""
        if self._seen_end or self._closed or self._error is not None:
            return
        self._error = RunCancelled(self.endpoint) if _is_cancel(cause) else cause
        self._queue.clear()
        self.abandon_waiters(self._error)
        _wake(self._consumer)
        _wake(self._producer)

    def end(self) -> None:
        """The run ended normally without this endpoint's writer finishing it (a run that
        was already complete): the consumer sees the end."""
        self._ended = True
        _wake(self._consumer)

    def saved_through(self, count: int) -> None:
        """A checkpoint naming the first ``count`` batches is saved."""
        if count > self.saved:
            self.saved = count
            _wake(self._consumer)

    async def _producer_wait(self) -> None:
        fut = self._producer = asyncio.get_running_loop().create_future()
        try:
            await fut
        finally:
            self._producer = None

    # -- the consumer's end --------------------------------------------------------------------

    def _mark_delivered(self) -> None:
        if self.delivered == self.handed:
            return
        self.delivered = self.handed
        while self._waiters and self._waiters[0][0] <= self.delivered:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    async def next(self) -> pa.RecordBatch:
        """The next batch (marking the one in hand delivered); ``StopAsyncIteration`` at the end."""
        self._mark_delivered()
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            if self._queue and not (self.strict and self.saved < self.delivered):
                batch = self._queue.popleft()
                self.handed += 1
                _wake(self._producer)
                return batch
            if self._ended and not self._queue:
                self._seen_end = True
                _wake(self._producer)
                raise StopAsyncIteration
            fut = self._consumer = asyncio.get_running_loop().create_future()
            try:
                await fut
            finally:
                self._consumer = None

    def close(self) -> None:
        """The consumer is done: before the end, the writer fails with ``BatchesClosed``."""
        if self._closed or self._seen_end or self._error is not None:
            self._closed = True
            return
        self._closed = True
        self._queue.clear()
        closed = BatchesClosed(self.endpoint)
        while self._waiters:
            _, fut = self._waiters.popleft()
            _fail(fut, closed)
        _wake(self._producer)


class BatchStream:
    """``async for batch in stream``: one endpoint's records as ``pyarrow.RecordBatch`` es,
    in the order they were parsed (and, with Parquet on, written). See the module docstring
    for when a batch counts as delivered and how the stream ends.
    """

    def __init__(self, tap: BatchTap) -> None:
        self._tap = tap

    @property
    def endpoint(self) -> str:
        return self._tap.endpoint

    def __repr__(self) -> str:
        return f"BatchStream({self._tap!r})"

    @property
    def queued(self) -> int:
        """Batches made and waiting for this consumer (at most ``MAX_BATCHES_QUEUED``)."""
        return self._tap.queued

    def __aiter__(self) -> BatchStream:
        return self

    async def __anext__(self) -> pa.RecordBatch:
        return await self._tap.next()

    async def aclose(self) -> None:
        """Stop reading. Before the endpoint's end this fails the run (``BatchesClosed``)."""
        self._tap.close()

    async def __aenter__(self) -> BatchStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def _is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError)


def _fail(fut: asyncio.Future[None], cause: BaseException) -> None:
    if fut.done():
        return
    if _is_cancel(cause):
        fut.cancel()
    else:
        fut.set_exception(cause)
