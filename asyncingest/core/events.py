"""Frozen events the engine emits; displays, logs and metrics subscribe to them.

The engine never prints. A subscriber is any callable taking an :data:`Event`; it runs
inline in the event loop, so it must be quick (count, store, schedule), never block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from .result import EndpointSummary, IncrementSummary, RunResult

log = logging.getLogger("asyncingest")


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A run began: its id, its endpoints, the output folder and the API's rate windows."""

    run_id: str
    endpoints: tuple[str, ...]
    output: str
    rate_limits: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EndpointStarted:
    """An endpoint's workers started; ``total_jobs`` is known up front for a ``from_file``
    endpoint.
    """

    endpoint: str
    parent: str | None
    total_jobs: int | None  # known up front for file fan-out, else None


@dataclass(frozen=True, slots=True)
class JobsQueued:
    """More work for an endpoint: parent records or input ids arrived."""

    endpoint: str
    count: int


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """One attempt got an answer (or failed); ``ok`` is a usable page."""

    endpoint: str
    method: str
    url: str  # secrets redacted
    status: int | None
    attempt: int
    ok: bool
    duration: float
    limiter_wait: float
    nbytes: int
    records: int
    error: str | None = None  # why the attempt was not usable (secrets redacted)


@dataclass(frozen=True, slots=True)
class RequestRetried:
    """An attempt failed and will be tried again after ``wait`` seconds (URL redacted)."""

    endpoint: str
    url: str  # secrets redacted
    reason: str
    attempt: int
    wait: float
    status: int | None


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A request gave up after its retries; its work is recorded as a dead letter."""

    endpoint: str
    url: str  # secrets redacted
    reason: str
    attempts: int
    status: int | None


@dataclass(frozen=True, slots=True)
class BudgetExhausted:
    """A rate window has no room for longer than the configured threshold."""

    endpoint: str
    limiter: str
    wait: float  # seconds until the next request can go
    resume_at: float  # epoch seconds
    reason: str


@dataclass(frozen=True, slots=True)
class RecordsRejected:
    """Records were set aside as dead letters (``reason``: the first of the batch)."""

    endpoint: str
    count: int
    reason: str  # the first reason of the batch


@dataclass(frozen=True, slots=True)
class RecordsWritten:
    """Records were handed to the endpoint's Parquet file (visible once it is committed)."""

    endpoint: str
    count: int


@dataclass(frozen=True, slots=True)
class FileCommitted:
    """A Parquet file is complete, fsynced and visible under its final name."""

    endpoint: str
    path: str


@dataclass(frozen=True, slots=True)
class EndpointFinished:
    """An endpoint is done; its figures are in ``summary``."""

    summary: EndpointSummary


@dataclass(frozen=True, slots=True)
class IncrementStarted:
    """An incremental config's run began an increment (``resumed``: went on with one a kill or a
    stop interrupted): its number and each endpoint's window, before the first request."""

    increment: IncrementSummary
    resumed: bool


@dataclass(frozen=True, slots=True)
class CursorAhead:
    """Records of an incremental endpoint whose (time) cursor is beyond the run's start plus
    ``future_tolerance``: bad data (year 9999, epoch milliseconds where seconds are expected).
    They were written, but do not move the high-water mark (else every later change would be
    skipped). Emitted at most once per endpoint per checkpoint, naming the first value."""

    endpoint: str
    field: str
    value: Any  # the first such cursor, as the record had it
    limit: Any  # the latest cursor accepted (the state's form: ISO text or a number)
    records: int  # such records made durable since the last checkpoint


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run is over (finished, stopped or failed); the last event of a run."""

    result: RunResult


BreakerStateName = Literal["closed", "open", "half-open"]


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """An attempt got its permits and is about to be sent (pairs with ``RequestFinished``)."""

    endpoint: str
    method: str
    url: str  # secrets redacted
    attempt: int


@dataclass(frozen=True, slots=True)
class JobFinished:
    """One walk (all pages for one root call, input id or parent record) is over."""

    endpoint: str
    ok: bool = True  # False: it ended in a dead letter
    pages: int = 0


@dataclass(frozen=True, slots=True)
class RecordsExpected:
    """A walk's first page said how many records the walk holds (``total_path``)."""

    endpoint: str
    count: int


