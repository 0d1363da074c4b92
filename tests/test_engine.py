"""End to end against the bundled mock API on loopback: every record exactly once, the
server's window never exceeded, faults retried to completion, failures accounted for.

Tests taking the ``engine`` fixture run once on the async engine and once in sync mode."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import asyncingest
from asyncingest import Event, RequestRetried, RunFinished
from asyncingest.mockapi import FAULT_KINDS, MockAPI, MockSettings

from .conftest import (
    CRM_ENDPOINTS,
    F1_ENDPOINTS,
    F1_KEYS,
    FAST_RETRY,
    Runner,
    assert_same_records,
    expected_f1,
    pipeline,
    read_records,
)


@pytest.mark.slow  # the whole F1 crawl under faults and a server limit
async def test_f1_crawl_writes_every_record_exactly_once_under_faults(tmp_path: Path) -> None:
    settings = MockSettings.small(
        fault_rate=0.35,
        fault_kinds=FAULT_KINDS[:-1],  # every fault but slow_body
        rate_limits=((15, 0.5),),
    )
    async with MockAPI(settings) as api:
        cfg = pipeline(
            api.url, F1_ENDPOINTS, tmp_path, rate_limits=[{"requests": 15, "per_seconds": 0.5}]
        )
        result = await asyncingest.run(cfg)
        stats = api.stats
    assert result.ok, [e.first_errors for e in result.endpoints]
    assert result.exit_code == 0
    for name, records in expected_f1(api).items():
        assert_same_records(read_records(tmp_path, name), records, F1_KEYS[name])
    assert sum(stats.faults.values()) > 10  # faults really happened, and were retried
    assert sum(e.retries for e in result.endpoints) >= sum(stats.faults.values())
    assert stats.violations == 0
    assert stats.max_in_window == [15]  # the budget was used to the limit, never past it


async def test_copied_parent_fields_land_in_child_records(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    result = await asyncingest.run(pipeline(mock_api.url, F1_ENDPOINTS[:3], tmp_path))
    sessions = {s["session_key"]: s["meeting_key"] for s in mock_api.dataset.sessions}
    assert result.ok
    drivers = read_records(tmp_path, "drivers")
    assert drivers and all(d["meeting_key"] == sessions[d["session_key"]] for d in drivers)


async def test_crm_export_with_bearer_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_TOKEN", "s3cret-crm-token")
    settings = MockSettings.small(token="s3cret-crm-token", fault_rate=0.2)
    async with MockAPI(settings) as api:
        cfg = pipeline(
            api.url, CRM_ENDPOINTS, tmp_path, auth={"type": "bearer", "env": "CRM_TOKEN"}
        )
        result = await asyncingest.run(cfg)
        d, unauthorized = api.dataset, api.stats.unauthorized
    assert result.ok, [e.first_errors for e in result.endpoints]
    assert unauthorized == 0
    assert_same_records(read_records(tmp_path, "contacts"), d.contacts, ["id"])
    assert_same_records(read_records(tmp_path, "engagements"), d.engagements, ["id"])
    assert_same_records(read_records(tmp_path, "companies"), d.companies, ["id"])
    expected = [
        {"engagement_id": e["id"], **a}
        for e in d.engagements
        for a in d.association_records(e["id"])
    ]
    got = read_records(tmp_path, "engagement_contacts")
    assert_same_records(got, expected, ["engagement_id", "toObjectId"])


@pytest.mark.parametrize("mock_api", [{"fault_rate": 0.2}], indirect=True)
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_fan_out_over_an_input_file(mock_api: MockAPI, tmp_path: Path, fmt: str) -> None:
    ids = [str(1000 + 3 * i) for i in range(60)]
    path = tmp_path / f"ids.{fmt}"
    if fmt == "csv":
        path.write_text("name,user_id\n" + "".join(f"n{i},{u}\n" for i, u in enumerate(ids)))
    elif fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps({"user_id": u}) + b"\n" for u in ids))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"user_id": ids}), path)
    endpoint = {
        "name": "users",
        "path": "/partner/users/{user_id}",
        "primary_key": "user_id",
        "single_record": True,
        "from_file": {"path": str(path), "column": "user_id"},
        "concurrency": 8,
    }
    result = await asyncingest.run(pipeline(mock_api.url, [endpoint], tmp_path / "out"))
    expected = [mock_api.dataset.user(u) for u in ids]
    assert result.ok
    assert result.endpoint("users").requests >= len(ids)
    assert_same_records(read_records(tmp_path / "out", "users"), expected, ["user_id"])  # type: ignore[arg-type]


async def test_post_with_a_json_body(mock_api: MockAPI, tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("user_id\n11\n12\n13\n")
    endpoint = {
        "name": "scores",
        "path": "/partner/score",
        "method": "POST",
        "body": {"user_id": "{user_id}"},
        "primary_key": "user_id",
        "single_record": True,
        "from_file": {"path": str(ids), "column": "user_id"},
    }
    result = await asyncingest.run(pipeline(mock_api.url, [endpoint], tmp_path / "out"))
    expected = [mock_api.dataset.user(u) for u in ("11", "12", "13")]
    assert result.ok
    assert_same_records(read_records(tmp_path / "out", "scores"), expected, ["user_id"])  # type: ignore[arg-type]


async def test_retry_after_is_honoured(engine: Runner, tmp_path: Path) -> None:
    settings = MockSettings.small(forced_faults={"/v1/meetings": ("status_429",)}, latency_ms=80)
    told = settings.fault_retry_after  # the mock's Retry-After (0.2 s: more than any backoff)
    assert told > FAST_RETRY["backoff_max"]
    events: list[Event] = []
    async with MockAPI(settings) as api:
        cfg = pipeline(api.url, F1_ENDPOINTS[:1], tmp_path)
        result = await engine(cfg, subscribers=[events.append])
        arrivals = [e.time for e in api.stats.log if e.path.startswith("/v1/meetings")]
    assert result.ok and result.endpoint("meetings").retries == 1
    retried = [e for e in events if isinstance(e, RequestRetried)]
    assert len(retried) == 1 and retried[0].wait >= told and retried[0].status == 429
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= told
    assert isinstance(events[-1], RunFinished) and events[-1].result is result


async def test_a_trickling_body_hits_the_total_deadline_and_is_retried(
    engine: Runner, tmp_path: Path
) -> None:
    settings = MockSettings.small(
        forced_faults={"/v1/meetings": ("slow_body",)}, slow_body_seconds=5.0
    )
    events: list[Event] = []
    async with MockAPI(settings) as api:
        cfg = pipeline(
            api.url, F1_ENDPOINTS[:1], tmp_path, http={"total_timeout": 0.15, "read_timeout": 10}
        )
        result = await engine(cfg, subscribers=[events.append])
        expected = api.dataset.meetings
    assert result.ok
    retries = [e for e in events if isinstance(e, RequestRetried)]
    assert len(retries) == 1 and "0.15s" in retries[0].reason
    assert_same_records(read_records(tmp_path, "meetings"), expected, ["meeting_key"])


async def test_a_failing_endpoint_is_dead_lettered_and_does_not_stop_the_others(
    tmp_path: Path,
) -> None:
    broken = {"name": "broken", "path": "/v1/no-such-thing"}
    async with MockAPI(MockSettings.small()) as api:
        result = await asyncingest.run(pipeline(api.url, [broken, *F1_ENDPOINTS[:2]], tmp_path))
        expected = api.dataset.sessions
    assert not result.ok and result.exit_code == 1
    b = result.endpoint("broken")
    assert b.failed_requests == 1 and b.requests == 1  # a 404 is not retried
    assert_same_records(read_records(tmp_path, "sessions"), expected, ["session_key"])
    lines = (tmp_path / "_dead_letter" / "broken" / "dead-letters.jsonl").read_bytes().splitlines()
    entry = orjson.loads(lines[0])
    assert entry["kind"] == "request" and entry["status"] == 404 and entry["attempts"] == 1
    assert "404" in entry["reason"] and entry["url"].endswith("/v1/no-such-thing")


async def test_records_that_do_not_fit_the_schema_are_dead_lettered(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    endpoint = {**F1_ENDPOINTS[0], "schema": {"meeting_key": "int64", "meeting_name": "int64"}}
    result = await asyncingest.run(pipeline(mock_api.url, [endpoint], tmp_path))
    n = len(mock_api.dataset.meetings)
    m = result.endpoint("meetings")
    assert m.records_rejected == n and m.records_written == 0 and result.exit_code == 1
    text = (tmp_path / "_dead_letter" / "meetings" / "dead-letters.jsonl").read_text()
    assert "meeting_name" in text and "int64" in text


async def test_retries_give_up_after_max_attempts(tmp_path: Path) -> None:
    settings = MockSettings.small(
        forced_faults={"/v1/meetings": ("status_503",) * 5}, max_faults_per_url=5
    )
    async with MockAPI(settings) as api:
        cfg = pipeline(api.url, F1_ENDPOINTS[:1], tmp_path, retry={**FAST_RETRY, "max_attempts": 3})
        result = await asyncingest.run(cfg)
    m = result.endpoint("meetings")
    assert m.requests == 3 and m.failed_requests == 1
    assert "503" in m.first_errors[0]


async def test_events_reach_subscribers_and_the_run_is_embeddable(tmp_path: Path) -> None:
    seen: list[Event] = []
    async with MockAPI(MockSettings.small()) as api:
        engine = asyncingest.Engine(
            pipeline(api.url, F1_ENDPOINTS[:2], tmp_path), subscribers=[seen.append]
        )
        result = await engine.run()
    assert isinstance(seen[-1], RunFinished) and seen[-1].result is result
    assert "sessions" in repr(engine)


async def test_a_429_pauses_the_whole_budget_not_just_one_request(tmp_path: Path) -> None:
    companies = {
        "name": "companies",
        "path": "/crm/v3/objects/companies",
        "params": {"limit": 1},
        "pagination": {"type": "link_header"},
    }
    settings = MockSettings.small(
        forced_faults={"/v1/meetings": ("status_429",)},
        latency_ms=80,
        fault_retry_after=0.4,
        n_companies=6,  # six pages of companies: before, during and after the pause
    )
    async with MockAPI(settings) as api:
        result = await asyncingest.run(pipeline(api.url, [F1_ENDPOINTS[0], companies], tmp_path))
        log = list(api.stats.log)
    assert result.ok
    (throttled,) = [e.time for e in log if e.status == 429]
    # Requests already granted may still arrive; then nothing until Retry-After (0.4 s) is over.
    quiet = [e for e in log if throttled + 0.05 < e.time < throttled + 0.35]
    assert quiet == []
    assert any(e.time >= throttled + 0.4 for e in log if e.path.startswith("/crm"))


async def test_the_shared_budget_is_not_paused_when_adaptive_rate_is_off(tmp_path: Path) -> None:
    companies = {
        "name": "companies",
        "path": "/crm/v3/objects/companies",
        "params": {"limit": 1},
        "pagination": {"type": "link_header"},
    }
    settings = MockSettings.small(
        forced_faults={"/v1/meetings": ("status_429",)},
        latency_ms=80,
        fault_retry_after=0.4,
        n_companies=6,  # six pages of companies: before, during and after the pause
    )
    async with MockAPI(settings) as api:
        cfg = pipeline(api.url, [F1_ENDPOINTS[0], companies], tmp_path, adaptive_rate=False)
        result = await asyncingest.run(cfg)
        log = list(api.stats.log)
    assert result.ok
    (throttled,) = [e.time for e in log if e.status == 429]
    assert [e for e in log if throttled + 0.05 < e.time < throttled + 0.35]


async def test_a_failing_endpoint_trips_its_breaker_and_the_report_says_so(tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("user_id\n" + "\n".join(str(100 + i) for i in range(12)) + "\n")
    endpoint = {
        "name": "users",
        "path": "/partner/users/{user_id}",
        "single_record": True,
        "from_file": {"path": str(ids), "column": "user_id"},
        "concurrency": 2,
    }
    settings = MockSettings.small(
        forced_faults={"/partner/users": ("status_503",) * 9}, max_faults_per_url=9
    )
    events: list[Event] = []
    async with MockAPI(settings) as api:
        cfg = pipeline(
            api.url,
            [endpoint],
            tmp_path,
            retry={**FAST_RETRY, "max_attempts": 2},
            circuit_breaker={"failures": 3, "cooldown": 0.01, "max_cooldown": 0.02},
        )
        result = await asyncingest.run(cfg, subscribers=[events.append])
    users = result.endpoint("users")
    assert users.failed_requests == 12 and users.breaker_opens >= 1
    states = [e.state for e in events if isinstance(e, asyncingest.BreakerChanged)]
    assert "open" in states and "half-open" in states
