"""CircuitBreaker: every transition, in fake time."""

from __future__ import annotations

import asyncio
import math

import pytest

from asyncingest.core.retry import FailureKind
from asyncingest.limits.breaker import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Ticket,
    Transition,
    counts_as_failure,
)
from asyncingest.testing import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=0.0)


class Transitions(list[tuple[BreakerState, BreakerState]]):
    def __call__(self, t: Transition) -> None:
        self.append((t.previous, t.state))


def make(clock: FakeClock, changes: Transitions | None = None, **kw: float) -> CircuitBreaker:
    options: dict[str, float] = {"max_cooldown": 40.0} | kw
    return CircuitBreaker(3, 10.0, clock, name="laps", on_change=changes, **options)


async def fail(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        (await breaker.before_request()).record(False)


async def test_closed_lets_everything_through(clock: FakeClock) -> None:
    breaker = make(clock)
    tickets = [await breaker.before_request() for _ in range(5)]
    assert not any(t.probe for t in tickets)
    assert breaker.state is CLOSED


async def test_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    changes = Transitions()
    breaker = make(clock, changes)
    await fail(breaker, 2)
    assert breaker.state is CLOSED and breaker.consecutive_failures == 2
    await fail(breaker, 1)
    assert breaker.state is OPEN
    assert breaker.opened_at == 0.0 and breaker.reopens_at == 10.0
    assert changes == [(CLOSED, OPEN)]
    assert repr(breaker) == (
        "CircuitBreaker('laps', open, failures=3/3, cooldown=10s, probe in 10s, waiting=0)"
    )


async def test_a_success_resets_the_count(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 2)
    (await breaker.before_request()).record(True)
    await fail(breaker, 2)
    assert breaker.state is CLOSED and breaker.consecutive_failures == 2


async def test_open_holds_requests_until_cooldown_then_one_probe(clock: FakeClock) -> None:
    changes = Transitions()
    breaker = make(clock, changes)
    await fail(breaker, 3)
    got: list[tuple[float, Ticket]] = []

    async def request() -> None:
        ticket = await breaker.before_request()
        got.append((clock.time(), ticket))

    tasks = [asyncio.create_task(request()) for _ in range(3)]
    await clock.advance(9.5)
    assert got == [] and breaker.waiting == 3
    await clock.advance(0.5)
    assert breaker.state is HALF_OPEN
    assert [(t, ticket.probe) for t, ticket in got] == [(10.0, True)]
    assert breaker.waiting == 2  # the others wait for the probe's verdict, they do not fail
    assert "probe out" in repr(breaker)
    got[0][1].record(True)
    await asyncio.gather(*tasks)
    assert breaker.state is CLOSED
    assert [ticket.probe for _, ticket in got] == [True, False, False]
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


async def test_half_open_probe_fails_reopens_with_doubled_cooldown(clock: FakeClock) -> None:
    changes = Transitions()
    breaker = make(clock, changes)
    await fail(breaker, 3)
    await clock.advance(10.0)
    probe = await breaker.before_request()  # nobody waited: the first caller is the probe
    assert probe.probe
    probe.record(False)
    assert breaker.state is OPEN
    assert breaker.cooldown == 20.0 and breaker.reopens_at == 30.0
    await clock.advance(20.0)
    assert breaker.state is HALF_OPEN
    (await breaker.before_request()).record(False)
    assert breaker.cooldown == 40.0
    await clock.advance(40.0)
    (await breaker.before_request()).record(False)
    assert breaker.cooldown == 40.0  # capped at max_cooldown
    assert changes[-2:] == [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]


async def test_closing_resets_the_cooldown(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(10.0)
    (await breaker.before_request()).record(False)
    await clock.advance(20.0)
    (await breaker.before_request()).record(True)
    assert breaker.state is CLOSED and breaker.cooldown == 10.0
    await fail(breaker, 3)
    assert breaker.reopens_at == clock.time() + 10.0


async def test_half_open_waiters_follow_a_failed_probe_into_the_next_cooldown(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(10.0)
    probe = await breaker.before_request()
    waiter = asyncio.create_task(breaker.before_request())
    await clock.advance(1.0)
    assert not waiter.done()
    probe.record(False)  # reopens until 31
    await clock.advance(19.0)
    assert not waiter.done()
    await clock.advance(1.0)
    ticket = await waiter
    assert ticket.probe and clock.time() == 31.0


async def test_results_of_requests_sent_before_opening_are_ignored(clock: FakeClock) -> None:
    breaker = make(clock)
    early = [await breaker.before_request() for _ in range(5)]
    for ticket in early[:3]:
        ticket.record(False)
    assert breaker.state is OPEN
    early[3].record(True)  # a late success does not close it
    early[4].record(False)  # nor does a late failure reopen or extend it
    assert breaker.state is OPEN and breaker.reopens_at == 10.0


async def test_only_the_first_verdict_counts(clock: FakeClock) -> None:
    breaker = make(clock)
    ticket = await breaker.before_request()
    ticket.record(False)
    ticket.record(False)
    ticket.record(False)
    assert breaker.consecutive_failures == 1


async def test_abandoned_probe_passes_the_turn_to_the_next_waiter(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    first = asyncio.create_task(breaker.before_request())
    second = asyncio.create_task(breaker.before_request())
    await clock.advance(10.0)
    probe = await first
    assert probe.probe and not second.done()
    probe.abandon()  # e.g. the request was cancelled
    next_probe = await second
    assert next_probe.probe and breaker.state is HALF_OPEN


async def test_cancelled_waiter_granted_the_probe_gives_it_back(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    first = asyncio.create_task(breaker.before_request())
    second = asyncio.create_task(breaker.before_request())
    await clock.advance(9.0)

    def cancel_first() -> None:
        first.cancel()

    clock.call_at(10.0, cancel_first)  # cancelled in the same step the probe is granted
    await clock.advance(1.0)
    assert first.cancelled()
    assert (await second).probe


async def test_deadline_before_the_probe_fails_at_once(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    with pytest.raises(CircuitOpen, match=r"circuit open for laps \(next probe in 10s\)"):
        await breaker.before_request(deadline=5.0)


async def test_deadline_while_waiting_for_the_probe(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(10.0)
    await breaker.before_request()  # the probe, still out
    waiter = asyncio.create_task(breaker.before_request(deadline=12.0))
    await clock.advance(2.0)
    with pytest.raises(CircuitOpen, match="probe pending"):
        await waiter
    assert breaker.waiting == 0


async def test_failed_probe_fails_waiters_whose_deadline_comes_first(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(10.0)
    probe = await breaker.before_request()
    short = asyncio.create_task(breaker.before_request(deadline=25.0))
    long = asyncio.create_task(breaker.before_request(deadline=60.0))
    await clock.advance(0.0)
    probe.record(False)  # next probe at 30
    await clock.advance(0.0)
    with pytest.raises(CircuitOpen):
        await short
    assert not long.done()
    await clock.advance(20.0)
    assert (await long).probe


async def test_guard_records_success_failure_and_abandons_on_cancel(clock: FakeClock) -> None:
    breaker = make(clock)
    async with breaker.guard():
        pass
    with pytest.raises(RuntimeError):
        async with breaker.guard():
            raise RuntimeError("boom")
    assert breaker.consecutive_failures == 1
    async with breaker.guard() as ticket:
        ticket.record(False)  # an explicit verdict wins over the clean exit
    assert breaker.consecutive_failures == 2
    await clock.advance(0.0)
    (await breaker.before_request()).record(False)
    await clock.advance(10.0)
    with pytest.raises(asyncio.CancelledError):
        async with breaker.guard() as ticket:
            assert ticket.probe
            raise asyncio.CancelledError
    assert breaker.state is HALF_OPEN
    assert (await breaker.before_request()).probe  # the turn passed on


async def test_closed_again_after_cooldown_under_auto_advance(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)

    async def request(ok: bool) -> float:
        async with breaker.guard() as ticket:
            ticket.record(ok)
        return clock.time()

    async with clock.auto_advance():
        times = await asyncio.gather(*(request(True) for _ in range(4)))
    assert times == [10.0] * 4 and breaker.state is CLOSED


def test_bad_settings_are_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(0, 1.0, clock)
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker(1, 0.0, clock)
    with pytest.raises(ValueError, match="backoff"):
        CircuitBreaker(1, 1.0, clock, backoff=0.5)


@pytest.mark.parametrize(
    ("kind", "status", "failure"),
    [
        (None, 200, False),
        (FailureKind.TIMEOUT, None, True),
        (FailureKind.RESET, None, True),
        (FailureKind.HTTP_STATUS, 503, True),
        (FailureKind.HTTP_STATUS, 429, False),
        (FailureKind.HTTP_STATUS, 404, False),
        (FailureKind.WRONG_SHAPE, 200, False),
        (FailureKind.BODY_TOO_LARGE, 200, False),
    ],
)
def test_what_counts_as_a_failure(kind: FailureKind | None, status: int, failure: bool) -> None:
    assert counts_as_failure(kind, status) is failure


async def test_transitions_say_how_many_failures_and_how_long(clock: FakeClock) -> None:
    seen: list[Transition] = []
    breaker = CircuitBreaker(2, 5.0, clock, on_change=seen.append)
    await fail(breaker, 2)
    await clock.advance(5.0)
    (await breaker.before_request()).record(False)
    assert seen == [
        Transition(CLOSED, OPEN, 2, 5.0),
        Transition(OPEN, HALF_OPEN, 2, 0.0),
        Transition(HALF_OPEN, OPEN, 3, 10.0),
    ]


# -- edges mutation testing found unguarded (nox -s mutants -- breaker) ------------------------


async def test_try_pass_when_closed_gives_plain_passes(clock: FakeClock) -> None:
    breaker = make(clock)
    ticket = breaker.try_pass()
    assert ticket is not None and not ticket.probe
    ticket.record(False)  # one failure of three: a plain pass, not a failed probe
    assert (breaker.state, breaker.consecutive_failures) == (CLOSED, 1)


async def test_try_pass_in_half_open_gives_the_one_probe(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    assert breaker.try_pass() is None  # open
    await clock.advance(10.0)
    probe = breaker.try_pass()
    assert probe is not None and probe.probe
    assert breaker.try_pass() is None  # the probe is out
    assert repr(breaker) == (
        "CircuitBreaker('laps', half-open, failures=3/3, cooldown=10s, probe out, waiting=0)"
    )
    probe.record(True)
    assert breaker.state is CLOSED
    assert breaker.opened_at is None and breaker.reopens_at is None


async def test_repr_while_open_and_awaiting_the_probe(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(9.5)
    assert repr(breaker) == (
        "CircuitBreaker('laps', open, failures=3/3, cooldown=10s, probe in 0.5s, waiting=0)"
    )
    await clock.advance(0.5)
    assert repr(breaker) == (
        "CircuitBreaker('laps', half-open, failures=3/3, cooldown=10s, awaiting probe, waiting=0)"
    )


async def test_waiters_let_through_on_close_count_in_the_new_period(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(10.0)
    probe = await breaker.before_request()
    waiters = [asyncio.create_task(breaker.before_request()) for _ in range(3)]
    await clock.advance(0.0)
    probe.record(True)
    tickets = [await w for w in waiters]
    assert not any(t.probe for t in tickets)
    for t in tickets:
        t.record(False)
    assert breaker.state is OPEN  # their failures count: three in a row open it again


async def test_a_pass_from_an_earlier_closed_period_does_not_count(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(10.0)
    (await breaker.before_request()).record(True)  # closed again
    old = await breaker.before_request()  # a pass of this closed period ...
    await fail(breaker, 3)  # ... which then opens, probes and closes again
    await clock.advance(10.0)
    (await breaker.before_request()).record(True)
    old.record(False)
    assert (breaker.state, breaker.consecutive_failures) == (CLOSED, 0)


async def test_a_deadline_at_the_reopening_instant_waits_for_it(clock: FakeClock) -> None:
    """Only a deadline *before* the next probe fails when the breaker (re)opens; one at that
    very instant waits, and at that instant it is still open: the caller hears it is due."""
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(10.0)
    probe = await breaker.before_request()
    waiter = asyncio.create_task(breaker.before_request(deadline=30.0))
    await clock.advance(0.0)
    probe.record(False)  # open again until 10 + 20 = 30
    await clock.advance(19.0)
    assert not waiter.done()
    await clock.advance(1.0)
    with pytest.raises(CircuitOpen, match=r"^circuit open for laps \(next probe in 0s\)$") as info:
        await waiter
    assert (info.value.name, info.value.reopens_in) == ("laps", 0.0)


async def test_waiters_failed_when_the_probe_fails_hear_the_new_cooldown(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(10.0)
    probe = await breaker.before_request()
    short = asyncio.create_task(breaker.before_request(deadline=25.0))
    await clock.advance(0.0)
    probe.record(False)
    with pytest.raises(CircuitOpen, match=r"^circuit open for laps \(next probe in 20s\)$") as info:
        await short
    assert (info.value.name, info.value.reopens_in) == ("laps", 20.0)


def test_circuit_open_names_the_endpoint_and_the_wait() -> None:
    error = CircuitOpen("", None)
    assert (str(error), error.name, error.reopens_in) == (
        "circuit open for endpoint (probe pending)",
        "",
        None,
    )
    error = CircuitOpen("laps", 2.5)
    assert (str(error), error.name, error.reopens_in) == (
        "circuit open for laps (next probe in 2.5s)",
        "laps",
        2.5,
    )


async def test_ticket_repr_and_no_verdict_after_abandon(clock: FakeClock) -> None:
    breaker = make(clock)
    ticket = await breaker.before_request()
    assert repr(ticket) == "<pass of 'laps' epoch 0>"
    ticket.abandon()
    assert repr(ticket) == "<pass of 'laps' epoch 0 done>"
    ticket.record(False)
    assert breaker.consecutive_failures == 0
    await fail(breaker, 3)
    await clock.advance(10.0)
    probe = await breaker.before_request()
    assert repr(probe) == "<probe of 'laps' epoch 2>"
    probe.abandon()
    probe.record(True)  # too late: the abandon was its verdict
    assert breaker.state is HALF_OPEN


def test_settings_at_their_edges(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker(1, math.inf, clock)
    CircuitBreaker(1, 1.0, clock, backoff=1.0)  # a constant cooldown is allowed
    CircuitBreaker(1, 1.0, clock, backoff=1.5)
    breaker = CircuitBreaker(1, 2.5, clock)
    assert (breaker.name, breaker.cooldown, breaker.opened_at) == ("", 2.5, None)
    assert breaker.max_cooldown == 20.0  # eight cooldowns unless told
    assert repr(breaker) == "CircuitBreaker('', closed, failures=0/1, cooldown=2.5s, waiting=0)"


async def test_failed_probes_grow_the_cooldown_up_to_eight_times_by_default(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(1, 1.0, clock)
    await fail(breaker, 1)
    seen = [breaker.cooldown]
    for _ in range(5):
        await clock.advance(breaker.cooldown)
        (await breaker.before_request()).record(False)
        seen.append(breaker.cooldown)
    assert seen == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


async def test_a_deadline_at_the_next_probe_waits_for_it(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    waiter = asyncio.create_task(breaker.before_request(deadline=10.0))
    await clock.advance(10.0)
    assert (await waiter).probe


async def test_circuit_open_at_once_says_how_long_from_now(clock: FakeClock) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(4.0)
    with pytest.raises(CircuitOpen) as info:
        await breaker.before_request(deadline=5.0)
    assert info.value.reopens_in == 6.0


async def test_cancelled_as_its_deadline_fails_it_the_waiter_is_just_cancelled(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    await fail(breaker, 3)
    await clock.advance(10.0)
    await breaker.before_request()  # the probe, still out
    waiter = asyncio.create_task(breaker.before_request(deadline=12.0))
    await clock.advance(0.0)
    clock.call_at(12.0, waiter.cancel)  # the same step the deadline fails it
    await clock.advance(2.0)
    assert waiter.cancelled()
    assert breaker.waiting == 0
