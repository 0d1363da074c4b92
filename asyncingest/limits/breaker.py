"""A circuit breaker per endpoint: stop sending to an endpoint that keeps failing, then probe.

States (Nygard, *Release It!*; https://martinfowler.com/bliki/CircuitBreaker.html)::

    closed --(failure_threshold consecutive failures)--> open
    open --(cooldown elapsed)--> half-open: exactly one request (the probe) goes through
    half-open --(probe succeeds)--> closed          (cooldown back to its base)
    half-open --(probe fails)--> open               (cooldown x backoff, up to max_cooldown)

Nothing is refused: while the breaker is open, callers of :meth:`CircuitBreaker.before_request`
*wait* (on one timer, never polling) and in half-open they wait for the probe's verdict. A
caller with a ``deadline`` (say, its retry budget's ``max_time``) gets :class:`CircuitOpen` as
soon as the breaker cannot let it through in time, so the engine can dead-letter the request.

Each pass is a :class:`Ticket` that must receive a verdict (``record``) or be ``abandon``-ed
(cancelled before an answer). A verdict only counts for the period it was issued in: results of
requests sent before the breaker opened do not move it again. See docs/architecture.md,
"requests" and "retries".
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from ..core.retry import FailureKind
from .clock import Clock, TimerHandle

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "Ticket",
    "Transition",
    "counts_as_failure",
]


class BreakerState(enum.Enum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class Transition:
    """What ``on_change`` receives: the breaker moved from ``previous`` to ``state``."""

    previous: BreakerState
    state: BreakerState
    failures: int  # consecutive failures when it moved
    cooldown: float  # seconds until the next probe when ``state`` is OPEN, else 0.0


class CircuitOpen(Exception):
    """The breaker cannot let a request through before the caller's deadline."""

    def __init__(self, name: str, reopens_in: float | None) -> None:
        self.name = name
        self.reopens_in = reopens_in
        when = f"next probe in {reopens_in:.3g}s" if reopens_in is not None else "probe pending"
        super().__init__(f"circuit open for {name or 'endpoint'} ({when})")


_TRANSIENT = frozenset(
    {
        FailureKind.TIMEOUT,
        FailureKind.CONNECTION,
        FailureKind.RESET,
        FailureKind.TRUNCATED,
        FailureKind.MALFORMED_JSON,  # usually a proxy's HTML error page
    }
)


def counts_as_failure(kind: FailureKind | None, status: int | None) -> bool:
    """Whether an attempt's outcome says the endpoint is unwell: network trouble and 5xx.

    A usable page (``kind`` None), a 4xx (429 included: the throttle handles it) or a body of
    the wrong shape show a server that answers, so they count as successes.
    """
    if kind is None:
        return False
    if kind is FailureKind.HTTP_STATUS:
        return status is not None and status >= 500
    return kind in _TRANSIENT


class Ticket:
    """One pass through the breaker. Give it exactly one verdict; later ones are ignored."""

    __slots__ = ("_breaker", "_done", "epoch", "probe")

    def __init__(self, breaker: CircuitBreaker, epoch: int, probe: bool) -> None:
        self._breaker = breaker
        self.epoch = epoch
        self.probe = probe
        self._done = False

    def record(self, success: bool) -> None:
        """Give the breaker this pass's verdict (``success`` False counts as a failure); later calls
        are ignored."""
        if not self._done:
            self._done = True
            self._breaker._verdict(self, success)

    def abandon(self) -> None:
        """No answer will come (the attempt was cancelled): a probe's turn passes on."""
        if not self._done:
            self._done = True
            self._breaker._abandoned(self)

    def __repr__(self) -> str:
        kind = "probe" if self.probe else "pass"
        return f"<{kind} of {self._breaker.name!r} epoch {self.epoch}{' done' * self._done}>"


class _Waiter:
    __slots__ = ("deadline", "future", "timer")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self.timer: TimerHandle | None = None


