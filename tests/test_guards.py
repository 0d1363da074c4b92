"""EndpointGuards: breaker, throttle and adaptive concurrency wired around attempts, as the
endpoint runner will call them; every time in fake time."""

from __future__ import annotations

import asyncio

from asyncingest.core.events import BreakerChanged, ConcurrencyChanged, Event, RatePaused
from asyncingest.core.retry import FailureKind
from asyncingest.engine.guards import EndpointGuards, breaker_events, concurrency_events
from asyncingest.limits.adaptive import AdaptiveConcurrency
from asyncingest.limits.breaker import CircuitBreaker, Ticket
from asyncingest.limits.limiter import Limits
from asyncingest.limits.rate_budget import Budget
from asyncingest.limits.throttle import AdaptiveThrottle
from asyncingest.testing import FakeClock

THROTTLED = {"Retry-After": "30"}


class Emitted(list[Event]):
    def __call__(self, event: Event) -> None:
        self.append(event)


def http(
    guards: EndpointGuards,
    status: int,
    headers: dict[str, str],
    *,
    sent: float = 0.0,
    ticket: Ticket | None = None,
) -> None:
    """An attempt answered with ``status`` (an HTTP error unless 200)."""
    kind = None if status == 200 else FailureKind.HTTP_STATUS
    guards.answered(ticket, sent=sent, latency=0.2, status=status, kind=kind, headers=headers)


def guards_for(name: str, clock: FakeClock, emit: Emitted, budget: Budget) -> EndpointGuards:
    return EndpointGuards(name, clock, emit, throttle=AdaptiveThrottle(reserve=1), budget=budget)


async def test_a_429_on_one_endpoint_pauses_every_endpoint_of_the_api() -> None:
    clock = FakeClock(start=0.0)
    emitted = Emitted()
    api = Budget([(170, 10.0)], clock=clock, name="api")
    laps = guards_for("laps", clock, emitted, api)
    granted: dict[str, float] = {}

    async def request(endpoint: str) -> None:
        permit = await api.acquire(endpoint)
        granted[endpoint] = clock.time()
        permit.release()

    http(laps, 429, THROTTLED)
    http(laps, 429, THROTTLED)  # the same pause again: not extended, not reported twice
    async with clock.auto_advance():
        await asyncio.gather(request("weather"), request("laps"))
    assert granted == {"weather": 30.0, "laps": 30.0}
    assert emitted == [RatePaused("api", "laps", 30.0, "HTTP 429, Retry-After 30s", True)]


async def test_quota_spent_pauses_before_any_429() -> None:
    clock = FakeClock(start=0.0)
    emitted = Emitted()
    budget = Budget(clock=clock)  # the config declares no windows
    guards = guards_for("contacts", clock, emitted, budget)
    headers = {
        "X-HubSpot-RateLimit-Max": "190",
        "X-HubSpot-RateLimit-Remaining": "0",
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
    }
    http(guards, 200, headers)
    [event] = emitted
    assert isinstance(event, RatePaused) and not event.throttled and event.seconds == 10.0
    assert budget.pause_left() == 10.0


async def test_failures_open_the_breaker_and_say_so() -> None:
    clock = FakeClock(start=0.0)
    emitted = Emitted()
    breaker = CircuitBreaker(2, 30.0, clock, name="laps", on_change=breaker_events("laps", emitted))
    guards = EndpointGuards("laps", clock, emitted, breaker=breaker)
    for _ in range(2):
        ticket = await guards.admit()
        guards.answered(
            ticket, sent=0.0, latency=1.0, status=None, kind=FailureKind.TIMEOUT, headers=None
        )
    assert emitted == [BreakerChanged("laps", "open", "closed", 2, 30.0)]
    waiting = asyncio.create_task(guards.admit())
    await clock.advance(30.0)
    probe = await waiting
    assert probe is not None and probe.probe
    http(guards, 404, {}, sent=30.0, ticket=probe)  # the server answers: closed again
    assert [e.state for e in emitted if isinstance(e, BreakerChanged)] == [
        "open",
        "half-open",
        "closed",
    ]


async def test_abandoned_attempt_passes_the_probe_on() -> None:
    clock = FakeClock(start=0.0)
    breaker = CircuitBreaker(1, 5.0, clock)
    guards = EndpointGuards("laps", clock, Emitted(), breaker=breaker)
    http(guards, 500, {}, ticket=await guards.admit())
    await clock.advance(5.0)
    guards.abandoned(await guards.admit())
    ticket = await guards.admit()
    assert ticket is not None and ticket.probe


async def test_throttling_cuts_adaptive_concurrency() -> None:
    clock = FakeClock(start=0.0)
    emitted = Emitted()
    adaptive = AdaptiveConcurrency(16, initial=8, on_change=concurrency_events("laps", emitted))
    guards = EndpointGuards("laps", clock, emitted, adaptive=adaptive)
    limits = Limits([adaptive])
    (await limits.acquire("laps")).release()
    http(guards, 503, {})
    assert adaptive.limit == 4
    assert emitted == [ConcurrencyChanged("laps", 4, "throttled")]


async def test_nothing_configured_means_nothing_happens() -> None:
    clock = FakeClock(start=0.0)
    emitted = Emitted()
    guards = EndpointGuards("laps", clock, emitted)
    assert await guards.admit() is None
    http(guards, 429, THROTTLED)
    assert emitted == []
