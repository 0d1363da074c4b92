"""Each rate-limit header scheme read into one RateHint (the binding quota)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from multidict import CIMultiDict

from asyncingest.core.ratelimit_headers import RateHint, parse_rate_headers

NOW = 1_700_000_000.0  # epoch seconds standing in for Clock.wall()


def hint(headers: Mapping[str, str]) -> RateHint:
    parsed = parse_rate_headers(headers, NOW)
    assert parsed is not None
    return parsed


def test_no_rate_headers_give_no_hint() -> None:
    assert parse_rate_headers({"Content-Type": "application/json"}, NOW) is None


def test_retry_after_in_seconds() -> None:
    h = hint({"Retry-After": "30"})
    assert h == RateHint(None, None, None, None, 30.0, "retry-after")


def test_retry_after_as_http_date() -> None:
    h = hint({"Retry-After": "Tue, 14 Nov 2023 22:13:40 GMT"})  # NOW + 20 s
    assert h.retry_after == pytest.approx(20.0)


def test_unreadable_retry_after_is_ignored() -> None:
    assert parse_rate_headers({"Retry-After": "soon"}, NOW) is None


def test_x_ratelimit_reset_as_delta_seconds() -> None:
    h = hint({"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "12"})
    assert (h.limit, h.remaining, h.reset_after, h.window) == (100, 7, 12.0, None)
    assert h.source == "x-ratelimit"


def test_x_ratelimit_reset_as_epoch_seconds() -> None:
    h = hint({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 45)})
    assert h.reset_after == 45.0
    assert h.exhausted


def test_x_ratelimit_reset_as_epoch_milliseconds() -> None:
    h = hint({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": str(int(NOW * 1000) + 2500)})
    assert h.reset_after == pytest.approx(2.5)


def test_x_ratelimit_reset_in_the_past_is_zero() -> None:
    assert hint({"X-RateLimit-Reset": str(int(NOW) - 10)}).reset_after == 0.0


def test_x_rate_limit_spelling_and_reset_after() -> None:
    h = hint({"X-Rate-Limit-Limit": "15", "X-Rate-Limit-Remaining": "1"})
    assert (h.limit, h.remaining, h.source) == (15, 1, "x-rate-limit")
    assert hint({"X-RateLimit-Reset-After": "1.25"}).reset_after == 1.25


def test_ietf_separate_fields_with_policy() -> None:
    h = hint(
        {
            "RateLimit-Limit": "100",
            "RateLimit-Remaining": "50",
            "RateLimit-Reset": "30",
            "RateLimit-Policy": "100;w=60",
        }
    )
    assert (h.limit, h.remaining, h.reset_after, h.window) == (100, 50, 30.0, 60.0)
    assert h.source == "ratelimit"


def test_ietf_limit_field_listing_policies() -> None:
    h = hint({"RateLimit-Limit": "10, 10;w=1, 1000;w=3600", "RateLimit-Remaining": "4"})
    assert (h.limit, h.remaining, h.window) == (10, 4, 1.0)


def test_ietf_combined_dictionary_form() -> None:
    h = hint({"RateLimit": "limit=100, remaining=50, reset=30"})
    assert (h.limit, h.remaining, h.reset_after) == (100, 50, 30.0)


def test_ietf_named_policies_pick_the_one_nearest_exhaustion() -> None:
    h = hint(
        {
            "RateLimit-Policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
            "RateLimit": '"burst";r=80;t=20, "daily";r=3;t=5000',
        }
    )
    assert (h.limit, h.remaining, h.reset_after, h.window) == (1000, 3, 5000.0, 86400.0)


def test_ietf_policy_with_l_parameter_and_bare_tokens() -> None:
    h = hint({"RateLimit-Policy": "default;l=100;w=10", "RateLimit": "default;r=0;t=5"})
    assert (h.limit, h.remaining, h.reset_after, h.window) == (100, 0, 5.0, 10.0)


def test_policy_alone_describes_the_budget() -> None:
    h = hint({"RateLimit-Policy": '"a";q=100;w=60'})
    assert (h.limit, h.remaining, h.window, h.source) == (100, None, 60.0, "ratelimit-policy")


def test_hubspot_interval_quota_is_binding_when_lowest() -> None:
    h = hint(
        {
            "X-HubSpot-RateLimit-Daily": "625000",
            "X-HubSpot-RateLimit-Daily-Remaining": "624000",
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
            "X-HubSpot-RateLimit-Max": "190",
            "X-HubSpot-RateLimit-Remaining": "2",
        }
    )
    assert (h.limit, h.remaining, h.reset_after, h.window) == (190, 2, None, 10.0)
    assert h.source == "hubspot"


def test_hubspot_daily_quota_spent() -> None:
    h = hint(
        {
            "X-HubSpot-RateLimit-Daily": "625000",
            "X-HubSpot-RateLimit-Daily-Remaining": "0",
            "X-HubSpot-RateLimit-Max": "190",
            "X-HubSpot-RateLimit-Remaining": "150",
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        }
    )
    assert (h.limit, h.remaining, h.window) == (625000, 0, 86400.0)


def test_hubspot_secondly() -> None:
    h = hint({"X-HubSpot-RateLimit-Secondly": "10", "X-HubSpot-RateLimit-Secondly-Remaining": "1"})
    assert (h.limit, h.remaining, h.window) == (10, 1, 1.0)


def test_equal_remaining_prefers_the_longer_wait() -> None:
    h = hint(
        {
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "5",
            "RateLimit": "limit=10, remaining=0, reset=50",
        }
    )
    assert h.reset_after == 50.0


def test_retry_after_travels_with_quota_headers() -> None:
    h = hint({"Retry-After": "7", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "9"})
    assert (h.retry_after, h.reset_after) == (7.0, 9.0)
    assert h.source == "x-ratelimit+retry-after"


def test_multidict_repeated_policy_lines_combine() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("RateLimit-Policy", '"a";q=100;w=60')
    headers.add("RateLimit-Policy", '"b";q=5;w=1')
    headers.add("RateLimit", '"b";r=0;t=1')
    h = hint(headers)
    assert (h.limit, h.remaining, h.window) == (5, 0, 1.0)


@pytest.mark.parametrize("value", ["", "abc", "-3", "nan", "inf"])
def test_garbage_values_are_ignored(value: str) -> None:
    assert parse_rate_headers({"X-RateLimit-Remaining": value}, NOW) is None