class CircuitBreaker:
    """A circuit breaker for one endpoint on the injected clock (see the module docstring for its
    states).
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown: float,
        clock: Clock,
        *,
        max_cooldown: float | None = None,
        backoff: float = 2.0,
        name: str = "",
        on_change: Callable[[Transition], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if not 0 < cooldown < math.inf:
            raise ValueError(f"cooldown must be a finite number > 0, got {cooldown}")
        if backoff < 1:
            raise ValueError(f"backoff must be >= 1, got {backoff}")
        self.failure_threshold = failure_threshold
        self.base_cooldown = cooldown
        cap = max_cooldown if max_cooldown is not None else cooldown * 8
        self.max_cooldown = max(cooldown, cap)
        self.backoff = backoff
        self.name = name
        self.on_change = on_change
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._epoch = 0  # bumped on every transition; a verdict counts only in its own epoch
        self._failures = 0
        self._cooldown = cooldown
        self._opened_at: float | None = None
        self._probe_out = False
        self._waiters: deque[_Waiter] = deque()
        self._timer: TimerHandle | None = None

    # -- what is visible -----------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half-open``."""
        return self._state

    @property
    def opened_at(self) -> float | None:
        """When the breaker last opened (monotonic), while it is open or half-open."""
        return self._opened_at

    @property
    def reopens_at(self) -> float | None:
        """When the next probe may go, while open."""
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return None
        return self._opened_at + self._cooldown

    @property
    def cooldown(self) -> float:
        """The current cooldown (grows while probes keep failing)."""
        return self._cooldown

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row since the last success."""
        return self._failures

    @property
    def waiting(self) -> int:
        """How many callers wait for the breaker to let them through."""
        return sum(1 for w in self._waiters if not w.future.done())

    def __repr__(self) -> str:
        parts = [
            f"{self.name!r}",
            self._state.value,
            f"failures={self._failures}/{self.failure_threshold}",
            f"cooldown={self._cooldown:g}s",
        ]
        reopens = self.reopens_at
        if reopens is not None:
            parts.append(f"probe in {max(0.0, reopens - self._clock.time()):g}s")
        if self._state is BreakerState.HALF_OPEN:
            parts.append("probe out" if self._probe_out else "awaiting probe")
        parts.append(f"waiting={self.waiting}")
        return f"CircuitBreaker({', '.join(parts)})"

    # -- passing through -----------------------------------------------------------------------

    def try_pass(self) -> Ticket | None:
        """A ticket at once when no waiting is needed (closed, or a free probe), else None."""
        if self._state is BreakerState.CLOSED:
            return Ticket(self, self._epoch, probe=False)
        if self._state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return Ticket(self, self._epoch, probe=True)
        return None

    async def before_request(self, *, deadline: float | None = None) -> Ticket:
        """Wait until a request may go; raise :class:`CircuitOpen` if not before ``deadline``
        (monotonic)."""
        if self._state is BreakerState.CLOSED:
            return Ticket(self, self._epoch, probe=False)
        if self._state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return Ticket(self, self._epoch, probe=True)
        reopens = self.reopens_at
        if deadline is not None and reopens is not None and reopens > deadline:
            raise CircuitOpen(self.name, reopens - self._clock.time())
        waiter = _Waiter(deadline)
        if deadline is not None:
            waiter.timer = self._clock.call_at(deadline, lambda: self._expire(waiter))
        self._waiters.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().abandon()  # granted just as the task was cancelled
            raise
        finally:
            if waiter.timer is not None:
                waiter.timer.cancel()
            self._forget(waiter)

    @asynccontextmanager
    async def guard(self, *, deadline: float | None = None) -> AsyncIterator[Ticket]:
        """``async with breaker.guard() as ticket:``: an exception in the block is a failure,
        a normal exit a success, unless the block already called ``ticket.record()``;
        cancellation abandons the ticket."""
        ticket = await self.before_request(deadline=deadline)
        try:
            yield ticket
        except Exception:
            ticket.record(False)
            raise
        except BaseException:
            ticket.abandon()
            raise
        ticket.record(True)

    # -- verdicts ------------------------------------------------------------------------------

    def _verdict(self, ticket: Ticket, success: bool) -> None:
        if ticket.epoch != self._epoch:
            return  # from an earlier period: the breaker has moved on
        if ticket.probe:
            self._probe_out = False
            if success:
                self._close()
            else:
                self._failures += 1
                self._open(min(self._cooldown * self.backoff, self.max_cooldown))
        elif self._state is BreakerState.CLOSED:
            if success:
                self._failures = 0
            else:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open(self.base_cooldown)

    def _abandoned(self, ticket: Ticket) -> None:
        if ticket.probe and ticket.epoch == self._epoch:
            self._probe_out = False
            self._next_probe()

    # -- transitions ---------------------------------------------------------------------------

    def _transition(self, state: BreakerState) -> None:
        previous, self._state = self._state, state
        self._epoch += 1
        if self.on_change is not None and previous is not state:
            cooldown = self._cooldown if state is BreakerState.OPEN else 0.0
            self.on_change(Transition(previous, state, self._failures, cooldown))

    def _open(self, cooldown: float) -> None:
        self._cooldown = cooldown
        self._opened_at = now = self._clock.time()
        self._transition(BreakerState.OPEN)
        if self._timer is not None:
            self._timer.cancel()
        reopens = now + cooldown
        self._timer = self._clock.call_at(reopens, self._half_open)
        keep: deque[_Waiter] = deque()
        for waiter in self._waiters:  # those who cannot last until the probe give up now
            if waiter.deadline is not None and waiter.deadline < reopens:
                self._fail(waiter, CircuitOpen(self.name, cooldown))
            elif not waiter.future.done():
                keep.append(waiter)
        self._waiters = keep

    def _half_open(self) -> None:
        self._timer = None
        self._probe_out = False
        self._transition(BreakerState.HALF_OPEN)
        self._next_probe()

    def _close(self) -> None:
        self._failures = 0
        self._cooldown = self.base_cooldown
        self._opened_at = None
        self._transition(BreakerState.CLOSED)
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_result(Ticket(self, self._epoch, probe=False))

    def _next_probe(self) -> None:
        """In half-open with no probe out: the longest waiter becomes the probe."""
        while self._waiters and self._state is BreakerState.HALF_OPEN and not self._probe_out:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                self._probe_out = True
                waiter.future.set_result(Ticket(self, self._epoch, probe=True))

    def _expire(self, waiter: _Waiter) -> None:
        reopens = self.reopens_at
        self._fail(
            waiter,
            CircuitOpen(self.name, None if reopens is None else reopens - self._clock.time()),
        )
        self._forget(waiter)

    def _fail(self, waiter: _Waiter, error: CircuitOpen) -> None:
        if not waiter.future.done():
            waiter.future.set_exception(error)

    def _forget(self, waiter: _Waiter) -> None:
        with suppress(ValueError):
            self._waiters.remove(waiter)