@dataclass(frozen=True, slots=True)
class BreakerChanged:
    """An endpoint's circuit breaker changed state (``cooldown``: seconds before the next probe when
    it opened).
    """

    endpoint: str
    state: BreakerStateName
    previous: BreakerStateName
    failures: int  # consecutive failures that led here
    cooldown: float  # seconds before the next probe when ``state == "open"``, else 0.0


@dataclass(frozen=True, slots=True)
class RatePaused:
    """A shared budget grants nothing for ``seconds`` (a 429, or the server's headers said the
    quota is spent)."""

    limiter: str  # the budget paused: "api", or an endpoint's own limiter
    endpoint: str  # whose response triggered it
    seconds: float
    reason: str
    throttled: bool  # True: the server answered 429/503; False: we stopped before it did


@dataclass(frozen=True, slots=True)
class ConcurrencyChanged:
    """Adaptive concurrency moved an endpoint's limit of requests in flight."""

    endpoint: str
    limit: int
    reason: str


Event = (
    RunStarted
    | IncrementStarted
    | CursorAhead
    | EndpointStarted
    | JobsQueued
    | RequestFinished
    | RequestRetried
    | RequestFailed
    | BudgetExhausted
    | RequestStarted
    | JobFinished
    | RecordsExpected
    | BreakerChanged
    | RatePaused
    | ConcurrencyChanged
    | RecordsRejected
    | RecordsWritten
    | FileCommitted
    | EndpointFinished
    | RunFinished
)
Subscriber = Callable[[Event], None]
"""A callable taking each event. It may have an ``event_types`` attribute, a collection of the
event classes it wants; it then receives only those, and the engine skips building the
per-request events (``RequestStarted``, ``RequestFinished``, ``JobFinished``) nobody wants."""

EVENT_TYPES: tuple[type[Event], ...] = get_args(Event)


class EventBus:
    """Fan an event out to the subscribers that want it; a failing subscriber never breaks the
    run."""

    __slots__ = ("_by_type", "_subscribers", "listening")

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self._subscribers: list[Subscriber] = []
        self._by_type: dict[type[Event], list[Subscriber]] = {t: [] for t in EVENT_TYPES}
        # Whether anyone subscribes at all, as a C-level call (see listening_to).
        self.listening: Callable[[], int] = self._subscribers.__len__
        for sub in subscribers:
            self.subscribe(sub)

    def subscribe(
        self, subscriber: Subscriber, events: Collection[type[Event]] | None = None
    ) -> None:
        """Add a subscriber for the ``events`` classes (default: its ``event_types`` attribute,
        else every event), from now on."""
        wanted = events if events is not None else getattr(subscriber, "event_types", None)
        self._subscribers.append(subscriber)
        for kind, subs in self._by_type.items():
            if wanted is None or kind in wanted:
                subs.append(subscriber)

    def listening_to(self, kind: type[Event]) -> Callable[[], int]:
        """A cheap test (a C-level ``len``) of whether anyone wants ``kind`` events now: per-request
        events are built only when someone does, and the test runs several times per request."""
        return self._by_type[kind].__len__

    def emit(self, event: Event) -> None:
        """Call every subscriber that wants ``event``, in order; an exception in one is logged,
        not raised.
        """
        subs = self._by_type.get(type(event))
        for sub in subs if subs is not None else self._subscribers:
            try:
                sub(event)
            except Exception:  # a display bug must not lose data
                log.exception("event subscriber %r failed on %s", sub, type(event).__name__)

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def __repr__(self) -> str:
        return f"EventBus({len(self._subscribers)} subscribers)"
