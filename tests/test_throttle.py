"""AdaptiveThrottle decisions (pure), and a 429 pausing the shared budget in fake time."""

from __future__ import annotations

import asyncio

import pytest

from asyncingest.core.ratelimit_headers import RateHint, parse_rate_headers
from asyncingest.limits.limiter import SlidingWindowLimiter
from asyncingest.limits.throttle import AdaptiveThrottle, Pause
from asyncingest.testing import FakeClock

NOW = 100.0


def quota(
    remaining: int | None,
    reset_after: float | None = None,
    *,
    limit: int | None = 100,
    window: float | None = None,
    retry_after: float | None = None,
) -> RateHint:
    return RateHint(limit, remaining, reset_after, window, retry_after, "x-ratelimit")


THROTTLE = AdaptiveThrottle(reserve=1, default_retry_after=2.0, max_pause=120.0)


def test_plenty_remaining_does_nothing() -> None:
    assert THROTTLE.decide(quota(50, 10.0), status=200, now=NOW) is None


def test_no_hint_and_success_does_nothing() -> None:
    assert THROTTLE.decide(None, status=200, now=NOW) is None


def test_429_pauses_for_retry_after() -> None:
    pause = THROTTLE.decide(quota(None, retry_after=30.0), status=429, now=NOW)
    assert pause == Pause(130.0, 30.0, "HTTP 429, Retry-After 30s", True)


def test_429_without_retry_after_uses_the_quota_reset() -> None:
    pause = THROTTLE.decide(quota(0, 12.0), status=429, now=NOW)
    assert pause is not None and (pause.until, pause.throttled) == (112.0, True)


def test_429_without_any_hint_uses_the_default() -> None:
    pause = THROTTLE.decide(None, status=429, now=NOW)
    assert pause is not None and pause.seconds == 2.0
    assert "without Retry-After" in pause.reason


def test_503_pauses_only_with_retry_after() -> None:
    assert THROTTLE.decide(None, status=503, now=NOW) is None
    pause = THROTTLE.decide(quota(None, retry_after=5.0), status=503, now=NOW)
    assert pause is not None and pause.seconds == 5.0


def test_remaining_at_reserve_pauses_until_reset_before_any_429() -> None:
    pause = THROTTLE.decide(quota(1, 8.0), status=200, now=NOW)
    assert pause is not None
    assert (pause.until, pause.throttled) == (108.0, False)
    assert "1 remaining of 100" in pause.reason


def test_requests_in_flight_count_against_remaining() -> None:
    assert THROTTLE.decide(quota(5, 8.0), status=200, now=NOW, in_flight=3) is None
    pause = THROTTLE.decide(quota(5, 8.0), status=200, now=NOW, in_flight=4)
    assert pause is not None and "4 in flight" in pause.reason


def test_spent_quota_without_reset_waits_its_window() -> None:
    pause = THROTTLE.decide(quota(0, window=10.0), status=200, now=NOW)
    assert pause is not None and pause.seconds == 10.0


def test_low_quota_without_reset_or_window_waits_for_the_server() -> None:
    assert THROTTLE.decide(quota(1), status=200, now=NOW) is None
    pause = THROTTLE.decide(quota(0), status=200, now=NOW)
    assert pause is not None and pause.seconds == 2.0


def test_pause_is_capped() -> None:
    pause = THROTTLE.decide(quota(0, window=86_400.0), status=200, now=NOW)
    assert pause is not None and pause.seconds == 120.0


def test_only_a_longer_pause_is_returned() -> None:
    spent = quota(0, 10.0)
    assert THROTTLE.decide(spent, status=200, now=NOW, paused_until=110.0) is None
    assert THROTTLE.decide(spent, status=200, now=NOW, paused_until=109.0) is not None


def test_zero_reset_means_no_pause() -> None:
    assert THROTTLE.decide(quota(0, 0.0), status=200, now=NOW) is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="reserve"):
        AdaptiveThrottle(reserve=-1)
    with pytest.raises(ValueError, match="max_pause"):
        AdaptiveThrottle(max_pause=float("inf"))


async def test_a_429_pauses_the_whole_shared_budget() -> None:
    """Endpoint a gets a 429 with Retry-After 30: endpoint b's next request waits too."""
    clock = FakeClock(start=0.0)
    limiter = SlidingWindowLimiter([(100, 10.0)], clock, name="api")
    granted: dict[str, float] = {}

    async def request(key: str) -> None:
        permit = await limiter.acquire(key)
        granted[key] = clock.time()
        permit.release()

    await request("a")
    hint = parse_rate_headers({"Retry-After": "30"}, clock.wall())
    pause = THROTTLE.decide(hint, status=429, now=clock.time(), paused_until=limiter.paused_until)
    assert pause is not None
    limiter.pause_until(pause.until)
    async with clock.auto_advance():
        await asyncio.gather(request("b"), request("c"))
    assert granted == {"a": 0.0, "b": 30.0, "c": 30.0}
