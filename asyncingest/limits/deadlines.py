"""Coarse deadlines for many concurrent requests, kept by one timer.

``asyncio.timeout`` schedules a timer handle per request and cancels it when the request
finishes: at thousands of requests a second that is the largest single cost of the HTTP
layer after aiohttp itself (measured: about 9% of the client's instructions per request in
the engine-overhead benchmark). Request deadlines do not need sub-millisecond precision, so
:class:`Deadlines` keeps them the way a timing wheel does: arming and disarming is a dict
store and delete, and one timer ticks every ``resolution`` seconds while anything is armed,
cancelling the tasks whose deadline has passed. A request therefore fails between its
deadline and one tick later.

Cancellation follows ``asyncio.timeout``'s rules: the task is cancelled with ``cancel()``;
:meth:`Deadlines.expired` tells whether a ``CancelledError`` the task caught is ours (and
uncancels it), or somebody else's, which must propagate.

Time comes from the injected :class:`~asyncingest.limits.clock.Clock` (by default the running
loop's), so tests drive deadlines in fake time.
"""

from __future__ import annotations

import asyncio

from .clock import BoundLoopClock, Clock, TimerHandle

__all__ = ["Deadlines"]


class Deadlines:
    """Deadlines of tasks, checked every ``resolution`` seconds by one ``call_at`` timer."""

    __slots__ = ("_armed", "_clock", "_fired", "_timer", "resolution")

    def __init__(self, resolution: float, clock: Clock | None = None) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be > 0")
        self.resolution = resolution
        self._clock = clock  # None: the running loop's, bound at the first arm()
        # task -> (deadline, its cancelling() count when armed)
        self._armed: dict[asyncio.Task[object], tuple[float, int]] = {}
        self._fired: set[asyncio.Task[object]] = set()
        self._timer: TimerHandle | None = None

    @classmethod
    def for_timeout(cls, timeout: float, clock: Clock | None = None) -> Deadlines:
        """A resolution of a twentieth of ``timeout``, at most one second."""
        return cls(min(1.0, timeout / 20), clock)

    def __len__(self) -> int:
        return len(self._armed)

    def __repr__(self) -> str:
        return (
            f"Deadlines(resolution={self.resolution:g}s, armed={len(self._armed)}, "
            f"fired={len(self._fired)}, ticking={self._timer is not None})"
        )

    def arm(self, task: asyncio.Task[object], timeout: float) -> None:
        """``task`` must finish what it is doing within ``timeout`` seconds (from now)."""
        clock = self._clock
        if clock is None:
            clock = self._clock = BoundLoopClock(asyncio.get_running_loop())
        now = clock.time()
        self._armed[task] = (now + timeout, task.cancelling())
        if self._timer is None:
            self._timer = clock.call_at(now + self.resolution, self._tick)

    def disarm(self, task: asyncio.Task[object]) -> None:
        """``task`` is done with the work ``arm`` bounded (whether or not it expired)."""
        self._armed.pop(task, None)
        self._fired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Call while handling ``CancelledError`` in ``task``: True if the deadline caused it
        (the cancellation is then withdrawn and the caller reports a timeout), False if the
        task was cancelled by someone else (the caller must re-raise)."""
        if task not in self._fired:
            return False
        _, cancelling = self._armed.get(task, (0.0, 0))
        self._fired.discard(task)
        return task.uncancel() <= cancelling

    def _tick(self) -> None:
        self._timer = None
        if not self._armed:
            return  # idle: the next arm() starts the timer again
        assert self._clock is not None
        now = self._clock.time()
        for task, (deadline, _) in self._armed.items():
            if deadline <= now and task not in self._fired:
                self._fired.add(task)
                task.cancel("asyncingest: request deadline")
        self._timer = self._clock.call_at(now + self.resolution, self._tick)

    def close(self) -> None:
        """Stop the timer (nothing armed is cancelled)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
