"""What protects an endpoint and the API around each request, as one small collaborator the
endpoint runner calls twice per attempt: :meth:`EndpointGuards.admit` before acquiring the
limits (the circuit breaker), :meth:`EndpointGuards.answered` once the attempt is over (the
breaker's verdict, the server's rate headers read by the throttle, adaptive concurrency's
feedback). Each part is optional; with none configured both calls do nothing.

A pause the throttle decides is applied to the *shared* budget (the API's
:class:`~asyncingest.limits.rate_budget.RateBudget`, windows or not), as a duration, so a 429 on
one endpoint holds every endpoint of that API, and every pipeline sharing the budget. See
docs/architecture.md, "requests".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..core.events import BreakerChanged, ConcurrencyChanged, Event, RatePaused
from ..core.ratelimit_headers import parse_rate_headers
from ..core.retry import FailureKind
from ..limits.adaptive import AdaptiveConcurrency
from ..limits.breaker import CircuitBreaker, Ticket, Transition, counts_as_failure
from ..limits.clock import Clock
from ..limits.rate_budget import RateBudget
from ..limits.throttle import AdaptiveThrottle

__all__ = ["EndpointGuards", "breaker_events", "concurrency_events"]

_OVERLOADED = frozenset({429, 503})


@dataclass(slots=True)
class EndpointGuards:
    """The breaker, throttle and adaptive concurrency of one endpoint, called before and after each
    attempt (see the module docstring).
    """

    endpoint: str
    clock: Clock
    emit: Callable[[Event], None]
    breaker: CircuitBreaker | None = None
    throttle: AdaptiveThrottle | None = None
    budget: RateBudget | None = None  # what the throttle pauses
    adaptive: AdaptiveConcurrency | None = None

    async def admit(self, *, deadline: float | None = None) -> Ticket | None:
        """Wait for the breaker (raises ``CircuitOpen`` past ``deadline``)."""
        if self.breaker is None:
            return None
        return await self.breaker.before_request(deadline=deadline)

    def answered(
        self,
        ticket: Ticket | None,
        *,
        sent: float,
        latency: float,
        status: int | None,
        kind: FailureKind | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        """One attempt is over: sent at monotonic ``sent``, over ``latency`` seconds later,
        with ``status`` (None: no answer) and failure ``kind`` (None: a usable page)."""
        if ticket is not None:
            ticket.record(not counts_as_failure(kind, status))
        if (
            self.throttle is not None
            and self.budget is not None
            and headers is not None
            and (status in _OVERLOADED or _has_rate_headers(headers))
        ):
            self._throttle(status, headers)
        if self.adaptive is not None:
            overloaded = status in _OVERLOADED or kind is FailureKind.TIMEOUT
            self.adaptive.observe(started=sent, latency=latency, throttled=overloaded)

    def abandoned(self, ticket: Ticket | None) -> None:
        """The attempt was cancelled before any answer."""
        if ticket is not None:
            ticket.abandon()

    def _throttle(self, status: int | None, headers: Mapping[str, str]) -> None:
        assert self.throttle is not None and self.budget is not None
        hint = parse_rate_headers(headers, self.clock.wall())
        if hint is None and status not in _OVERLOADED:
            return
        now = self.clock.time()
        left = self.budget.pause_left()
        pause = self.throttle.decide(
            hint,
            status=status,
            now=now,
            in_flight=self.budget.in_flight,  # granted by the budget, maybe not yet counted
            paused_until=None if left is None else now + left,
        )
        if pause is not None:
            self.budget.pause_for(pause.seconds)
            self.emit(
                RatePaused(
                    self.budget.name, self.endpoint, pause.seconds, pause.reason, pause.throttled
                )
            )


# One header of each scheme parse_rate_headers reads; a response with none of them (most
# responses of most APIs) skips parsing. Lookups in aiohttp's headers are case-insensitive.
_RATE_HEADERS = (
    "Retry-After",
    "X-RateLimit-Remaining",
    "X-Rate-Limit-Remaining",
    "RateLimit-Remaining",
    "RateLimit",
    "RateLimit-Policy",
    "X-HubSpot-RateLimit-Remaining",
    "X-HubSpot-RateLimit-Daily-Remaining",
    "X-HubSpot-RateLimit-Secondly-Remaining",
)


_RATE_KEYS = frozenset(h.lower() for h in _RATE_HEADERS)


def _has_rate_headers(headers: Mapping[str, str]) -> bool:
    # A response has a handful of headers; scanning them (in C: map, lower, isdisjoint) beats
    # ten case-insensitive lookups.
    return not _RATE_KEYS.isdisjoint(map(str.lower, headers))


def breaker_events(endpoint: str, emit: Callable[[Event], None]) -> Callable[[Transition], None]:
    """A ``CircuitBreaker(on_change=...)`` callback emitting :class:`BreakerChanged`."""

    def changed(t: Transition) -> None:
        emit(BreakerChanged(endpoint, t.state.value, t.previous.value, t.failures, t.cooldown))

    return changed


def concurrency_events(endpoint: str, emit: Callable[[Event], None]) -> Callable[[int, str], None]:
    """An ``AdaptiveConcurrency(on_change=...)`` callback emitting :class:`ConcurrencyChanged`."""

    def changed(limit: int, why: str) -> None:
        emit(ConcurrencyChanged(endpoint, limit, why))

    return changed
