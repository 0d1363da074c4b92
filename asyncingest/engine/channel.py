"""A FIFO hand-off between coroutines that costs a deque operation when nobody has to wait.

The engine hands every job to a worker and every page to its writer. ``asyncio.Queue``
does that with half a dozen Python calls per item (``full``, ``_put``, ``_wakeup_next``,
``get_nowait``, ``empty``, ``_get``...) plus a ``Semaphore`` for the writer's bound; at
thousands of requests a second those calls were a measurable share of the engine's own work.
:class:`Channel` keeps the same semantics for the way the engine uses it:

* ``put_nowait`` always appends (the bound is for producers that choose to respect it, so a
  checkpoint barrier or an end-of-input marker can always be enqueued at once);
* ``put`` waits while the channel holds ``maxsize`` items or more, then appends;
* ``wait_for_room`` waits for room without putting (a producer that must put synchronously
  right after, as the writer's page hand-off does);
* ``pop`` takes the oldest item (the caller checks ``bool(channel)`` first); ``get`` waits
  for one.

Waiting is on futures woken in FIFO order; a waiter cancelled after it was woken passes the
wake-up on, so no item or room is stranded (the same rule as ``asyncio.Queue``).

Waking a task costs a scheduler step (a few microseconds), and at thousands of items a second
a consumer woken per item, or a producer woken per free slot, pays it per item. Two knobs
batch the wake-ups: ``batch`` (a waiting getter is woken once that many items are waiting,
or by :meth:`Channel.flush`) and ``refill_at`` (a producer waiting for room is woken once the
channel is down to that many items). The defaults (1, ``maxsize - 1``) wake at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Channel"]

T = TypeVar("T")


class Channel(Generic[T]):
    """A FIFO hand-off with an optional bound ``maxsize`` (see the module docstring for its
    operations and why it is not ``asyncio.Queue``).
    """

    __slots__ = ("_getters", "_items", "_putters", "batch", "maxsize", "refill_at")

    def __init__(self, maxsize: int = 0, *, batch: int = 1, refill_at: int | None = None) -> None:
        if batch < 1 or (maxsize and batch > maxsize):
            raise ValueError(f"batch must be 1..maxsize, got {batch}")
        self.maxsize = maxsize  # 0: no bound
        self.batch = batch
        self.refill_at = maxsize - 1 if refill_at is None else min(refill_at, maxsize - 1)
        self._items: deque[T] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __repr__(self) -> str:
        bound = f"/{self.maxsize}" if self.maxsize else ""
        return (
            f"Channel({len(self._items)}{bound} items, {len(self._getters)} getters waiting, "
            f"{len(self._putters)} putters waiting)"
        )

    def full(self) -> bool:
        """True when a bounded channel holds ``maxsize`` items or more."""
        return 0 < self.maxsize <= len(self._items)

    # -- putting -------------------------------------------------------------------------------

    def put_nowait(self, item: T) -> None:
        """Append ``item`` whatever the bound; wake the first waiting getter once ``batch``
        items are waiting."""
        items = self._items
        items.append(item)
        if self._getters and len(items) >= self.batch:
            _wake_first(self._getters)

    def flush(self) -> None:
        """Wake a waiting getter now if anything is waiting (a barrier, the end of input)."""
        if self._getters and self._items:
            _wake_first(self._getters)

    async def put(self, item: T) -> None:
        """Append ``item`` once the channel has room."""
        if self.maxsize and len(self._items) >= self.maxsize:
            await self.wait_for_room()
        self.put_nowait(item)

    async def wait_for_room(self) -> None:
        """Return once the channel holds fewer than ``maxsize`` items (at once if it does)."""
        while self.maxsize and len(self._items) >= self.maxsize:
            await _wait(self._putters, self._room_left)

    def _room_left(self) -> bool:
        return not self.maxsize or len(self._items) < self.maxsize

    # -- getting -------------------------------------------------------------------------------

    def pop(self) -> T:
        """The oldest item (``IndexError`` when empty), waking a producer waiting for room
        once the channel is down to ``refill_at`` items."""
        items = self._items
        item = items.popleft()
        if self._putters and len(items) <= self.refill_at:
            _wake_first(self._putters)
        return item

    async def get(self) -> T:
        """The oldest item, waiting for one if the channel is empty."""
        while not self._items:
            await _wait(self._getters, self.__bool__)
        return self.pop()


def _wake_first(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)
            return


async def _wait(waiters: deque[asyncio.Future[None]], ready: Callable[[], bool]) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(fut)
    try:
        await fut
    except asyncio.CancelledError:
        if fut.done() and not fut.cancelled():
            # Woken, then cancelled before acting on it: pass the wake-up to the next waiter.
            if ready():
                _wake_first(waiters)
        else:
            with contextlib.suppress(ValueError):  # already taken off by a wake-up
                waiters.remove(fut)
        raise
