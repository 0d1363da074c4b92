"""One rate budget for workers in many processes: :class:`RedisBudget`, the
:class:`~asyncingest.limits.rate_budget.RateBudget` kept in Redis (``pip install
asyncingest[scale]``). See docs/architecture.md, "Sharing a budget".

The state of every window lives in Redis and one Lua script (``redis_budget.lua``) reads and
changes it atomically, on Redis ``TIME`` (never a worker's clock: skew cannot over-admit):

* **Held until the response completes.** A grant adds a *lease* (a sorted set, scored by when it
  runs out); ``release`` removes it and records the release in every window, where it counts
  for one window length. The proof of :mod:`asyncingest.limits.limiter` carries over: no window
  the server counts ever holds more than its limit, however many workers and whatever the
  latency. ``give_back`` (nothing was sent) removes the lease without a record.
* **Bounded memory.** A window's releases are a list of ``expiry:count`` entries, oldest first:
  at most ``limit`` entries for a window of up to ``EXACT_MAX`` slots, and for a larger one (say
  625,000 a day) releases are rounded up to ``length / BUCKETS`` (86.4 s), so at most about
  ``BUCKETS`` entries, as the in-process limiter does.
* **Waiters sleep, never poll.** A refusal says how long until a grant may be possible (the pause,
  or a full window's oldest expiry; a whole window when every slot is in flight): the waiter
  sleeps that long and asks once more. In one process one waiter asks at a time, chosen
  round-robin between pipelines, then endpoints (the others wait their turn locally).
* **Crashed holders.** A lease runs out ``lease_seconds`` after the grant unless its holder
  renews it (every third of that, while the request is in flight); a SIGKILLed worker's slots
  are then counted as released at the moment Redis noticed (never earlier than the truth).
* **One pause.** ``pause_for`` (a 429, a spent quota) stores the end of the pause in Redis, on its
  clock; every worker's next ask waits for it. It is also kept locally at once.
* **Redis down or hung: fail closed.** Every call has a timeout; no grant without an answer. The
  waiter retries with back-off (up to ``2 s``), and the outage is logged once (and its end).
  Releases that cannot be recorded are retried; if they never are, the lease runs out. An ask
  that timed out is given back (in the background, retried): a hung Redis (SIGSTOP) runs the
  commands it had received once it resumes, and that lease would otherwise hold a slot, granted
  to nobody, until it ran out.
* **History lost** (Redis restarted without persistence, flushed): a worker that was talking to
  Redis notices (its epoch is gone while it should still be there, or another one is there: a
  newcomer found Redis empty first) and the script presumes every window full for its whole
  length from then: nothing is granted for the longest window. A worker started fresh into an
  emptied Redis cannot tell; that is the limit of this design without a durable ledger.

All workers sharing a budget must be given the same windows and ``name`` (and ``prefix``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..config.models import RateWindow
from ..core.snapshot import WindowUsage
from .clock import Clock, LoopClock
from .limiter import BUCKETS, EXACT_MAX, ConcurrencyLimit, make_windows

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from .rate_budget import RateBudget

__all__ = ["RedisBudget"]

logger = logging.getLogger("asyncingest.budget")

_US = 1_000_000
_MAX_BACKOFF = 2.0


@dataclass(frozen=True, slots=True)
class _Reply:
    granted: bool
    wait: float  # seconds until a grant may be possible
    epoch: str
    lost: bool
    held: int
    paused: float  # seconds left of the shared pause
    used: tuple[int, ...]
    stored: tuple[int, ...]
    seen_at: float  # local monotonic time the answer came


class RedisPermit:
    """A slot of a :class:`RedisBudget` (a lease in Redis)."""

    __slots__ = ("_budget", "_done", "lease")

    def __init__(self, budget: RedisBudget, lease: str) -> None:
        self._budget = budget
        self.lease = lease
        self._done = False

    def release(self) -> None:
        """The request is over: recorded in every window (in the background)."""
        if not self._done:
            self._done = True
            self._budget._finish(self.lease, "release")

    def give_back(self) -> None:
        """Nothing was sent: the lease is dropped without a record (in the background)."""
        if not self._done:
            self._done = True
            self._budget._finish(self.lease, "give_back")

    def __repr__(self) -> str:
        return f"<RedisPermit {self.lease}{' done' * self._done}>"


class RedisBudget:
    """The :class:`~asyncingest.limits.rate_budget.RateBudget` of workers in many processes,
    kept in Redis (see the module docstring)::

        async with RedisBudget("redis://127.0.0.1:6379/0", cfg.api.rate_limits) as budget:
            await asyncingest.run(cfg, budget=budget)

    ``url`` or ``client`` (a ``redis.asyncio.Redis``) says where; ``name`` and ``prefix`` name
    the keys (``prefix:{name}:...``, one hash slot). ``timeout``: seconds for any Redis call.
    """

    def __init__(
        self,
        url: str | None = None,
        rate_limits: Iterable[RateWindow | tuple[int, float]] = (),
        *,
        client: Redis | None = None,
        name: str = "api",
        prefix: str = "asyncingest",
        lease_seconds: float = 30.0,
        timeout: float = 1.0,
        clock: Clock | None = None,
        exact_max: int = EXACT_MAX,
        buckets: int = BUCKETS,
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("RedisBudget needs a url or a client (one of them)")
        if not 0 < lease_seconds < math.inf or not 0 < timeout < math.inf:
            raise ValueError("lease_seconds and timeout must be finite numbers > 0")
        windows = [
            (w.requests, w.per_seconds) if isinstance(w, RateWindow) else (int(w[0]), float(w[1]))
            for w in rate_limits
        ]
        self._windows = make_windows(windows, exact_max, buckets, allow_none=True)
        self._name = name
        self._url = url
        self._client = client
        self._own_client = client is None
        self._timeout = timeout
        self._lease_us = round(lease_seconds * _US)
        self._clock: Clock = clock or LoopClock()
        keys = f"{prefix}:{{{name}}}"
        self._keys = [f"{keys}:alive", f"{keys}:pause", f"{keys}:held"]
        self._args: list[int] = []
        for w in self._windows:
            i = len(self._args) // 3
            self._keys += [f"{keys}:log{i}", f"{keys}:count{i}"]
            self._args += [w.limit, math.ceil(w.seconds * _US), math.ceil(w.bucket * _US)]
        self._forget_after = max((w.seconds for w in self._windows), default=0.0) + lease_seconds
        self._script: AsyncScript | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turns = ConcurrencyLimit(1, name)  # one asker per process, fair between pipelines
        self._ids = itertools.count()
        self._me = uuid.uuid4().hex[:12]
        self._held: set[str] = set()  # this process's leases in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._epoch = ""
        self._last: _Reply | None = None
        self._local_pause = -math.inf  # local monotonic end of a pause this process asked for
        self._down_since: float | None = None
        self._lost_seen = 0
        self._timed_out = False  # the last call failed by a timeout (it may still run)

    @property
    def name(self) -> str:
        """The budget's name (in its keys, events and logs)."""
        return self._name

    async def __aenter__(self) -> RedisBudget:
        await self.peek()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Record the releases still pending (within ``timeout`` each), stop renewing, close."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2 * self._timeout + 1)
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None
            self._script = None

    # -- the RateBudget protocol ---------------------------------------------------------------

    async def acquire(self, key: str = "", *, pipeline: str = "") -> RedisPermit:
        """Wait for a lease in every window (never without Redis's answer: fails closed)."""
        self._check_loop()
        turn = await self._turns.acquire(key, group=pipeline)
        try:
            backoff = 0.05
            while True:
                local = self._local_pause - self._clock.time()
                if local > 0:
                    await self._clock.sleep(local)
                lease = f"{self._me}:{next(self._ids)}"
                try:
                    reply = await self._ask("acquire", lease)
                except asyncio.CancelledError:  # Redis may have granted it: give it back
                    self._background(self._record(lease, "give_back"))
                    raise
                if reply is None:  # Redis did not answer: nothing is granted
                    if self._timed_out:  # a hung Redis runs the ask when it resumes: undo it
                        self._background(self._record(lease, "give_back"))
                    await self._clock.sleep(backoff)
                    backoff = min(_MAX_BACKOFF, backoff * 2)
                    continue
                backoff = 0.05
                if reply.granted:
                    self._held.add(lease)
                    self._renew_soon()
                    return RedisPermit(self, lease)
                await self._clock.sleep(reply.wait)
        finally:
            turn.release()

    def try_acquire(self, key: str = "", *, pipeline: str = "") -> RedisPermit | None:
        """Always None: only Redis can tell (``acquire`` asks it)."""
        return None

    def pause_for(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` to any worker: kept here at once, and in Redis (on its
        clock) in the background."""
        if seconds <= 0:
            return
        self._check_loop()
        self._local_pause = max(self._local_pause, self._clock.time() + seconds)
        self._background(self._ask("pause", "", arg=round(seconds * _US)))

    def pause_left(self) -> float | None:
        """Seconds left of the pause in force (here or as Redis last said), or None."""
        now = self._clock.time()
        left = self._local_pause - now
        last = self._last
        if last is not None:
            left = max(left, last.paused - (now - last.seen_at))
        return left if left > 0 else None

    def usage(self) -> tuple[WindowUsage, ...]:
        """Each window's use as Redis last said (all workers' slots)."""
        last = self._last
        return tuple(
            WindowUsage(
                w.limit,
                w.seconds,
                last.used[i] if last else 0,
                last.stored[i] if last else 0,
                w.bucket,
            )
            for i, w in enumerate(self._windows)
        )

    @property
    def in_flight(self) -> int:
        """Leases held by all workers, as Redis last said."""
        return self._last.held if self._last is not None else 0

    def time_until_capacity(self) -> float | None:
        """Seconds until a grant may be possible, as Redis last said (0.0: now)."""
        last = self._last
        if last is None or last.granted:
            return 0.0
        return max(0.0, last.wait - (self._clock.time() - last.seen_at))

    # -- more ----------------------------------------------------------------------------------

    async def peek(self) -> None:
        """Ask Redis for the windows' state now (no grant); raises if it does not answer."""
        if await self._ask("peek", "") is None:
            raise ConnectionError(f"Redis budget {self._name!r}: {self._where()} does not answer")

    @property
    def reachable(self) -> bool:
        """False from a failed call until the next answer."""
        return self._down_since is None

    def __repr__(self) -> str:
        windows = ", ".join(f"{u.limit}/{u.seconds:g}s used {u.used}" for u in self.usage())
        state = "reachable" if self.reachable else "UNREACHABLE"
        return (
            f"RedisBudget({self._name!r} at {self._where()}, [{windows}], "
            f"in_flight={self.in_flight}, mine={len(self._held)}, {state})"
        )

    # -- internals -----------------------------------------------------------------------------

    def _where(self) -> str:
        """Where Redis is, without credentials."""
        if self._url is None:
            return "a given client"
        from urllib.parse import urlsplit

        u = urlsplit(self._url)
        return f"{u.scheme}://{u.hostname}:{u.port or 6379}{u.path}"

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                f"RedisBudget {self._name!r} is used from two event loops; make one per loop"
            )

    def _connect(self) -> AsyncScript:
        if self._script is None:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            if self._client is None:
                assert self._url is not None
                self._client = Redis.from_url(
                    self._url,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),  # we retry, fail closed and log
                )
            source = resources.files("asyncingest.limits").joinpath("redis_budget.lua").read_text()
            self._script = self._client.register_script(source)
        return self._script

    async def _ask(
        self, op: str, lease: str, *, arg: int = 0, leases: Iterable[str] = ()
    ) -> _Reply | None:
        """Run the script once; None when Redis did not answer in time (logged once per outage)."""
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeout

        known = self._epoch
        last = self._last
        if known and last is not None and self._clock.time() - last.seen_at >= self._forget_after:
            known = ""  # the keys may have lapsed on their own since: not a loss
        args: list[Any] = [op, known, lease, arg, self._lease_us, len(self._windows)]
        args += self._args
        args += list(leases)
        try:
            script = self._connect()
            async with asyncio.timeout(self._timeout * 2):
                raw = await script(keys=self._keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._timed_out = isinstance(exc, TimeoutError | RedisTimeout)
            if self._down_since is None:
                self._down_since = self._clock.time()
                logger.warning(
                    "rate budget %r: Redis at %s does not answer (%s: %s); no request is "
                    "granted until it does; retrying",
                    self._name,
                    self._where(),
                    type(exc).__name__,
                    exc,
                )
            return None
        if self._down_since is not None:
            logger.warning(
                "rate budget %r: Redis at %s answers again after %.1f s",
                self._name,
                self._where(),
                self._clock.time() - self._down_since,
            )
            self._down_since = None
        reply = self._parse(raw)
        self._epoch = reply.epoch
        self._last = reply
        if reply.lost:
            self._lost_seen += 1
            longest = max((w.seconds for w in self._windows), default=0.0)
            logger.warning(
                "rate budget %r: Redis at %s lost its state (restarted empty, or flushed); "
                "every window counts as full: nothing is granted for %g s",
                self._name,
                self._where(),
                longest,
            )
        return reply

    def _parse(self, raw: list[Any]) -> _Reply:
        n = len(self._windows)
        epoch = raw[2].decode() if isinstance(raw[2], bytes) else str(raw[2])
        return _Reply(
            granted=bool(raw[0]),
            wait=int(raw[1]) / _US,
            epoch=epoch,
            lost=bool(raw[3]),
            held=int(raw[4]),
            paused=int(raw[5]) / _US,
            used=tuple(int(x) for x in raw[6 : 6 + n]),
            stored=tuple(int(x) for x in raw[6 + n : 6 + 2 * n]),
            seen_at=self._clock.time(),
        )

    def _finish(self, lease: str, op: str) -> None:
        self._held.discard(lease)
        self._background(self._record(lease, op))

    async def _record(self, lease: str, op: str) -> None:
        """A release (or give-back) reaches Redis, retried while it is down (a lease that never
        gets there runs out instead)."""
        backoff = 0.05
        deadline = self._clock.time() + self._lease_us / _US
        while await self._ask(op, lease) is None:
            if self._clock.time() + backoff > deadline:
                return
            await self._clock.sleep(backoff)
            backoff = min(_MAX_BACKOFF, backoff * 2)

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _renew_soon(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        """While this process holds leases: extend them every third of their length."""
        every = self._lease_us / _US / 3
        while self._held:
            await self._clock.sleep(every)
            if self._held:
                await self._ask("renew", "", leases=list(self._held))


if TYPE_CHECKING:

    def _is_a_rate_budget(budget: RedisBudget) -> RateBudget:
        return budget  # mypy checks that RedisBudget implements the protocol
