"""Sync mode (thread pool + requests) against the same mock API and configs as the async
engine: the same records, the server's windows never exceeded, Retry-After honoured,
credentials kept on their origin; and the thread-safe sliding-window limiter on its own.

Tests asserting the same behaviour of both engines are one test over the ``engine`` fixture
(Retry-After and the total deadline in test_engine.py, credentials in test_secrets.py); this
module keeps what only sync mode does and the runs comparing the two engines' output."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest

import asyncingest
from asyncingest.errors import ConfigError
from asyncingest.mockapi import FAULT_KINDS, MockAPI, MockSettings
from asyncingest.sync import LimiterClosed, SyncEngine, ThreadSlidingWindowLimiter, run_sync

from .conftest import (
    CRM_ENDPOINTS,
    F1_ENDPOINTS,
    F1_KEYS,
    MockAPIFactory,
    assert_same_records,
    by_key,
    expected_f1,
    most_in_any_window,
    pipeline,
    read_records,
)

CRM_KEYS = {
    "contacts": ["id"],
    "engagements": ["id"],
    "companies": ["id"],
    "engagement_contacts": ["engagement_id", "toObjectId"],
}
FAULTY = {"fault_rate": 0.2, "fault_kinds": FAULT_KINDS[:-1]}  # every fault but slow_body


def schema_of(output: Path, endpoint: str) -> set[tuple[str, str]]:
    """Column names and types, order aside (inferred columns follow arrival order)."""
    schema = ds.dataset(output / endpoint, format="parquet").schema
    return {(f.name, str(f.type)) for f in schema}


def assert_same_output(sync_out: Path, async_out: Path, keys: dict[str, list[str]]) -> None:
    for name, pk in keys.items():
        got, want = read_records(sync_out, name), read_records(async_out, name)
        assert want, f"the async run wrote nothing for {name}"
        assert_same_records(got, want, pk)
        assert by_key(got, pk).keys() == by_key(want, pk).keys()
        assert schema_of(sync_out, name) == schema_of(async_out, name), name


# -- same records as the async engine -----------------------------------------------------------


@pytest.mark.slow  # the whole F1 crawl under faults and a server limit
async def test_f1_crawl_under_faults_writes_what_the_async_engine_writes(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    # Two servers with the same settings: each engine meets the same faults, counted apart.
    first, second = await start_mock_api(**FAULTY), await start_mock_api(**FAULTY)
    result_a = await asyncingest.run(pipeline(first.url, F1_ENDPOINTS, tmp_path / "a"))
    cfg = pipeline(second.url, F1_ENDPOINTS, tmp_path / "s")
    result_s = await asyncio.to_thread(run_sync, cfg, max_workers=8)
    faults, expected = sum(second.stats.faults.values()), expected_f1(second)
    assert result_a.ok and result_s.ok, [e.first_errors for e in result_s.endpoints]
    assert faults > 10 and sum(e.retries for e in result_s.endpoints) >= faults
    assert_same_output(tmp_path / "s", tmp_path / "a", F1_KEYS)
    for name, records in expected.items():
        assert_same_records(read_records(tmp_path / "s", name), records, F1_KEYS[name])
    for a, s in zip(result_a.endpoints, result_s.endpoints, strict=True):
        assert (s.name, s.jobs, s.records_written) == (a.name, a.jobs, a.records_written)


async def test_crm_export_under_faults_writes_what_the_async_engine_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_TOKEN", "s3cret-crm-token")
    settings = MockSettings.small(token="s3cret-crm-token", **FAULTY)
    auth = {"type": "bearer", "env": "CRM_TOKEN"}
    async with MockAPI(settings) as api:
        result_a = await asyncingest.run(
            pipeline(api.url, CRM_ENDPOINTS, tmp_path / "a", auth=auth)
        )
    async with MockAPI(settings) as api:
        cfg = pipeline(api.url, CRM_ENDPOINTS, tmp_path / "s", auth=auth)
        result_s = await asyncio.to_thread(run_sync, cfg)
        unauthorized = api.stats.unauthorized
    assert result_a.ok and result_s.ok, [e.first_errors for e in result_s.endpoints]
    assert unauthorized == 0
    assert_same_output(tmp_path / "s", tmp_path / "a", CRM_KEYS)


async def test_a_single_worker_thread_finishes_a_fan_out_through_full_queues(
    tmp_path: Path,
) -> None:
    # Queues of 2 jobs, one thread: each meeting's page of 4 sessions overflows its children's
    # queues, whose jobs the thread then runs inline instead of waiting for a thread that does
    # not exist.
    async with MockAPI(MockSettings.small(sessions_per_meeting=4)) as api:
        engine = SyncEngine(pipeline(api.url, F1_ENDPOINTS, tmp_path), max_workers=1)
        result = await asyncio.to_thread(engine.run)
        expected = expected_f1(api)
    assert result.ok
    assert engine._scheduler is not None and engine._scheduler.run_inline("laps") > 0
    for name, records in expected.items():
        assert_same_records(read_records(tmp_path, name), records, F1_KEYS[name])


async def test_fan_out_over_an_input_file_keeps_the_queue_bounded(tmp_path: Path) -> None:
    ids = [str(1000 + i) for i in range(300)]
    path = tmp_path / "ids.csv"
    path.write_text("user_id\n" + "".join(f"{u}\n" for u in ids))
    endpoint = {
        "name": "users",
        "path": "/partner/users/{user_id}",
        "primary_key": "user_id",
        "single_record": True,
        "from_file": {"path": str(path), "column": "user_id"},
        "concurrency": 4,
    }
    async with MockAPI(MockSettings.small(latency_ms=1)) as api:
        engine = SyncEngine(pipeline(api.url, [endpoint], tmp_path / "out"), max_workers=4)
        result = await asyncio.to_thread(engine.run)
        expected = [api.dataset.user(u) for u in ids]
    assert result.ok and result.endpoint("users").jobs == len(ids)
    assert_same_records(read_records(tmp_path / "out", "users"), expected, ["user_id"])  # type: ignore[arg-type]
    assert engine._scheduler is not None
    assert engine._scheduler.peak_queued("users") <= engine._scheduler.capacity == 8


# -- the server's view ---------------------------------------------------------------------------


async def test_fifty_threads_never_exceed_the_servers_windows(tmp_path: Path) -> None:
    windows = ((10, 0.08), (30, 0.4))
    ids = tmp_path / "ids.csv"
    ids.write_text("user_id\n" + "".join(f"{2000 + i}\n" for i in range(90)))
    endpoint = {
        "name": "users",
        "path": "/partner/users/{user_id}",
        "primary_key": "user_id",
        "single_record": True,
        "from_file": {"path": str(ids), "column": "user_id"},
        "concurrency": 50,
    }
    settings = MockSettings.small(rate_limits=windows, latency_ms=5, latency_jitter_ms=20)
    async with MockAPI(settings) as api:
        cfg = pipeline(
            api.url,
            [endpoint],
            tmp_path / "out",
            rate_limits=[{"requests": n, "per_seconds": w} for n, w in windows],
        )
        result = await asyncio.to_thread(run_sync, cfg, max_workers=50)
        stats = api.stats
    assert result.ok and result.endpoint("users").requests == 90
    assert stats.violations == 0 and stats.sent_429 == 0
    assert stats.max_in_window == [10, 30]  # used to the limit, never past it


async def test_requests_that_give_up_are_dead_lettered_as_the_async_engine_does(
    tmp_path: Path,
) -> None:
    broken = {"name": "broken", "path": "/v1/no-such-thing"}
    async with MockAPI(MockSettings.small()) as api:
        await asyncingest.run(pipeline(api.url, [broken], tmp_path / "a"))
        result = await asyncio.to_thread(run_sync, pipeline(api.url, [broken], tmp_path / "s"))
    assert result.exit_code == 1 and result.endpoint("broken").failed_requests == 1

    def entry(out: Path) -> dict[str, Any]:
        line = (out / "_dead_letter" / "broken" / "dead-letters.jsonl").read_bytes()
        return {k: v for k, v in orjson.loads(line).items() if k not in ("time", "url")}

    assert entry(tmp_path / "s") == entry(tmp_path / "a")


async def test_an_output_holding_an_earlier_run_is_refused_unless_fresh(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    cfg = pipeline(mock_api.url, F1_ENDPOINTS[:1], tmp_path)
    await asyncio.to_thread(run_sync, cfg)
    with pytest.raises(ConfigError, match="does not resume"):
        await asyncio.to_thread(run_sync, cfg)
    result = await asyncio.to_thread(run_sync, cfg, fresh=True)
    n = len(mock_api.dataset.meetings)
    assert result.ok and len(read_records(tmp_path, "meetings")) == n


async def test_a_config_with_a_transform_is_refused_not_run_without_it(tmp_path: Path) -> None:
    async with MockAPI(MockSettings.small()) as api:
        laps = {**F1_ENDPOINTS[0], "transform": {"function": "json:dumps"}}
        cfg = pipeline(api.url, [laps], tmp_path)
        with pytest.raises(ConfigError, match="not run in sync mode"):
            await asyncio.to_thread(run_sync, cfg)
        assert api.stats.requests == 0


# -- the limiter on its own ---------------------------------------------------------------------


def test_the_limiter_holds_every_window_under_heavy_thread_concurrency() -> None:
    windows = [(8, 0.02), (20, 0.06)]
    limiter = ThreadSlidingWindowLimiter(windows, "test")
    grants: list[float] = []
    releases: list[float] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3):
            permit = limiter.acquire(f"k{seed % 3}")
            granted = time.monotonic()
            time.sleep(rng.uniform(0.0, 0.006))  # the request is in flight
            released = time.monotonic()
            permit.release()
            with lock:
                grants.append(granted)
                releases.append(released)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert len(grants) == 120 and limiter.in_flight == 0 and limiter.granted == 120
    # A request reaches the server somewhere between its grant and its release; whichever
    # instant that is, no window holds more than its limit (see limits/limiter.py for the proof).
    for n, w in windows:
        assert most_in_any_window(grants, w) <= n
        assert most_in_any_window(releases, w) <= n
    assert "waiting=0" in repr(limiter)


def test_a_waiter_is_granted_when_a_released_slot_expires() -> None:
    limiter = ThreadSlidingWindowLimiter([(1, 0.2)])
    limiter.acquire().release()
    released = time.monotonic()
    limiter.acquire().release()
    assert time.monotonic() - released >= 0.2  # the slot counted for W after its release


def test_closing_the_limiter_wakes_its_waiters() -> None:
    limiter = ThreadSlidingWindowLimiter([(1, 60.0)])
    permit = limiter.acquire()
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            limiter.acquire()
        except LimiterClosed as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    while "waiting=1" not in repr(limiter):
        time.sleep(0.001)
    limiter.close()
    waiter.join(timeout=5)
    assert len(outcome) == 1 and not waiter.is_alive()
    permit.release()
    with pytest.raises(LimiterClosed):
        limiter.acquire()


# -- what sync mode reports, and what it refuses --------------------------------------------------


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_progress_lines_count_each_event_once(tmp_path: Path) -> None:
    """The plain progress lines of a sync run show the real figures (they were doubled:
    the display fed the model a second time)."""
    from .conftest import cli, write_config

    async with MockAPI(MockSettings.small()) as api:
        cfg = write_config(tmp_path, api.url)
        code, _, err = await cli("run", str(cfg), "--mode", "sync", "--workers", "4")
        served = api.stats.requests
        expected = {name: len(rows) for name, rows in expected_f1(api).items()}
    assert code == 0, err
    done = {}
    for line in err.splitlines():
        if line.endswith(", done"):
            name, figures = line.split(": ", 1)
            records, requests = figures.split(", ")[:2]
            done[name] = (int(records.split()[0].replace(",", "")), int(requests.split()[0]))
    assert {name: records for name, (records, _) in done.items()} == expected
    assert sum(requests for _, requests in done.values()) == served


async def test_a_sync_run_writes_its_run_report(mock_api: MockAPI, tmp_path: Path) -> None:
    cfg = pipeline(mock_api.url, F1_ENDPOINTS, tmp_path)
    result = await asyncio.to_thread(run_sync, cfg)
    report = orjson.loads(
        (tmp_path / "_asyncingest" / "runs" / f"{result.run_id}.json").read_bytes()
    )
    assert report["state"] == "complete"
    assert report["result"]["run_id"] == result.run_id
    figures = {
        e["name"]: (e["requests"], e["records_written"]) for e in report["result"]["endpoints"]
    }
    assert figures == {e.name: (e.requests, e.records_written) for e in result.endpoints}


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ({"circuit_breaker": {"failures": 3}}, "api.circuit_breaker"),
        ({"adaptive_rate": True}, "api.adaptive_rate"),
        ({"on_budget_exhausted": "stop"}, "api.on_budget_exhausted"),
        ({"concurrency": {"adaptive": True}}, "api.concurrency.adaptive"),
    ],
)
async def test_async_only_settings_written_in_the_config_are_refused(
    tmp_path: Path, setting: dict[str, Any], field: str
) -> None:
    async with MockAPI(MockSettings.small()) as api:
        cfg = pipeline(api.url, F1_ENDPOINTS[:1], tmp_path, **setting)
        with pytest.raises(ConfigError) as info:
            await asyncio.to_thread(run_sync, cfg)
        assert api.stats.requests == 0
    assert [p.location for p in info.value.problems] == [field]


@pytest.mark.parametrize(
    "setting", [{}, {"circuit_breaker": None, "adaptive_rate": False}], ids=["defaults", "off"]
)
async def test_defaults_and_settings_turned_off_run_in_sync_mode(
    tmp_path: Path, setting: dict[str, Any]
) -> None:
    async with MockAPI(MockSettings.small()) as api:
        cfg = pipeline(api.url, F1_ENDPOINTS[:1], tmp_path, **setting)
        result = await asyncio.to_thread(run_sync, cfg)
    assert result.ok and result.records_written == len(api.dataset.meetings)
