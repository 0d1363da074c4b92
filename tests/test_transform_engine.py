"""The CPU stage inside a real run: output correct, failures set aside, crashes survived,
and a killed run still resumes to exactly one copy of everything."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import orjson
import pytest

import asyncingest
from asyncingest import config_from_dict
from asyncingest.examples.telemetry import lap_stats
from asyncingest.mockapi import MockAPI, MockSettings

from .conftest import F1_ENDPOINTS, F1_KEYS, assert_same_records, read_records

LAPS = F1_ENDPOINTS[3]


def alive_children() -> list[Any]:
    """Child processes still running (reaping the ones that have exited)."""
    return [p for p in multiprocessing.active_children() if p.is_alive()]


def config(url: str, out: Path, transform: dict[str, Any]) -> Any:
    return config_from_dict(
        {
            "api": {
                "base_url": url,
                "concurrency": {"cpu_workers": 2},
                "retry": {"backoff_base": 0.01, "backoff_max": 0.05},
            },
            "output": {"directory": str(out)},
            "endpoints": [*F1_ENDPOINTS[:2], {**LAPS, "transform": transform}],
        }
    )


async def test_telemetry_stats_are_computed_in_the_pool_and_raw_laps_kept(tmp_path: Path) -> None:
    transform = {
        "function": "asyncingest.examples.telemetry:lap_stats",
        "initializer": "asyncingest.examples.telemetry:init",
        "batch_size": 40,
        "output": "lap_stats",
    }
    async with MockAPI(MockSettings.small()) as api:
        result = await asyncingest.run(config(api.url, tmp_path, transform))
        laps = api.dataset.laps
    assert result.ok, [e.first_errors for e in result.endpoints]
    assert_same_records(read_records(tmp_path, "laps"), laps, F1_KEYS["laps"])
    stats = read_records(tmp_path, "lap_stats")
    assert sum(row["laps"] for row in stats) == len(laps)  # every lap in exactly one window
    assert result.endpoint("laps").records_transformed == len(stats)
    # Each window row equals the same computation done inline on that window's laps.
    by_key = {(r["session_key"], r["driver_number"], r["lap_number"]): r for r in laps}
    for row in stats[:5]:
        window = [
            by_key[(row["session_key"], row["driver_number"], n)]
            for n in range(row["lap_first"], row["lap_last"] + 1)
            if (row["session_key"], row["driver_number"], n) in by_key
        ]
        (inline,) = lap_stats(window)
        assert inline == {k: row[k] for k in inline}
    assert not alive_children()


async def test_a_raising_transform_sets_its_batch_aside_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    transform = {
        "function": "tests.transform_helpers:raise_on_lap_7",
        "batch_size": 6,
        "keep_raw": False,
    }
    async with MockAPI(MockSettings.small()) as api:
        result = await asyncingest.run(config(api.url, tmp_path, transform))
        n_laps = len(api.dataset.laps)
    laps = result.endpoint("laps")
    assert result.exit_code == 1 and laps.records_rejected > 0
    out = read_records(tmp_path, "laps_out")
    assert not (tmp_path / "laps").exists() or not read_records(tmp_path, "laps")
    assert len(out) + laps.records_rejected == n_laps  # nothing lost: written or set aside
    assert all(r["lap_number"] != 7 for r in out)
    dead = (tmp_path / "_dead_letter" / "laps" / "dead-letters.jsonl").read_bytes()
    entries = [orjson.loads(x) for x in dead.splitlines()]
    assert len(entries) == laps.records_rejected
    assert all("ValueError: lap 7 is unlucky" in e["reason"] for e in entries)


async def test_a_dying_worker_is_replaced_and_only_its_batch_is_set_aside(
    tmp_path: Path,
) -> None:
    transform = {
        "function": "tests.transform_helpers:die_on_lap_7",
        "batch_size": 6,
        "max_crash_retries": 1,
    }
    async with MockAPI(MockSettings.small()) as api:
        result = await asyncingest.run(config(api.url, tmp_path, transform))
        laps_data = api.dataset.laps
    laps = result.endpoint("laps")
    assert result.exit_code == 1
    assert_same_records(read_records(tmp_path, "laps"), laps_data, F1_KEYS["laps"])
    out = read_records(tmp_path, "laps_out")
    assert len(out) + laps.records_rejected == len(laps_data)
    dead = (tmp_path / "_dead_letter" / "laps" / "dead-letters.jsonl").read_text()
    assert "worker process died" in dead
    assert not alive_children()


async def test_a_batch_set_aside_is_one_rejection_event_for_all_its_records(
    tmp_path: Path,
) -> None:
    transform = {"function": "tests.transform_helpers:raise_on_lap_7", "batch_size": 6}
    seen: list[Any] = []
    async with MockAPI(MockSettings.small()) as api:
        result = await asyncingest.run(
            config(api.url, tmp_path, transform), subscribers=[seen.append]
        )
    laps = result.endpoint("laps")
    events = [e for e in seen if isinstance(e, asyncingest.RecordsRejected)]
    assert events and all(e.endpoint == "laps" and "lap 7 is unlucky" in e.reason for e in events)
    assert sum(e.count for e in events) == laps.records_rejected
    assert len(events) < laps.records_rejected  # one event per batch, not one per record


def test_an_unimportable_transform_is_a_config_error() -> None:
    with pytest.raises(asyncingest.ConfigError) as info:
        config("http://x", Path("."), {"function": "no_such_module:f"})
    assert "endpoints[laps].transform.function" in str(info.value)
