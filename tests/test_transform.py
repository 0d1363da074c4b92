"""The CPU stage the engine runs (``transform.pipe.TransformPipe`` on a ``TransformPool``), as a
specification: batching, order, output, failures, crashes, backpressure, shutdown.

Pools are small (2 workers) and real: the transforms in ``tests.transform_helpers`` run in
worker processes. The pipe is driven as the engine's writer drives it: each page's records
with a progress token, ``drain`` at the end, ``aclose`` on a failure. Nothing here asserts on
wall time.
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

from asyncingest.config.models import ConcurrencyConfig, TransformConfig
from asyncingest.examples import telemetry
from asyncingest.mockapi.data import Dataset
from asyncingest.mockapi.settings import MockSettings
from asyncingest.transform.pipe import TransformPipe
from asyncingest.transform.pool import TransformError, TransformPool, load_callable

Record = dict[str, Any]
HELPERS = "tests.transform_helpers"
ROOT = Path(__file__).resolve().parents[1]


class Collector:
    """The pipe's three callbacks, recording what they were given, in order."""

    def __init__(self) -> None:
        self.output: list[Record] = []
        self.failed: list[tuple[list[Record], str]] = []
        self.released: list[object] = []
        self.events: list[tuple[str, object]] = []  # what happened, in order

    async def write_output(self, records: list[Record]) -> None:
        self.output.extend(records)
        self.events.append(("written", len(records)))

    def set_aside(self, records: list[Record], reason: str) -> None:
        self.failed.append((records, reason))
        self.events.append(("set aside", len(records)))

    def release(self, token: object) -> None:
        self.released.append(token)
        self.events.append(("released", token))


@pytest.fixture
async def pool() -> AsyncIterator[TransformPool]:
    async with TransformPool(workers=2) as p:
        yield p


def spec(function: str, **fields: Any) -> TransformConfig:
    return TransformConfig(function=f"{HELPERS}:{function}", **fields)


def pipe_for(pool: TransformPool, function: str, sink: Collector, **fields: Any) -> TransformPipe:
    return TransformPipe(
        pool, spec(function, **fields), sink.write_output, sink.set_aside, sink.release
    )


def records(n: int, **markers: dict[str, Any]) -> list[Record]:
    """``n`` records ``{"id": i}``; ``markers={"7": {"boom": "x"}}`` adds fields to record 7."""
    return [{"id": i, **markers.get(str(i), {})} for i in range(n)]


async def feed(pipe: TransformPipe, rows: list[Record], page: int = 7) -> None:
    """As the writer does: pages of ``page`` records, each with a token (its first id), then
    ``drain``; on any error or cancellation, ``aclose``."""
    try:
        for i in range(0, len(rows), page):
            await pipe.feed(rows[i : i + page], f"page@{i}")
        await pipe.drain()
    except BaseException:
        await pipe.aclose()
        raise


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
    ("fields", "field"),
    [
        ({"function": "nocolon"}, "function"),
        ({"initializer": "bad ref"}, "initializer"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_crash_retries": -1}, "max_crash_retries"),
    ],
)
def test_the_transform_spec_rejects_bad_values(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):  # pydantic's ValidationError is a ValueError
        TransformConfig(**{"function": f"{HELPERS}:identity", **fields})


def test_the_pool_size_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="cpu_workers"):
        ConcurrencyConfig(cpu_workers=0)


# ------------------------------------------------------------------ output, batching, order


async def test_batches_are_cut_at_batch_size_across_pages(pool: TransformPool) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "sizes", sink, batch_size=10)
    await feed(pipe, records(43), page=7)
    assert [row["size"] for row in sink.output] == [10, 10, 10, 10, 3]
    assert [row["ids"] for row in sink.output[:4]] == [
        list(range(i, i + 10)) for i in (0, 10, 20, 30)
    ]
    assert sink.output[4]["ids"] == [40, 41, 42]  # the partial batch goes at drain
    assert (pipe.batches, pipe.failed_batches) == (5, 0)


async def test_output_is_written_in_batch_order_even_when_a_later_batch_finishes_first(
    pool: TransformPool,
) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "slow", sink, batch_size=2, max_in_flight=2)
    # batch 0 sleeps in its worker; batch 1 runs at once on the other worker
    rows = [{"id": 0, "sleep": 0.3}, {"id": 1}, {"id": 2}, {"id": 3}]
    await feed(pipe, rows, page=4)
    assert [r["id"] for r in sink.output] == [0, 1, 2, 3]


async def test_identity_transform_returns_every_record_once_in_order(pool: TransformPool) -> None:
    sink = Collector()
    rows = [
        {"id": i, "name": f"n{i}", "x": i / 3, "tags": ["a"], "nested": {"k": i}}
        for i in range(250)
    ]
    await feed(pipe_for(pool, "identity", sink, batch_size=64), rows, page=100)
    assert sink.output == rows
    assert sink.failed == []


