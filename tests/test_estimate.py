"""The plan's estimate for known configs: requests, time, bottleneck; input row counts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from asyncingest.config.models import FromFile, PipelineConfig
from asyncingest.operate.estimate import (
    EndpointSample,
    Span,
    WalkSample,
    budget_time,
    count_inputs,
    count_rows,
    estimate,
    human_duration,
)

HUBSPOT = [{"requests": 170, "per_seconds": 10}, {"requests": 625_000, "per_seconds": 86_400}]


def config(
    endpoints: list[dict[str, Any]], limits: list[dict[str, Any]] = HUBSPOT
) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "api": {"base_url": "https://api.example.com", "rate_limits": limits},
            "endpoints": endpoints,
        }
    )


def walks(*pages_and_records: tuple[int, int], complete: bool = True) -> EndpointSample:
    """Sampled walks, each ``(pages, records)``, followed to their end unless told."""
    return EndpointSample(tuple(WalkSample(p, r, complete) for p, r in pages_and_records))


PER_USER = config(
    [
        {
            "name": "users",
            "path": "/users/{user_id}",
            "from_file": {"path": "users.csv", "column": "user_id"},
        }
    ]
)


def test_200k_calls_take_about_3_3_hours_bottlenecked_by_the_10s_window() -> None:
    est = estimate(PER_USER, ids_in_files={"users": 200_000})
    assert est.requests == 200_000 and not est.lower_bound
    # 200,000 / 17 per second, less the first window that is free: (1177 - 1) * 10 s.
    assert est.seconds == 11_760.0
    assert human_duration(est.seconds) == "3.3 h"
    assert est.bottleneck == "170/10s"
    assert dict(est.window_seconds) == {(170, 10.0): 11_760.0, (625_000, 86_400.0): 0.0}


def test_2m_calls_are_bottlenecked_by_the_daily_window() -> None:
    est = estimate(PER_USER, ids_in_files={"users": 2_000_000})
    # Three full days of 625,000 (each sent in ~10.2 h at 17/s), then 125,000 more at 17/s.
    assert est.seconds == 3 * 86_400 + (736 - 1) * 10
    assert human_duration(est.seconds) == "3.09 days"
    assert est.bottleneck == "625,000/86400s"


F1 = config(
    [
        {"name": "meetings", "path": "/meetings"},
        {
            "name": "sessions",
            "path": "/sessions",
            "params": {"meeting_key": "{meeting_key}"},
            "for_each": {"endpoint": "meetings", "bind": ["meeting_key"]},
        },
        {
            "name": "laps",
            "path": "/laps",
            "params": {"session_key": "{session_key}"},
            "for_each": {"endpoint": "sessions", "bind": ["session_key"]},
            "pagination": {"type": "offset", "limit": 100, "total_path": "total"},
        },
    ]
)


def test_children_count_from_sampled_parent_fan_out() -> None:
    est = estimate(
        F1,
        samples={
            "meetings": walks((1, 24)),
            "sessions": walks((1, 5), (1, 5), (1, 5)),
            "laps": walks((13, 1_250), (13, 1_250)),
        },
        ids_in_files={},
    )
    rows = {r.name: r for r in est.endpoints}
    assert rows["meetings"].requests == Span.exact(1)
    assert rows["sessions"].jobs == Span.exact(24) and rows["sessions"].requests == Span.exact(24)
    # 24 meetings x 5 sessions (every sampled meeting had 5); 13 pages a walk of laps.
    assert rows["laps"].jobs == Span.exact(120) and rows["laps"].pages_per_job == Span.exact(13)
    assert est.requests == 1 + 24 + 120 * 13
    assert est.requests_low == est.requests_high == est.requests
    assert not est.lower_bound


def test_a_walk_stopped_on_the_api_total_counts_its_pages() -> None:
    """One page of 100 saying ``total: 250``: three pages and 250 records a walk."""
    stopped = EndpointSample((WalkSample(1, 100, False, total_records=250),) * 2)
    est = estimate(
        F1,
        samples={"meetings": walks((1, 2)), "sessions": walks((1, 4), (1, 4)), "laps": stopped},
        ids_in_files={},
    )
    laps = est.endpoints[2]
    assert laps.jobs == Span.exact(8) and laps.pages_per_job.value == 3
    assert laps.measured == "extrapolated: 2 of 8 walks, API totals"
    assert est.requests == 1 + 2 + 8 * 3


def test_a_sample_of_walks_gives_a_range_that_closes_when_every_walk_is_sampled() -> None:
    varied = walks((1, 3), (1, 5), (1, 7))  # sessions per meeting: 3, 5, 7
    some = estimate(
        F1,
        samples={"meetings": walks((1, 30)), "sessions": varied, "laps": walks((2, 150))},
        ids_in_files={},
    )
    laps = some.endpoints[2]
    # 30 meetings x 5 sessions on average; +/- two standard errors of 3 walks out of 30.
    se = 2 / 3**0.5 * ((30 - 3) / (30 - 1)) ** 0.5
    assert laps.jobs is not None and laps.jobs.value == 150
    assert laps.jobs.low == pytest.approx(30 * (5 - 2 * se))
    assert laps.jobs.high == pytest.approx(30 * (5 + 2 * se))
    assert some.requests_low < some.requests == 1 + 30 + 300 < (some.requests_high or 0)
    assert some.endpoints[1].measured == "extrapolated: 3 of 30 walks"

    every = estimate(
        F1,
        samples={"meetings": walks((1, 3)), "sessions": varied, "laps": walks((2, 150))},
        ids_in_files={},
    )
    assert every.endpoints[1].measured == "measured (every walk)"
    assert every.requests_low == every.requests == every.requests_high == 1 + 3 + 15 * 2


def test_a_walk_cut_at_the_cap_without_a_total_is_a_lower_bound() -> None:
    cut = estimate(
        F1,
        samples={"meetings": walks((100, 10_000), complete=False)},
        ids_in_files={},
    )
    assert cut.lower_bound and cut.requests_high is None
    assert cut.endpoints[0].measured.startswith("at least")


def test_unknown_fan_out_is_reported_not_guessed() -> None:
    cfg = config(
        [
            {"name": "meetings", "path": "/meetings"},
            {
                "name": "sessions",
                "path": "/sessions/{meeting_key}",
                "for_each": {"endpoint": "meetings", "bind": ["meeting_key"]},
            },
        ]
    )
    est = estimate(cfg, ids_in_files={})
    assert est.unknown == ("sessions",) and est.lower_bound
    assert est.requests == 1
    assert "sample meetings" in est.endpoints[1].basis


def test_paginated_without_a_sample_is_a_lower_bound() -> None:
    cfg = config(
        [
            {
                "name": "contacts",
                "path": "/contacts",
                "pagination": {"type": "cursor", "cursor_path": "paging.next.after"},
            }
        ]
    )
    est = estimate(cfg, ids_in_files={})
    assert est.requests == 1 and est.lower_bound
    measured = estimate(cfg, samples={"contacts": walks((40, 4_000))}, ids_in_files={})
    assert measured.requests == 40 and not measured.lower_bound
    assert measured.endpoints[0].measured == "measured (whole walk)"


def test_an_endpoint_s_own_window_can_be_the_bottleneck() -> None:
    cfg = config(
        [
            {
                "name": "users",
                "path": "/users/{id}",
                "from_file": {"path": "u.csv", "column": "id"},
                "rate_limits": [{"requests": 5, "per_seconds": 1}],
            }
        ]
    )
    est = estimate(cfg, ids_in_files={"users": 10_000})
    assert est.seconds == (2_000 - 1) * 1.0
    assert est.bottleneck == "users: 5/1s"


def test_latency_bounds_an_endpoint_without_rate_limits() -> None:
    cfg = config(
        [{"name": "users", "path": "/u/{id}", "from_file": {"path": "u.csv", "column": "id"}}],
        limits=[],
    )
    assert estimate(cfg, ids_in_files={"users": 1600}).seconds is None
    est = estimate(cfg, ids_in_files={"users": 1600}, mean_latency=0.2)
    assert est.seconds == pytest.approx(1600 * 0.2 / 16)
    assert est.bottleneck == "users: 16 in flight at 0.2s each"


def test_time_is_the_larger_of_the_window_bound_and_the_latency_bound() -> None:
    crm = config(
        [
            {"name": "engagements", "path": "/e"},
            {
                "name": "assoc",
                "path": "/e/{id}/a",
                "for_each": {"endpoint": "engagements", "bind": ["id"]},
                "concurrency": 17,
            },
        ]
    )
    samples = {"engagements": walks((1, 300)), "assoc": walks((1, 1), (1, 2))}
    # 301 requests under 170/10s: the second batch waits 10 s plus the 20 ms the first held.
    est = estimate(crm, samples=samples, ids_in_files={}, mean_latency=0.02)
    assert est.window_bound == pytest.approx(10.02)
    # The children start once the parent's page is in (20 ms), then go 17 at a time.
    assert est.latency_bound == pytest.approx(0.02 + 300 / 17 * 0.02)
    assert est.seconds == est.window_bound and est.bottleneck == "170/10s"
    # At 2 s a request, 17 in flight need 300 / 17 * 2 s: latency is the bottleneck.
    slow = estimate(crm, samples=samples, ids_in_files={}, mean_latency=2.0)
    assert slow.seconds == slow.latency_bound == pytest.approx(2.0 + 300 / 17 * 2.0)
    assert slow.bottleneck == "assoc: 17 in flight at 2s each"


def test_one_walk_s_pages_go_one_after_another() -> None:
    cfg = config(
        [
            {
                "name": "contacts",
                "path": "/c",
                "pagination": {"type": "cursor", "cursor_path": "next"},
            }
        ],
        limits=[],
    )
    est = estimate(cfg, samples={"contacts": walks((60, 6_000))}, ids_in_files={}, mean_latency=0.1)
    assert est.seconds == pytest.approx(6.0)  # 60 pages x 0.1 s, however many workers


@pytest.mark.parametrize(
    ("requests", "windows", "seconds"),
    [
        (0, [(10, 1.0)], 0.0),
        (10, [(10, 1.0)], 0.0),
        (11, [(10, 1.0)], 1.0),
        (100, [], 0.0),
        # The hourly window never binds: 10/s cannot send 50,000 within an hour.
        (100_000, [(10, 1.0), (50_000, 3600.0)], 9_999.0),
    ],
)
def test_budget_time(requests: int, windows: list[tuple[int, float]], seconds: float) -> None:
    assert budget_time(requests, windows)[0] == seconds


def test_rendered_for_the_cli() -> None:
    est = estimate(PER_USER, ids_in_files={"users": 200_000})
    out = io.StringIO()
    Console(file=out, width=120).print(est)
    text = out.getvalue()
    assert "requests: 200,000" in text
    assert "time: about 3.3 h; bottleneck: 170/10s" in text
    assert "625,000/86400s (7.2 req/s): 0% of the time" in text


def test_count_rows_of_each_format(tmp_path: Path) -> None:
    csv = tmp_path / "ids.csv"
    csv.write_bytes(b"user_id,name\n" + b"".join(b"%d,x\n" % i for i in range(2500)))
    jsonl = tmp_path / "ids.jsonl"
    jsonl.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3}')  # no final newline
    parquet = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": list(range(77))}), parquet)
    assert count_rows(FromFile(path=str(csv), column="user_id")) == 2500
    assert count_rows(FromFile(path=str(jsonl), column="id")) == 3
    assert count_rows(FromFile(path=str(parquet), column="id")) == 77
    assert count_rows(FromFile(path=str(tmp_path / "missing.csv"), column="id")) is None
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert count_rows(FromFile(path=str(empty), column="id")) == 0


def test_count_inputs_for_a_config(tmp_path: Path) -> None:
    csv = tmp_path / "users.csv"
    csv.write_text("user_id\n1\n2\n3\n")
    cfg = config(
        [
            {
                "name": "users",
                "path": "/u/{user_id}",
                "from_file": {"path": str(csv), "column": "user_id"},
            }
        ]
    )
    assert count_inputs(cfg) == {"users": 3}
