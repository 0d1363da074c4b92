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


# -- edges mutation testing found unguarded (nox -s mutants -- ratelimit) ---------------------

EPOCH_RESET = str(int(NOW) + 40)  # a Unix time 40 s ahead of NOW


@pytest.mark.parametrize(
    "headers",
    [
        {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": EPOCH_RESET},
        {"X-Rate-Limit-Remaining": "1", "X-Rate-Limit-Reset": EPOCH_RESET},
        {"RateLimit-Remaining": "1", "RateLimit-Reset": EPOCH_RESET},
        {"RateLimit": f"limit=10, remaining=1, reset={EPOCH_RESET}"},
        {"RateLimit": f'"p";r=1;t={EPOCH_RESET}'},
    ],
)
def test_an_epoch_reset_is_read_against_the_wall_clock_in_every_scheme(
    headers: dict[str, str],
) -> None:
    assert hint(headers).reset_after == 40.0


def test_resets_exactly_at_the_epoch_thresholds_are_still_delays() -> None:
    """Above 1e9 is epoch seconds and above 1e12 epoch milliseconds: *at* the threshold the
    smaller reading holds."""
    assert hint({"X-RateLimit-Reset": "1000000000"}).reset_after == 1e9
    assert hint({"X-RateLimit-Reset": "1000000000000"}).reset_after == 1e12 - NOW


def test_a_short_reset_after_is_kept_as_is() -> None:
    assert hint({"X-RateLimit-Reset-After": "0.25"}).reset_after == 0.25


def test_a_combined_field_value_is_read_as_its_first_member() -> None:
    assert hint({"X-RateLimit-Remaining": "5, 5"}).remaining == 5


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"RateLimit-Remaining": "3"}, (None, 3)),
        ({"RateLimit-Limit": "100"}, (100, None)),
        ({"X-HubSpot-RateLimit-Daily-Remaining": "0"}, (None, 0)),
        ({"X-HubSpot-RateLimit-Daily": "9"}, (9, None)),
    ],
)
def test_one_field_of_a_scheme_is_enough(
    headers: dict[str, str], expected: tuple[int | None, int | None]
) -> None:
    h = hint(headers)
    assert (h.limit, h.remaining) == expected


@pytest.mark.parametrize(
    "limits",
    [
        {"RateLimit-Limit": "100", "RateLimit-Remaining": "5"},
        {"RateLimit": "limit=100, remaining=5"},
    ],
)
def test_the_window_is_the_policy_whose_quota_is_the_limit(limits: dict[str, str]) -> None:
    """Not the first policy with a window, and not none because there are several."""
    h = hint({**limits, "RateLimit-Policy": '"day";q=1000;w=86400, "min";q=100;w=60'})
    assert (h.limit, h.remaining, h.window) == (100, 5, 60.0)


def test_the_only_policy_gives_its_window_whatever_its_quota() -> None:
    h = hint(
        {"RateLimit-Limit": "100", "RateLimit-Remaining": "5", "RateLimit-Policy": "p;q=50;w=10"}
    )
    assert h.window == 10.0


@pytest.mark.parametrize(
    "headers",
    [
        {"RateLimit": "limit=100, remaining=5"},
        {"RateLimit": '"p";r=5;t=1', "RateLimit-Policy": '"p";q=100;w=60'},
    ],
)
def test_the_ietf_dictionary_and_named_forms_name_their_source(headers: dict[str, str]) -> None:
    assert hint(headers).source == "ratelimit"


def test_a_named_quota_without_its_policy_still_counts() -> None:
    h = hint({"RateLimit": '"p";r=5;t=10'})
    assert (h.limit, h.remaining, h.reset_after, h.window) == (None, 5, 10.0, None)


def test_the_policy_alone_gives_the_smallest_quota() -> None:
    """A policy without a quota counts as unlimited; the order of the field does not matter."""
    h = hint({"RateLimit-Policy": '"nowhere";w=5, "small";q=10;w=3600, "big";q=1000;w=1'})
    assert (h.limit, h.window) == (10, 3600.0)


def test_empty_and_dictionary_members_do_not_hide_later_policies() -> None:
    assert hint({"RateLimit-Policy": '"a";q=10;w=1, , "b";q=5;w=2'}).limit == 5
    assert hint({"RateLimit-Policy": 'w=60, "a";q=10;w=1'}).limit == 10


def test_quoted_names_and_values() -> None:
    """A quoted name may hold ``,``, ``;`` or ``=``; quoted values are unquoted (and a name is
    the same quoted or bare)."""
    h = hint({"RateLimit": '"x,y=1;z";r=5;t=2'})
    assert (h.remaining, h.reset_after) == (5, 2.0)
    h = hint({"RateLimit": '"p=1";r=5;t=2', "RateLimit-Policy": '"p=1";q=10;w=60'})
    assert (h.limit, h.remaining, h.window) == (10, 5, 60.0)
    h = hint({"RateLimit": '"p";r="5";t="30"', "RateLimit-Policy": 'p;q="100";w="60"'})
    assert (h.limit, h.remaining, h.reset_after, h.window) == (100, 5, 30.0, 60.0)


def test_a_quota_without_remaining_or_wait_ranks_below_a_known_one() -> None:
    """``remaining`` unknown is not binding; with remaining equal, a quota without a reset or
    window waits 0 s, so one that names a wait is binding."""
    h = hint({"X-RateLimit-Limit": "100", "RateLimit-Remaining": "3"})
    assert h.remaining == 3
    h = hint({"X-RateLimit-Remaining": "5", "RateLimit-Remaining": "5", "RateLimit-Reset": "0.5"})
    assert h.reset_after == 0.5