async def test_a_page_token_is_released_only_once_its_last_record_is_written(
    pool: TransformPool,
) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "identity", sink, batch_size=10)
    await feed(pipe, records(25), page=7)  # pages end at 7, 14, 21, 25; batches at 10, 20, 25
    assert sink.events == [
        ("written", 10),
        ("released", "page@0"),
        ("written", 10),
        ("released", "page@7"),
        ("written", 5),
        ("released", "page@14"),
        ("released", "page@21"),
    ]


async def test_telemetry_lap_stats_match_an_inline_computation() -> None:
    laps = Dataset.build(MockSettings(n_meetings=1)).laps  # 2 sessions x 10 drivers x 20 laps
    sink = Collector()
    config = TransformConfig(
        function="asyncingest.examples.telemetry:lap_stats",
        initializer="asyncingest.examples.telemetry:init",
        batch_size=150,  # not a multiple of 20: some drivers' laps span two batches
    )
    async with TransformPool(2, config.initializer) as p:
        pipe = TransformPipe(p, config, sink.write_output, sink.set_aside, sink.release)
        await feed(pipe, laps, page=100)
    assert sink.failed == []

    expected = [
        row for i in range(0, len(laps), 150) for row in telemetry.lap_stats(laps[i : i + 150])
    ]
    got = sink.output
    assert got == expected  # the same rows, in the same order
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


async def test_integers_beyond_64_bits_cross_the_process_boundary_exactly(
    pool: TransformPool,
) -> None:
    sink = Collector()
    rows = [{"id": 18446744073709551617}, {"id": 18446744073709551619}, {"id": 1}]
    await feed(pipe_for(pool, "identity", sink, batch_size=64), rows)
    assert [r["id"] for r in sink.output] == [18446744073709551617, 18446744073709551619, 1]
    assert sink.failed == []


# ------------------------------------------------------------------ initializers


async def test_pool_initializer_runs_once_per_worker_process() -> None:
    sink = Collector()
    async with TransformPool(2, f"{HELPERS}:count_init") as p:
        await feed(pipe_for(p, "pid", sink, batch_size=5), records(60))
    assert len(sink.output) == 12
    assert {row["init_calls"] for row in sink.output} == {1}


async def test_spec_initializer_runs_once_per_process_before_the_first_batch(
    pool: TransformPool,
) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "pid", sink, batch_size=5, initializer=f"{HELPERS}:count_init")
    await feed(pipe, records(60))
    assert len(sink.output) == 12
    assert {row["init_calls"] for row in sink.output} == {1}


async def test_failing_pool_initializer_stops_the_start() -> None:
    with pytest.raises(TransformError, match="failing_init failed: RuntimeError: no lookup table"):
        async with TransformPool(2, f"{HELPERS}:failing_init"):
            pass


async def test_failing_spec_initializer_sets_batches_aside(pool: TransformPool) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "identity", sink, batch_size=5, initializer=f"{HELPERS}:failing_init")
    await feed(pipe, records(10))
    assert len(sink.failed) == 2 and sink.output == []
    assert all("RuntimeError: no lookup table today" in why for _, why in sink.failed)
    assert len(sink.released) == 2  # set aside is final: those pages are done


# ------------------------------------------------------------------ failures


async def test_raising_transform_sets_its_batch_aside_and_the_run_goes_on(
    pool: TransformPool,
) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "raise_on_marker", sink, batch_size=10)
    await feed(pipe, records(50, **{"23": {"boom": "negative lap"}}))
    [(bad, why)] = sink.failed
    assert [r["id"] for r in bad] == list(range(20, 30))
    assert why == "ValueError: bad record id=23: negative lap"
    assert [r["id"] for r in sink.output] == [i for i in range(50) if not 20 <= i < 30]
    assert (pipe.batches, pipe.failed_batches) == (5, 1)
    assert sink.events[4] == ("set aside", 10)  # in its place among the batches


async def test_failure_reason_is_cut_to_a_readable_length(pool: TransformPool) -> None:
    sink = Collector()
    await feed(pipe_for(pool, "raise_on_marker", sink), records(3, **{"1": {"boom": "x" * 10_000}}))
    [(_, why)] = sink.failed
    assert why.startswith("ValueError: bad record id=1: xxx") and len(why) <= 500


async def test_transform_must_return_a_list_of_dicts(pool: TransformPool) -> None:
    sink = Collector()
    await feed(pipe_for(pool, "not_a_list", sink), records(3))
    [(_, why)] = sink.failed
    assert why == f"TypeError: {HELPERS}:not_a_list must return a list of dicts, not a dict"


async def test_records_that_cannot_be_encoded_are_set_aside_without_a_batch(
    pool: TransformPool,
) -> None:
    sink = Collector()
    await feed(pipe_for(pool, "identity", sink, batch_size=2), [{"id": 0}, {"id": {1, 2}}])
    [(bad, why)] = sink.failed
    assert bad == [{"id": 0}, {"id": {1, 2}}] and why.startswith("records cannot be sent:")
    assert sink.released == ["page@0"]


