"""Test helpers for code that waits: :class:`FakeClock`, a :class:`~asyncingest.limits.clock.Clock`
in virtual time.

Virtual time only moves when a test says so, in one of two ways:

* ``await clock.advance(seconds)``: move forward step by step, firing due timers in order and
  letting the event loop settle after each step, so woken coroutines run (and may schedule new
  timers) at the virtual instant they were woken. ``advance`` is async for exactly that reason.
* ``async with clock.auto_advance():`` (or ``await clock.run(coro)``): a driver task waits until
  the loop has settled, then jumps virtual time to the next timer. Tests with hundreds of
  concurrent coroutines just run, in milliseconds, with no real sleeping anywhere.

"Settled" means no callback is ready to run. On CPython's event loop we read ``loop._ready``, the
deque of handles the loop will run on its next iteration: when the driver itself is running and
that deque is empty, every other task is blocked on something, so the answer is exact and needs
no guessing about how many ``sleep(0)`` rounds are "enough". Loops without ``_ready`` (uvloop)
fall back to a fixed number of ``sleep(0)`` rounds. A loop that never settles (some code polls
with ``sleep(0)`` forever) is reported as an error instead of hanging.

Auto-advance assumes everything the code under test waits on is driven by this clock (timers,
futures, queues). Real sockets, threads and ``loop.call_later`` timers are invisible to it: when
the loop has settled and no virtual timer is left, the driver reports a deadlock (pass
``detect_deadlock=False`` to wait for a new timer instead).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

__all__ = ["FakeClock"]

T = TypeVar("T")

_FALLBACK_ROUNDS = 100  # sleep(0) rounds per settle when the loop has no `_ready` deque
_MAX_ROUNDS = 100_000  # a CPython loop still busy after this many rounds is polling


class _FakeTimer:
    """One ``call_at`` registration; the heap holds ``(when, seq, timer)``."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None  # left in the heap, skipped when popped

    @property
    def cancelled(self) -> bool:
        return self.callback is None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FakeClock:
    """A Clock whose time moves only on :meth:`advance` or under :meth:`auto_advance`.

    ``time()`` starts at ``start`` (monotonic seconds) and ``wall()`` at ``wall_start`` (epoch
    seconds); both move together. Timers due at the same instant fire in registration order.
    A timer registered for a time already past fires at the next step (``advance(0)`` will do).
    Exceptions raised by timer callbacks propagate out of ``advance`` (and out of the
    ``auto_advance`` block), so a broken callback fails the test instead of being logged.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._heap: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()
        self._driving = False
        self._new_timer: asyncio.Future[None] | None = None  # the idle driver waits on this

    # -- the Clock protocol --------------------------------------------------------------------

    def time(self) -> float:
        """Virtual monotonic seconds: moves only on ``advance`` or under ``auto_advance``."""
        return self._now

    def wall(self) -> float:
        """Virtual seconds since the epoch, moving with ``time()``."""
        return self._now + self._wall_offset

    def call_at(self, when: float, callback: Callable[[], None]) -> _FakeTimer:
        """Run ``callback`` once virtual time reaches ``when`` (next step if already past)."""
        timer = _FakeTimer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        if self._new_timer is not None:
            _wake(self._new_timer)
        return timer

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` virtual seconds (a scheduling point only, for ``delay <= 0``)."""
        if delay <= 0:
            await asyncio.sleep(0)  # still a scheduling point, like asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_at(self._now + delay, lambda: _wake(woken))
        try:
            await woken
        finally:
            timer.cancel()

    # -- introspection -------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When the earliest live timer is due, or None."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    @property
    def pending_timers(self) -> int:
        """How many timers are registered and not cancelled."""
        return sum(1 for _, _, timer in self._heap if not timer.cancelled)

    def __repr__(self) -> str:
        mode = ", auto_advance" if self._driving else ""
        return f"FakeClock(time={self._now:.6f}, timers={self.pending_timers}{mode})"

    # -- moving time ---------------------------------------------------------------------------

    async def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds``, firing timers due on the way in order.

        The loop settles before the first step and after every step, so a coroutine woken at
        virtual time t runs at t and its own new timers (say t + 0.5) fire within this call
        when they fall inside the interval.
        """
        if seconds < 0:
            raise ValueError(f"cannot advance by {seconds}: time does not go backwards")
        if self._driving:
            raise RuntimeError("advance() while auto_advance() drives the clock")
        target = self._now + seconds
        await self._settle()
        while (when := self.next_timer()) is not None and when <= target:
            self._step(when)
            await self._settle()
        self._now = target

    @asynccontextmanager
    async def auto_advance(self, *, detect_deadlock: bool = True) -> AsyncIterator[None]:
        """Within the block, jump virtual time to the next timer whenever the loop has settled.

        With ``detect_deadlock`` (the default), a settled loop with no timer left means the block
        can never finish: it is cancelled and ``RuntimeError`` is raised instead of hanging.
        """
        if self._driving:
            raise RuntimeError("auto_advance() is already active")
        owner = asyncio.current_task()
        assert owner is not None, "auto_advance() needs a running task"
        failure: list[BaseException] = []
        self._driving = True
        driver = asyncio.create_task(self._drive(owner, failure, detect_deadlock))
        try:
            yield
        except asyncio.CancelledError:
            if not failure:
                raise
            owner.uncancel()  # the cancellation was ours, not the caller's
        finally:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
            self._driving = False
            self._new_timer = None
        if failure:
            raise failure[0]

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` under :meth:`auto_advance` and return its result."""
        async with self.auto_advance():
            return await awaitable

    # -- internals -----------------------------------------------------------------------------

    async def _drive(
        self, owner: asyncio.Task[object], failure: list[BaseException], detect_deadlock: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._settle()
                when = self.next_timer()
                if when is not None:
                    self._step(when)
                    continue
                if detect_deadlock:
                    raise RuntimeError(
                        f"deadlock at virtual time {self._now}: the loop has settled and no "
                        "timer is pending, so the auto_advance() block can never finish"
                    )
                self._new_timer = loop.create_future()
                await self._new_timer
                self._new_timer = None
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # report it in the owner, which would otherwise hang
            failure.append(exc)
            owner.cancel()

    def _step(self, when: float) -> None:
        """Set the time to ``when`` (never backwards) and fire every timer now due."""
        self._now = max(self._now, when)
        due: list[Callable[[], None]] = []
        heap = self._heap
        while heap and heap[0][0] <= self._now:
            callback = heapq.heappop(heap)[2].callback
            if callback is not None:
                due.append(callback)
        errors: list[BaseException] = []
        for callback in due:  # timers added by these callbacks wait for the next step
            try:
                callback()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    async def _settle(self) -> None:
        """Return once no callback is ready to run (see the module docstring)."""
        # CPython's BaseEventLoop keeps ready handles in the private deque `_ready`; reading its
        # length is the only exact test for "every other task is blocked" (see module docstring).
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        if ready is None:
            for _ in range(_FALLBACK_ROUNDS):
                await asyncio.sleep(0)
            return
        for _ in range(_MAX_ROUNDS):
            if not ready:
                return
            await asyncio.sleep(0)
        raise RuntimeError(
            f"event loop never settled after {_MAX_ROUNDS} rounds: is something polling "
            "with sleep(0)?"
        )
