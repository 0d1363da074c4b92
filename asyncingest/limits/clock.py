"""One clock for everything that waits: the limiter, retry back-off, the engine.

Production code uses :class:`LoopClock`, which is the running event loop's own clock
(``loop.time()`` / ``loop.call_at``). Tests inject :class:`asyncingest.testing.FakeClock`,
whose time only moves when the test (or its auto-advance driver) says so, so limiter and
retry tests run in fake time and finish in milliseconds.

Wall-clock time (``wall()``) is only used to interpret HTTP-date ``Retry-After`` headers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    """What ``call_at`` returns: a timer that can be cancelled before it fires."""

    def cancel(self) -> None:
        """Do not run the callback (no effect once it has run)."""
        ...


class Clock(Protocol):
    """The time source every waiting component takes."""

    def time(self) -> float:
        """Monotonic seconds."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (HTTP-date headers; the run start of the future-cursor guard)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` (in the event loop) once ``time() >= when``."""
        ...

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds of this clock's time (at once for ``delay <= 0``)."""
        ...


class LoopClock:
    """The running event loop's clock. Stateless, so one instance may serve any loop."""

    def time(self) -> float:
        """The running loop's ``loop.time()``: monotonic seconds."""
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        """``time.time()``: seconds since the epoch."""
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """``loop.call_at`` on the running loop."""
        return asyncio.get_running_loop().call_at(when, callback)

    async def sleep(self, delay: float) -> None:
        """``asyncio.sleep`` (a negative delay is none)."""
        await asyncio.sleep(max(0.0, delay))

    def __repr__(self) -> str:
        return "LoopClock()"


class BoundLoopClock(LoopClock):
    """:class:`LoopClock` for one known loop: ``time`` is the loop's own bound method, saving
    a ``get_running_loop()`` per call on the per-request path. The engine makes one per run."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.time = loop.time  # type: ignore[method-assign]  # the fast path, same value

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """``call_at`` on the bound loop."""
        return self._loop.call_at(when, callback)

    def __repr__(self) -> str:
        return "BoundLoopClock()"