async def test_dying_worker_rebuilds_the_pool_and_loses_nothing_else(pool: TransformPool) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "exit_on_marker", sink, batch_size=10, max_in_flight=4)
    await feed(pipe, records(100, **{"25": {"die": True}}))
    [(bad, why)] = sink.failed
    assert [r["id"] for r in bad] == list(range(20, 30))
    assert why.startswith("worker process died on each of 3 attempts")
    assert [r["id"] for r in sink.output] == [i for i in range(100) if not 20 <= i < 30]
    assert (pipe.batches, pipe.failed_batches) == (10, 1)
    assert pool.rebuilds == 3  # the crash among 4 batches in flight, then 2 isolated retries

    after = Collector()  # and the rebuilt pool works, at full size
    await feed(pipe_for(pool, "identity", after, batch_size=2), records(4))
    assert len(after.output) == 4 and len(pool.pids) == 2


async def test_without_crash_retries_a_dying_batch_is_set_aside_at_once(
    pool: TransformPool,
) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "exit_on_marker", sink, max_crash_retries=0, max_in_flight=1)
    await feed(pipe, records(3, **{"0": {"die": True}}))
    [(_, why)] = sink.failed
    assert why.startswith("worker process died while transforming this batch")
    assert pool.rebuilds == 1


async def test_an_error_in_write_output_surfaces_from_drain_and_releases_nothing(
    pool: TransformPool,
) -> None:
    async def broken_sink(_: list[Record]) -> None:
        raise OSError("disk full")

    released: list[object] = []
    pipe = TransformPipe(pool, spec("identity"), broken_sink, print, released.append)
    await pipe.feed(records(3), "page@0")
    with pytest.raises(OSError, match="disk full"):
        await pipe.drain()
    assert released == []


# ------------------------------------------------------------------ backpressure


async def test_feed_waits_while_max_in_flight_batches_are_out(pool: TransformPool) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "slow", sink, batch_size=1, max_in_flight=2)
    for i in range(8):
        await pipe.feed([{"id": i, "sleep": 0.02}], i)
        assert pipe.in_flight <= 2
        assert pipe.batches >= i + 1 - 2  # feed returned only once a slot was free
        assert "running=" in repr(pool) and pool.pids
    await pipe.drain()
    assert (pipe.in_flight, pipe.batches) == (0, 8)
    assert sink.released == list(range(8))
    assert repr(pipe) == (
        f"TransformPipe({HELPERS}:slow, buffered=0, in_flight=0/2, batches=8, failed=0, crashes=0)"
    )


async def test_max_in_flight_defaults_to_twice_the_workers(pool: TransformPool) -> None:
    pipe = pipe_for(pool, "identity", Collector())
    assert pipe.max_in_flight == 4


# ------------------------------------------------------------------ shutdown


async def test_aclose_cancels_the_batches_in_flight_and_releases_nothing(
    pool: TransformPool,
) -> None:
    sink = Collector()
    pipe = pipe_for(pool, "slow", sink, batch_size=1, max_in_flight=4)
    for i in range(3):
        await pipe.feed([{"id": i, "sleep": 60}], i)  # would block for a minute
    assert pipe.in_flight == 3
    tasks = [b.task for b in pipe._in_flight]  # what aclose must cancel
    await pipe.aclose()
    assert pipe.in_flight == 0
    assert all(t is not None and t.cancelled() for t in tasks)
    assert sink.released == [] and sink.output == [] and sink.failed == []


async def test_no_worker_process_outlives_the_pool() -> None:
    sink = Collector()
    async with TransformPool(2) as p:
        await feed(pipe_for(p, "identity", sink, batch_size=5), records(20))
        pids = p.pids
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    assert not any(alive(pid) for pid in pids)
    assert not {c.pid for c in multiprocessing.active_children()} & pids
    assert repr(p).startswith("TransformPool(closed")


async def test_cancelling_mid_run_kills_the_workers_and_leaves_no_process() -> None:
    started = asyncio.Event()
    seen: dict[str, Any] = {}

    async def run() -> None:
        async with TransformPool(2) as p:
            pipe = pipe_for(p, "slow", Collector(), batch_size=1)
            seen["pool"], seen["pipe"] = p, pipe
            try:
                for i in range(3):
                    await pipe.feed([{"id": i, "sleep": 60}], i)  # would block for a minute
                started.set()
                await pipe.drain()
            except BaseException:
                await pipe.aclose()  # as the writer does on a hard stop
                raise

    task = asyncio.create_task(run())
    await started.wait()
    pids = seen["pool"].pids
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)
    assert not {c.pid for c in multiprocessing.active_children()} & pids
    assert seen["pipe"].in_flight == 0


async def test_closing_the_pool_under_batches_in_flight_fails_loudly() -> None:
    sink = Collector()
    async with TransformPool(2) as p:
        pipe = pipe_for(p, "slow", sink, batch_size=1, max_in_flight=8)
        for i in range(8):  # 2 run, 1 waits in the call queue, 5 are still pending
            await pipe.feed([{"id": i, "sleep": 0.1}], i)
    with pytest.raises(RuntimeError, match="transform pool was shut down"):
        await pipe.drain()
    await pipe.aclose()  # as the writer does when its pipe fails


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
