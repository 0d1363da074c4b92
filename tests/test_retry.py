"""RetryPolicy and Retry-After parsing: pure arithmetic, no sleeping."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from asyncingest.config.models import RetryConfig
from asyncingest.core.retry import (
    Failure,
    FailureKind,
    RetryDecision,
    RetryPolicy,
    parse_retry_after,
    retry_policy,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


# -- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("0", 0.0), ("-5", 0.0)],
)
def test_retry_after_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after(http_date(NOW + 90), NOW) == 90.0


def test_retry_after_imf_fixdate_literal() -> None:
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:20 GMT", NOW) == 120.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after(http_date(NOW - 3600), NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", "1e3", "12 seconds", "Mon, 99"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


# -- Failure: one classification of a failed attempt, Retry-After parsed once ---------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("1.5", 1.5), (http_date(NOW + 45), 45.0), ("soon", None), (None, None)],
)
def test_an_answered_failure_carries_retry_after_in_seconds_read_against_the_wall_clock(
    header: str | None, seconds: float | None
) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    failure = Failure.answered(429, "HTTP 429: slow down", headers, NOW)
    assert (failure.kind, failure.status, failure.retry_after) == (
        FailureKind.HTTP_STATUS,
        429,
        seconds,
    )
    assert failure.headers is headers  # the guards read the quota headers of a failure too
    assert str(failure) == "HTTP 429 (HTTP 429: slow down)"


def test_a_failure_without_an_answer_names_its_kind() -> None:
    assert str(Failure(FailureKind.TIMEOUT)) == "timeout"
    assert str(Failure(FailureKind.RESET, "server disconnected")) == (
        "connection reset (server disconnected)"
    )


# -- backoff ----------------------------------------------------------------------------------


def test_every_delay_within_full_jitter_bounds() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=30.0)
    rng = random.Random(1)
    for attempt in range(1, 20):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert policy.backoff_ceiling(attempt) == ceiling
        for _ in range(200):
            assert 0.0 <= policy.delay(attempt, None, rng) <= ceiling


def test_jitter_spreads_delays_over_the_range() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=60.0)
    rng = random.Random(2)
    delays = [policy.delay(4, None, rng) for _ in range(1000)]
    assert min(delays) < 1.0 and max(delays) > 7.0


def test_without_jitter_delay_is_the_ceiling() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=10.0, jitter=False)
    rng = random.Random(0)
    assert [policy.delay(n, None, rng) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_delay_is_never_less_than_retry_after() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=60.0)
    rng = random.Random(3)
    for attempt in range(1, 10):
        for _ in range(100):
            assert policy.delay(attempt, 17.0, rng) >= 17.0


def test_delay_caps_retry_after() -> None:
    policy = RetryPolicy(backoff_base=0.1, backoff_max=1.0, max_retry_after=120.0)
    assert policy.delay(1, 3600.0, random.Random(0)) == 120.0


def test_same_seed_same_delays() -> None:
    policy = RetryPolicy()
    a = [policy.delay(n, None, random.Random(9)) for n in range(1, 6)]
    b = [policy.delay(n, None, random.Random(9)) for n in range(1, 6)]
    assert a == b


# -- decisions --------------------------------------------------------------------------------


def test_retryable_statuses_are_408_429_and_every_5xx() -> None:
    policy = RetryPolicy()
    for status in (408, 429, 500, 502, 503, 504, 507, 599):
        assert policy.retryable(Failure.http(status))
    for status in (400, 401, 403, 404, 409, 410, 422, 310):
        assert not policy.retryable(Failure.http(status))


def test_non_retryable_4xx_gives_up_at_once() -> None:
    decision = RetryPolicy().decide(1, 0.0, Failure.http(404), random.Random(0))
    assert not decision.retry
    assert decision.reason == "HTTP 404 (not retryable)"


REPEATING = (
    FailureKind.BODY_TOO_LARGE,
    FailureKind.CIRCUIT_OPEN,
    FailureKind.TOO_MANY_REDIRECTS,
    FailureKind.UNSAFE_PATH_VALUE,
)
NOT_RETRIED = (FailureKind.HTTP_STATUS, *REPEATING)
RETRIED_KINDS = [k for k in FailureKind if k not in NOT_RETRIED]


@pytest.mark.parametrize("kind", REPEATING)
def test_failures_that_would_repeat_are_not_retried(kind: FailureKind) -> None:
    assert not RetryPolicy().decide(1, 0.0, Failure(kind), random.Random(0)).retry


@pytest.mark.parametrize("kind", RETRIED_KINDS)
def test_network_and_body_failures_are_retried(kind: FailureKind) -> None:
    decision = RetryPolicy().decide(1, 0.0, Failure(kind), random.Random(0))
    assert decision.retry


def test_body_too_large_is_not_retried() -> None:
    outcome = Failure(FailureKind.BODY_TOO_LARGE, "over 50 MB")
    decision = RetryPolicy().decide(1, 0.0, outcome, random.Random(0))
    assert not decision.retry
    assert decision.reason == "body too large (over 50 MB) (not retryable)"


def test_statuses_are_configurable() -> None:
    policy = RetryPolicy(retry_statuses=frozenset({409}))
    assert policy.decide(1, 0.0, Failure.http(409), random.Random(0)).retry
    assert not policy.decide(1, 0.0, Failure.http(503), random.Random(0)).retry


def test_gives_up_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=5, max_time=1e6)
    rng = random.Random(0)
    assert all(policy.decide(n, 0.0, Failure.http(503), rng).retry for n in range(1, 5))
    decision = policy.decide(5, 0.0, Failure.http(503), rng)
    assert not decision.retry
    assert decision.reason == "gave up after 5 attempts: HTTP 503"


def test_max_attempts_one_means_no_retry() -> None:
    policy = RetryPolicy(max_attempts=1)
    assert not policy.decide(1, 0.0, Failure(FailureKind.TIMEOUT), random.Random(0)).retry


def test_gives_up_once_max_time_has_passed() -> None:
    policy = RetryPolicy(max_time=60.0)
    decision = policy.decide(2, 60.0, Failure(FailureKind.TIMEOUT), random.Random(0))
    assert not decision.retry
    assert "max_time 60s" in decision.reason


def test_wait_never_passes_max_time() -> None:
    policy = RetryPolicy(
        max_attempts=100, max_time=10.0, backoff_base=4.0, backoff_max=100.0, jitter=False
    )
    decision = policy.decide(3, 9.0, Failure.http(500), random.Random(0))
    assert decision.retry and decision.wait == 1.0


def test_retry_after_is_honoured() -> None:
    decision = RetryPolicy().decide(1, 0.0, Failure.http(429, retry_after=30.0), random.Random(0))
    assert decision.retry and decision.wait >= 30.0


def test_retry_after_over_the_cap_gives_up_naming_it() -> None:
    """The README's word: a longer Retry-After gives up instead of sleeping (or retrying
    sooner than the server asked)."""
    policy = RetryPolicy(max_retry_after=120.0, max_time=3600.0, backoff_max=1.0)
    decision = policy.decide(1, 0.0, Failure.http(429, retry_after=3600.0), random.Random(0))
    assert not decision.retry and decision.wait == 0.0
    assert "Retry-After 3600s exceeds max_retry_after 120s" in decision.reason


def test_retry_after_at_the_cap_is_waited() -> None:
    policy = RetryPolicy(max_retry_after=120.0, max_time=300.0, backoff_max=1.0)
    decision = policy.decide(1, 0.0, Failure.http(429, retry_after=120.0), random.Random(0))
    assert decision.retry and decision.wait == 120.0


def test_retry_after_whose_cap_passes_max_time_gives_up() -> None:
    policy = RetryPolicy(max_retry_after=120.0, max_time=300.0)
    decision = policy.decide(2, 240.0, Failure.http(429, retry_after=3600.0), random.Random(0))
    assert not decision.retry
    assert "Retry-After 3600s exceeds max_retry_after 120s" in decision.reason
    assert decision.reason.endswith("HTTP 429")


def test_retry_after_within_cap_but_past_max_time_gives_up() -> None:
    policy = RetryPolicy(max_retry_after=120.0, max_time=300.0)
    decision = policy.decide(2, 250.0, Failure.http(503, retry_after=100.0), random.Random(0))
    assert not decision.retry
    assert "Retry-After 100s would pass max_time 300s" in decision.reason


def test_reason_for_a_retry_names_the_failure_and_next_attempt() -> None:
    policy = RetryPolicy(max_attempts=4, jitter=False, backoff_base=2.0)
    decision = policy.decide(1, 0.0, Failure.http(502), random.Random(0))
    assert decision.reason == "HTTP 502: retry 2/4 in 2s"


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_max=float("inf"))


# -- edges mutation testing found unguarded (nox -s mutants -- retry) -------------------------


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is not UTC (a server, a laptop)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_an_http_date_without_a_zone_is_utc_whatever_the_local_zone(new_york: None) -> None:
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 -0000", NOW) == 30.0
    assert parse_retry_after(http_date(NOW + 30), NOW) == 30.0


def test_retry_policy_is_the_config_field_by_field() -> None:
    cfg = RetryConfig(
        max_attempts=7,
        max_time=99.0,
        backoff_base=0.25,
        backoff_max=3.0,
        jitter=False,
        retry_statuses=frozenset({418}),
        retry_all_5xx=False,
        max_retry_after=11.0,
    )
    assert retry_policy(cfg) == RetryPolicy(
        max_attempts=7,
        max_time=99.0,
        backoff_base=0.25,
        backoff_max=3.0,
        jitter=False,
        retry_statuses=frozenset({418}),
        max_retry_after=11.0,
    )


def test_retry_all_5xx_adds_exactly_500_to_599() -> None:
    statuses = retry_policy(RetryConfig(retry_statuses=frozenset({418}))).retry_statuses
    assert statuses == {418, *range(500, 600)}


def test_a_give_up_is_no_retry_no_wait_and_why() -> None:
    decision = RetryPolicy().decide(1, 0.0, Failure.http(404), random.Random(0))
    assert decision == RetryDecision(False, 0.0, "HTTP 404 (not retryable)")
    assert Failure.http(503) == Failure(FailureKind.HTTP_STATUS, "", 503, None)


def test_zero_times_are_allowed() -> None:
    policy = RetryPolicy(max_time=0.0, backoff_base=0.0, backoff_max=0.0, max_retry_after=0.0)
    assert policy.backoff_ceiling(3) == 0.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1, got 0"),
        ({"max_time": -1.0}, "max_time must be a finite number >= 0, got -1.0"),
        ({"backoff_max": float("inf")}, "backoff_max must be a finite number >= 0, got inf"),
    ],
)
def test_invalid_policies_say_what_is_wrong(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        RetryPolicy(**settings)  # type: ignore[arg-type]


def test_attempts_are_one_based() -> None:
    with pytest.raises(ValueError, match=r"^attempt is 1-based, got 0$"):
        RetryPolicy().backoff_ceiling(0)
    with pytest.raises(ValueError, match=r"^attempt is 1-based, got 0$"):
        RetryPolicy().decide(0, 0.0, Failure.http(503))


def test_a_retry_after_that_ends_exactly_at_max_time_is_waited() -> None:
    policy = RetryPolicy(max_time=10.0, max_retry_after=60.0, backoff_max=1.0)
    decision = policy.decide(1, 4.0, Failure.http(503, retry_after=6.0), random.Random(0))
    assert decision.retry and decision.wait == 6.0


def test_decide_draws_its_jitter_from_the_rng_given_or_its_own() -> None:
    policy = RetryPolicy(backoff_base=8.0, backoff_max=8.0, max_time=1000.0)
    waits = [policy.decide(1, 0.0, Failure.http(503), random.Random(7)).wait for _ in range(2)]
    assert waits == [random.Random(7).uniform(0.0, 8.0)] * 2
    unseeded = policy.decide(1, 0.0, Failure.http(503))
    assert unseeded.retry and 0.0 <= unseeded.wait <= 8.0
