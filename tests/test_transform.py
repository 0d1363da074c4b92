"""The CPU stage, as a specification: batching, output, failures, crashes, backpressure, shutdown.

Pools are small (2 workers) and real: the transforms in ``tests.transform_helpers`` run in
worker processes. Nothing here asserts on wall time.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncingest.examples import telemetry
from asyncingest.mockapi.data import Dataset
from asyncingest.mockapi.settings import MockSettings
from asyncingest.transform.stage import (
    TransformError,
    TransformPool,
    TransformSpec,
    TransformStage,
    load_callable,
)

Record = dict[str, Any]
HELPERS = "tests.transform_helpers"
ROOT = Path(__file__).resolve().parents[1]


class Collector:
    """The stage's two callbacks, recording what they were given."""

    def __init__(self) -> None:
        self.output: list[Record] = []
        self.failed: list[tuple[list[Record], str]] = []

    async def on_output(self, records: list[Record]) -> None:
        self.output.extend(records)

    def on_failed(self, records: list[Record], reason: str) -> None:
        self.failed.append((records, reason))


@pytest.fixture
async def pool() -> AsyncIterator[TransformPool]:
    async with TransformPool(workers=2) as p:
        yield p


def stage_for(pool: TransformPool, function: str, sink: Collector, **spec: Any) -> TransformStage:
    return TransformStage(
        pool, TransformSpec(f"{HELPERS}:{function}", **spec), sink.on_output, sink.on_failed
    )


def records(n: int, **markers: dict[str, Any]) -> list[Record]:
    """``n`` records ``{"id": i}``; ``markers={"7": {"boom": "x"}}`` adds fields to record 7."""
    return [{"id": i, **markers.get(str(i), {})} for i in range(n)]


async def feed(stage: TransformStage, rows: list[Record], page: int = 7) -> None:
    async with stage:
        for i in range(0, len(rows), page):
            await stage.submit(rows[i : i + page])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# ------------------------------------------------------------------ references and spec


