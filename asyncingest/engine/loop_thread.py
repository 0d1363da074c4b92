"""An event loop of its own on a second thread, for pipelines embedded in a service.

A :class:`~asyncingest.Pipeline` does its work (parsing pages, binding children, the
limiter, the writers' hand-offs) in the loop it runs in. At full speed that is most of a
core: in a service's own loop every request the service answers waits behind it
(benchmarks/RESULTS.md, "the example service under load": ``/health`` p99 58 ms with two
crawls in the service's loop on a 2-core machine). :class:`PipelineThread` gives the pipelines
a loop of their own, so the service's loop only waits for the GIL.

A pipeline, and a :class:`~asyncingest.Budget` shared by pipelines, belong to the loop they
were made in: make them, and touch them (``snapshot()``, ``stop()``, ``batches()``), only
inside :meth:`PipelineThread.run`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")


class PipelineThread:
    """A second thread running an event loop of its own, where pipelines run.

    >>> async with asyncingest.PipelineThread() as pipelines:   # doctest: +SKIP
    ...     async def ingest() -> asyncingest.RunResult:
    ...         async with asyncingest.Pipeline(cfg, budget=budget) as p:
    ...             return await p.wait()
    ...     result = await pipelines.run(ingest)

    The thread starts on first use (:meth:`start`, :meth:`run` or ``async with``) and ends
    with :meth:`close`, which cancels whatever still runs in its loop: stop or wait for your
    pipelines first. A :class:`~asyncingest.Budget` binds to the loop that first uses it (and
    raises if another loop uses it), so the pipelines sharing one must all run in this thread.
    """

    def __init__(self, name: str = "asyncingest-pipelines") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The thread's event loop (None before :meth:`start` and after :meth:`close`)."""
        return self._loop

    def start(self) -> None:
        """Start the thread and its loop (returns once the loop runs); idempotent."""
        if self._closed:
            raise RuntimeError(f"{self.name}: the pipelines' thread is closed")
        if self._thread is not None:
            return
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name=self.name, daemon=True
        )
        self._thread.start()
        started.wait()

    def _serve(self, started: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # this thread's
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:  # as asyncio.run ends: cancel what is left, then the executor's threads
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``await fn()`` in the thread's loop and return (or raise) what it does.

        Shielded: cancelling the caller (a client hanging up) does not cancel ``fn()``, which
        runs to its end; cancelling a pipeline's start or stop half way would cancel its run.
        To cancel a pipeline, call its ``cancel()`` through :meth:`run`.
        """
        self.start()
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError(f"{self.name}: the pipelines' thread is closed")
        future = asyncio.run_coroutine_threadsafe(fn(), loop)
        return await asyncio.shield(asyncio.wrap_future(future))

    async def close(self) -> None:
        """Stop the loop (cancelling what still runs in it) and wait for the thread to end.
        Idempotent; :meth:`run` raises afterwards."""
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        self._loop = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._thread else "not started"
        return f"PipelineThread({self.name!r}, {state})"
