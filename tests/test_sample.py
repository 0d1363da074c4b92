"""``plan``'s sampling goes the engine's way: its retry policy, its paginators' totals, its
credentials; what fails is reported, not guessed."""

from __future__ import annotations

from typing import Any

import pytest

from asyncingest.config.models import PipelineConfig
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.operate.sample import plan, sample, spread

from .conftest import F1_ENDPOINTS


def f1(url: str, **api: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"api": {"base_url": url, **api}, "endpoints": F1_ENDPOINTS}
    )


async def test_sampling_retries_as_the_engine_does() -> None:
    settings = MockSettings.small(forced_faults={"/v1/meetings": ("status_503", "status_500")})
    async with MockAPI(settings) as api:
        est = await plan(f1(api.url, retry={"backoff_base": 0.01}))
        assert api.stats.by_path["/v1/meetings"] == 3  # two faults, then the page
        meetings = next(r for r in est.endpoints if r.name == "meetings")
        assert meetings.failed_walks == 0 and meetings.measured == "measured (whole walk)"
        assert not est.unknown and not est.lower_bound


async def test_a_walk_with_a_reported_total_stops_after_its_first_page() -> None:
    async with MockAPI(MockSettings.small()) as api:
        sampled = await sample(f1(api.url), walks=5)
        # 4 sessions, each 36 laps in pages of 10 and "total": one request per walk tells all.
        assert api.stats.by_path["/v1/laps"] == 4
        laps = sampled.endpoints["laps"]
        assert [(w.pages, w.total_records, w.complete) for w in laps.walks] == [(1, 36, False)] * 4
        est = await plan(f1(api.url))
        row = next(r for r in est.endpoints if r.name == "laps")
        assert row.pages_per_job.value == 4 and row.measured == "API totals (every walk)"


async def test_a_failed_sample_is_reported_not_guessed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAN_TEST_TOKEN", "wrong")
    async with MockAPI(MockSettings.small(token="right")) as api:
        cfg = f1(api.url, auth={"type": "bearer", "env": "PLAN_TEST_TOKEN"})
        est = await plan(cfg)
    meetings = est.endpoints[0]
    assert meetings.failed_walks == 1 and "HTTP 401" in meetings.error
    assert "sessions" in est.unknown and est.lower_bound and est.requests_high is None


def test_children_are_sampled_across_their_parents() -> None:
    assert spread(list(range(11)), 3) == [0, 5, 10]
    assert spread(list(range(3)), 5) == [0, 1, 2]
    assert spread(list(range(10)), 1) == [0]