def test_load_callable_returns_the_function() -> None:
    assert load_callable("asyncingest.examples.telemetry:lap_stats") is telemetry.lap_stats


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("asyncingest.examples.telemetry.lap_stats", "not a 'package.module:function'"),
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz'"),
        ("asyncingest.examples.telemetry:nope", "has no attribute 'nope'"),
        ("asyncingest.examples.telemetry:ROLLING_LAPS", "is a int, not a function"),
    ],
)
def test_load_callable_explains_a_bad_reference(ref: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_callable(ref)


@pytest.mark.parametrize(
    "spec",
    [
        {"function": "nocolon"},
        {"function": "m:f", "initializer": "bad ref"},
        {"function": "m:f", "batch_size": 0},
        {"function": "m:f", "workers": 0},
        {"function": "m:f", "max_in_flight": 0},
        {"function": "m:f", "max_crash_retries": -1},
    ],
)
def test_spec_rejects_bad_values(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TransformSpec(**spec)


# ------------------------------------------------------------------ output and batching


async def test_batches_are_cut_at_batch_size_across_submits(pool: TransformPool) -> None:
    sink = Collector()
    stage = stage_for(pool, "sizes", sink, batch_size=10)
    await feed(stage, records(43), page=7)
    assert sorted(row["size"] for row in sink.output) == [3, 10, 10, 10, 10]
    batches = sorted(row["ids"] for row in sink.output)
    assert batches[:4] == [list(range(i, i + 10)) for i in range(0, 40, 10)]
    assert batches[4] == [40, 41, 42]  # the partial batch goes at flush
    assert (stage.batches_done, stage.records_in) == (5, 43)


async def test_identity_transform_returns_every_record_once(pool: TransformPool) -> None:
    sink = Collector()
    rows = [
        {"id": i, "name": f"n{i}", "x": i / 3, "tags": ["a"], "nested": {"k": i}}
        for i in range(250)
    ]
    await feed(stage_for(pool, "identity", sink, batch_size=64), rows, page=100)
    assert sorted(sink.output, key=lambda r: r["id"]) == rows
    assert sink.failed == []


async def test_telemetry_lap_stats_match_an_inline_computation() -> None:
    laps = Dataset.build(MockSettings(n_meetings=1)).laps  # 2 sessions x 10 drivers x 20 laps
    sink = Collector()
    spec = TransformSpec(
        "asyncingest.examples.telemetry:lap_stats",
        initializer="asyncingest.examples.telemetry:init",
        batch_size=150,  # not a multiple of 20: some drivers' laps span two batches
    )
    async with TransformPool(2, spec.initializer) as p:
        await feed(TransformStage(p, spec, sink.on_output, sink.on_failed), laps, page=100)
    assert sink.failed == []

    key = "session_key", "driver_number", "lap_first"
    expected = [
        row for i in range(0, len(laps), 150) for row in telemetry.lap_stats(laps[i : i + 150])
    ]
    got = sorted(sink.output, key=lambda r: tuple(r[k] for k in key))
    assert got == sorted(expected, key=lambda r: tuple(r[k] for k in key))
    assert sum(row["laps"] for row in got) == len(laps)

    for row in got:  # the core statistics, recomputed here from the laps they cover
        window = [
            lap
            for lap in laps
            if (lap["session_key"], lap["driver_number"])
            == (row["session_key"], row["driver_number"])
            and row["lap_first"] <= lap["lap_number"] <= row["lap_last"]
        ]
        timed = [
            lap["lap_duration"]
            for lap in window
            if lap["lap_duration"] and not lap["is_pit_out_lap"]
        ]
        clean = [t for t in timed if t <= 1.07 * statistics.median(timed)]
        assert row["laps"] == len(window)
        assert row["clean_laps"] == len(clean)
        assert row["best_lap"] == pytest.approx(min(clean))
        assert row["mean_lap"] == pytest.approx(statistics.mean(clean), abs=1e-4)
        assert row["median_lap"] == pytest.approx(statistics.median(clean), abs=1e-4)
        if len(clean) > 1:
            assert row["stdev_lap"] == pytest.approx(statistics.stdev(clean), abs=1e-4)
            assert row["mean_ci_low"] < row["mean_lap"] < row["mean_ci_high"]
        for s in (1, 2, 3):
            sector = [lap[f"duration_sector_{s}"] for lap in window if lap[f"duration_sector_{s}"]]
            assert row[f"best_sector_{s}"] == pytest.approx(min(sector))
        assert row["top_speed"] == max(lap["st_speed"] for lap in window if lap["st_speed"])


def test_t_table_matches_known_critical_values() -> None:
    telemetry.init()
    known = {1: 12.7062, 2: 4.3027, 5: 2.5706, 10: 2.2281, 30: 2.0423, 100: 1.9840}
    for df, t in known.items():
        assert telemetry.t_critical(df) == pytest.approx(t, abs=1e-4)
    assert telemetry.t_critical(10_000) == pytest.approx(1.9602, abs=1e-4)
    assert math.isclose(telemetry.t_critical(401), telemetry.t_critical(400), abs_tol=1e-4)


# ------------------------------------------------------------------ initializers


async def test_pool_initializer_runs_once_per_worker_process() -> None:
    sink = Collector()
    async with TransformPool(2, f"{HELPERS}:count_init") as p:
        await feed(stage_for(p, "pid", sink, batch_size=5), records(60))
    assert len(sink.output) == 12
    assert {row["init_calls"] for row in sink.output} == {1}


async def test_spec_initializer_runs_once_per_process_before_the_first_batch(
    pool: TransformPool,
) -> None:
    sink = Collector()
    stage = stage_for(pool, "pid", sink, batch_size=5, initializer=f"{HELPERS}:count_init")
    await feed(stage, records(60))
    assert {row["init_calls"] for row in sink.output} == {1}


async def test_failing_pool_initializer_stops_the_start() -> None:
    with pytest.raises(TransformError, match="failing_init failed: RuntimeError: no lookup table"):
        async with TransformPool(2, f"{HELPERS}:failing_init"):
            pass


async def test_failing_spec_initializer_sets_batches_aside(pool: TransformPool) -> None:
    sink = Collector()
    stage = stage_for(pool, "identity", sink, batch_size=5, initializer=f"{HELPERS}:failing_init")
    await feed(stage, records(10))
    assert len(sink.failed) == 2 and sink.output == []
    assert all("RuntimeError: no lookup table today" in why for _, why in sink.failed)


# ------------------------------------------------------------------ failures


async def test_raising_transform_sets_its_batch_aside_and_the_run_goes_on(
    pool: TransformPool,
) -> None:
    sink = Collector()
    stage = stage_for(pool, "raise_on_marker", sink, batch_size=10)
    await feed(stage, records(50, **{"23": {"boom": "negative lap"}}))
    [(bad, why)] = sink.failed
    assert [r["id"] for r in bad] == list(range(20, 30))
    assert why == "ValueError: bad record id=23: negative lap"
    assert sorted(r["id"] for r in sink.output) == [i for i in range(50) if not 20 <= i < 30]
    assert (stage.batches_done, stage.batches_failed) == (4, 1)


async def test_failure_reason_is_cut_to_a_readable_length(pool: TransformPool) -> None:
    sink = Collector()
    await feed(
        stage_for(pool, "raise_on_marker", sink), records(3, **{"1": {"boom": "x" * 10_000}})
    )
    [(_, why)] = sink.failed
    assert why.startswith("ValueError: bad record id=1: xxx") and len(why) <= 500


async def test_transform_must_return_a_list_of_dicts(pool: TransformPool) -> None:
    sink = Collector()
    await feed(stage_for(pool, "not_a_list", sink), records(3))
    [(_, why)] = sink.failed
    assert why == f"TypeError: {HELPERS}:not_a_list must return a list of dicts, not a dict"


async def test_dying_worker_rebuilds_the_pool_and_loses_nothing_else(pool: TransformPool) -> None:
    sink = Collector()
    stage = stage_for(pool, "exit_on_marker", sink, batch_size=10, max_in_flight=4)
    await feed(stage, records(100, **{"25": {"die": True}}))
    [(bad, why)] = sink.failed
    assert [r["id"] for r in bad] == list(range(20, 30))
    assert why.startswith("worker process died on each of 3 attempts")
    assert sorted(r["id"] for r in sink.output) == [i for i in range(100) if not 20 <= i < 30]
    assert (stage.batches_done, stage.batches_failed) == (9, 1)
    assert pool.rebuilds == 3  # the crash among 4 batches in flight, then 2 isolated retries

    after = Collector()  # and the rebuilt pool works, at full size
    await feed(stage_for(pool, "identity", after, batch_size=2), records(4))
    assert len(after.output) == 4 and len(pool.pids) == 2


async def test_without_crash_retries_a_dying_batch_is_set_aside_at_once(
    pool: TransformPool,
) -> None:
    sink = Collector()
    stage = stage_for(pool, "exit_on_marker", sink, max_crash_retries=0, max_in_flight=1)
    await feed(stage, records(3, **{"0": {"die": True}}))
    [(_, why)] = sink.failed
    assert why.startswith("worker process died while transforming this batch")
    assert pool.rebuilds == 1


async def test_an_error_in_on_output_surfaces_from_flush(pool: TransformPool) -> None:
    async def broken_sink(_: list[Record]) -> None:
        raise OSError("disk full")

    stage = TransformStage(pool, TransformSpec(f"{HELPERS}:identity"), broken_sink, print)
    await stage.submit(records(3))
    with pytest.raises(OSError, match="disk full"):
        await stage.flush()


# ------------------------------------------------------------------ backpressure


async def test_submit_waits_while_max_in_flight_batches_are_out(pool: TransformPool) -> None:
    sink = Collector()
    stage = stage_for(pool, "slow", sink, batch_size=1, max_in_flight=2)
    for i in range(8):
        await stage.submit([{"id": i, "sleep": 0.02}])
        assert stage.in_flight <= 2
        assert stage.batches_done >= i + 1 - 2  # submit returned only once a slot was free
        assert "running=" in repr(pool) and pool.pids
    await stage.flush()
    assert (stage.in_flight, stage.batches_done) == (0, 8)
    assert repr(stage).startswith(f"TransformStage({HELPERS}:slow, batch_size=1, in_flight=0/2")


async def test_max_in_flight_defaults_to_twice_the_workers(pool: TransformPool) -> None:
    stage = stage_for(pool, "identity", Collector())
    assert stage.max_in_flight == 4


# ------------------------------------------------------------------ shutdown


async def test_no_worker_process_outlives_the_pool() -> None:
    sink = Collector()
    async with TransformPool(2) as p:
        await feed(stage_for(p, "identity", sink, batch_size=5), records(20))
        pids = p.pids
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    assert not any(alive(pid) for pid in pids)
    assert not {c.pid for c in multiprocessing.active_children()} & pids
    assert repr(p).startswith("TransformPool(closed")


async def test_cancelling_mid_run_kills_the_workers_and_leaves_no_process() -> None:
    started = asyncio.Event()
    seen: dict[str, Any] = {}

    async def run() -> None:
        async with TransformPool(2) as p, stage_for(p, "slow", Collector(), batch_size=1) as stage:
            seen["pool"], seen["stage"] = p, stage
            for i in range(3):
                await stage.submit([{"id": i, "sleep": 60}])  # would block for a minute
            started.set()
            await stage.flush()

    task = asyncio.create_task(run())
    await started.wait()
    pids = seen["pool"].pids
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)
    assert not {c.pid for c in multiprocessing.active_children()} & pids
    assert seen["stage"].in_flight == 0


async def test_closing_the_pool_under_batches_in_flight_fails_loudly() -> None:
    sink = Collector()
    async with TransformPool(2) as p:
        stage = stage_for(p, "slow", sink, batch_size=1, max_in_flight=8)
        for i in range(8):  # 2 run, 1 waits in the call queue, 5 are still pending
            await stage.submit([{"id": i, "sleep": 0.1}])
    with pytest.raises(RuntimeError, match="transform pool was shut down"):
        await stage.flush()


# ------------------------------------------------------------------ the benchmark runs


@pytest.mark.slow
def test_benchmark_quick_mode_prints_its_tables() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cpu_stage.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for heading in ("speedup", "round trip", "event-loop lag", "| workers |"):
        assert heading in done.stdout


async def test_integers_beyond_64_bits_cross_the_process_boundary_exactly(
    pool: TransformPool,
) -> None:
    sink = Collector()
    rows = [{"id": 18446744073709551617}, {"id": 18446744073709551619}, {"id": 1}]
    await feed(stage_for(pool, "identity", sink, batch_size=64), rows)
    assert sorted(r["id"] for r in sink.output) == [1, 18446744073709551617, 18446744073709551619]
    assert sink.failed == []
