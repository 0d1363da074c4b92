"""Records back as Arrow batches (``Engine.batches``, engine/tap.py) and ``output: none``.

Against the real mock API: the batches equal the Parquet files (Parquet on), nothing is written
with ``output: none``, a slow consumer holds back fetching (bounded buffering, counted in
records), and with a ``state_dir`` a cancelled run restarts after the last delivered batch.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import asyncingest
from asyncingest import BatchesClosed, Engine, RunCancelled, config_from_dict
from asyncingest.engine.tap import MAX_BATCHES_QUEUED, BatchStream
from asyncingest.engine.writer import MAX_PAGES_QUEUED
from asyncingest.mockapi import MockAPI
from asyncingest.sync import run_sync

from .conftest import (
    F1_ENDPOINTS,
    F1_KEYS,
    FAST_RETRY,
    assert_same_records,
    cli,
    read_records,
)

F1 = {e["name"]: e for e in F1_ENDPOINTS}
LAPS_TREE = [F1["meetings"], F1["sessions"], F1["laps"], F1["weather"]]


def config(url: str, output: Any, endpoints: list[dict[str, Any]] = LAPS_TREE, **api: Any) -> Any:
    return config_from_dict(
        {
            "api": {"base_url": url, "retry": FAST_RETRY, **api},
            "output": output,
            "endpoints": endpoints,
        }
    )


async def collect(stream: BatchStream) -> list[pa.RecordBatch]:
    return [b async for b in stream]


async def run_collecting(
    engine: Engine, names: list[str]
) -> tuple[asyncingest.RunResult, dict[str, list[pa.RecordBatch]]]:
    """Run ``engine`` while one task per endpoint reads its batches (as a service would)."""
    streams = {n: engine.batches(n) for n in names}
    async with asyncio.TaskGroup() as tg:
        readers = {n: tg.create_task(collect(s)) for n, s in streams.items()}
        run = tg.create_task(engine.run())
    return run.result(), {n: t.result() for n, t in readers.items()}


def rows(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    return [r for b in batches for r in b.to_pylist()]


def parquet_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.parquet"))


# -- Parquet on: the batches are a tap on exactly what is written ---------------------------------


async def test_batches_are_the_row_groups_written_to_parquet(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # min_rows_per_file 1: no compaction, so the files keep the row groups as written.
    output = {
        "directory": str(out),
        "row_group_rows": 40,
        "max_rows_per_file": 100,
        "min_rows_per_file": 1,
    }
    result, got = await run_collecting(
        Engine(config(mock_api.url, output)), ["laps", "sessions", "weather"]
    )
    assert result.exit_code == 0
    for name in ("laps", "sessions", "weather"):
        groups: list[pa.Table] = []
        files = sorted((out / name).glob("part-*.parquet"))
        for f in files:
            pf = pq.ParquetFile(f)
            groups += [pf.read_row_group(i) for i in range(pf.num_row_groups)]
        batches = got[name]
        assert [b.num_rows for b in batches] == [g.num_rows for g in groups], name
        for batch, group in zip(batches, groups, strict=True):
            assert batch.to_pylist() == group.to_pylist()
            assert batch.schema.names == group.schema.names
        assert_same_records(rows(batches), read_records(out, name), F1_KEYS[name])
    # Declared types, exactly the files' types.
    laps_schema = pq.read_schema(sorted((out / "laps").glob("*.parquet"))[0])
    for batch in got["laps"]:
        assert batch.schema.remove_metadata() == laps_schema.remove_metadata()


async def test_child_endpoint_batches_cover_every_record_once(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    output = {"directory": str(tmp_path / "out"), "row_group_rows": 25}
    result, got = await run_collecting(Engine(config(mock_api.url, output)), ["laps", "weather"])
    assert result.exit_code == 0
    d = mock_api.dataset
    assert_same_records(rows(got["laps"]), d.laps, F1_KEYS["laps"])
    assert_same_records(rows(got["weather"]), d.weather, F1_KEYS["weather"])


# -- output: none ------------------------------------------------------------------------------


async def test_output_none_writes_no_parquet_and_delivers_every_record(
    mock_api: MockAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default output folder would be ./output
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    cfg = config(mock_api.url, {"format": "none", "row_group_rows": 30})
    result, got = await run_collecting(Engine(cfg), ["sessions", "laps", "weather"])
    assert result.exit_code == 0
    d = mock_api.dataset
    assert_same_records(rows(got["sessions"]), d.sessions, F1_KEYS["sessions"])
    assert_same_records(rows(got["laps"]), d.laps, F1_KEYS["laps"])
    assert_same_records(rows(got["weather"]), d.weather, F1_KEYS["weather"])
    # A batch ends with the page (10 laps) that filled it to row_group_rows.
    assert all(b.num_rows < 30 + 10 for b in got["laps"])
    assert parquet_files(tmp_path) == []
    assert list((tmp_path / "tmp").iterdir()) == []  # no state kept without state_dir
    # Typed as the sink types them: the declared laps schema.
    assert got["laps"][0].schema.field("lap_duration").type == pa.float64()
    assert got["laps"][0].schema.field("is_pit_out_lap").type == pa.bool_()


async def test_output_none_without_state_dir_starts_afresh_each_run(mock_api: MockAPI) -> None:
    cfg = config(mock_api.url, "none")
    for _ in range(2):
        result, got = await run_collecting(Engine(cfg), ["laps"])
        assert result.exit_code == 0
        assert_same_records(rows(got["laps"]), mock_api.dataset.laps, F1_KEYS["laps"])


# -- backpressure: a slow consumer holds back fetching ---------------------------------------------


@pytest.mark.parametrize(
    "mock_api", [{"n_drivers": 20, "laps_per_driver": 100, "n_meetings": 3}], indirect=True
)
async def test_slow_consumer_bounds_records_buffered(mock_api: MockAPI) -> None:
    page, group, workers = 10, 50, 4  # laps pages of 10 records
    cfg = config(
        mock_api.url,
        {"format": "none", "row_group_rows": group},
        [F1["meetings"], F1["sessions"], F1["laps"]],
        concurrency={"requests_per_endpoint": workers},
    )
    engine = Engine(cfg)
    stream = engine.batches("laps")
    run = asyncio.create_task(engine.run())
    # Fetched but not yet delivered, at most: the tap's batches, the writer's buffer, its
    # inbox of pages and a page per worker in hand. Counted from the server's own requests.
    bound = (MAX_BATCHES_QUEUED + 2) * (group + page) + (MAX_PAGES_QUEUED + workers) * page
    delivered = worst = 0
    full_seen = False
    async for batch in stream:
        for _ in range(300):  # a slow consumer: the fetch side gets plenty of turns
            await asyncio.sleep(0)
        full_seen |= stream.queued == MAX_BATCHES_QUEUED
        fetched = mock_api.stats.by_path["/v1/laps"] * page
        worst = max(worst, fetched - delivered)
        delivered += batch.num_rows
    result = await run
    total = len(mock_api.dataset.laps)
    assert result.exit_code == 0 and delivered == total
    assert full_seen, "the consumer never fell behind: the test proves nothing"
    assert worst <= bound < total // 4, (worst, bound, total)


# -- resume after the last delivered batch (output: none with a state_dir) ------------------------


@pytest.mark.parametrize(
    "mock_api", [{"n_drivers": 20, "laps_per_driver": 60, "n_meetings": 2}], indirect=True
)
async def test_cancel_then_restart_repeats_only_the_batch_in_hand(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    cfg = config(
        mock_api.url,
        {"format": "none", "state_dir": str(tmp_path / "state"), "row_group_rows": 40},
        [F1["meetings"], F1["sessions"], F1["laps"]],
    )
    first = Engine(cfg)
    stream = first.batches("laps")
    run = asyncio.create_task(first.run())
    delivered: list[pa.RecordBatch] = []
    async for batch in stream:
        if len(delivered) == 3:
            in_hand = batch
            run.cancel()  # the host shuts down while batch 4 is in hand
            break
        delivered.append(batch)
    with pytest.raises(asyncio.CancelledError):
        await run
    with pytest.raises(RunCancelled):
        await stream.__anext__()
    assert parquet_files(tmp_path) == []

    second = Engine(cfg)
    result, got = await run_collecting(second, ["laps"])
    assert result.exit_code == 0
    again, before = rows(got["laps"]), rows(delivered)
    # Delivered before the batch in hand plus the restart: every record exactly once. The
    # batch in hand (never counted as delivered) comes again, in the restart.
    assert_same_records(before + again, mock_api.dataset.laps, F1_KEYS["laps"])
    key = F1_KEYS["laps"]
    assert {tuple(r[k] for k in key) for r in in_hand.to_pylist()} <= {
        tuple(r[k] for k in key) for r in again
    }


async def test_resume_with_parquet_and_tap_redelivers_only_after_the_checkpoint(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    output = {"directory": str(out), "row_group_rows": 20, "checkpoint_seconds": 0.05}
    cfg = config(mock_api.url, output, [F1["meetings"], F1["sessions"], F1["laps"]])
    first = Engine(cfg)
    stream = first.batches("laps")
    run = asyncio.create_task(first.run())
    delivered: list[pa.RecordBatch] = []
    async for batch in stream:
        delivered.append(batch)
        if len(delivered) == 6:
            break
    first.stop()  # graceful: the rest is delivered, then the state names all of it
    async for batch in stream:
        delivered.append(batch)
    stopped = await run
    assert stopped.stopped
    second = Engine(cfg)
    result, got = await run_collecting(second, ["laps"])
    assert result.exit_code == 0
    # The batches of both runs are the files: every record once, nothing duplicated.
    assert_same_records(
        rows(delivered) + rows(got["laps"]), read_records(out, "laps"), F1_KEYS["laps"]
    )
    assert_same_records(read_records(out, "laps"), mock_api.dataset.laps, F1_KEYS["laps"])


# -- errors ------------------------------------------------------------------------------------


async def test_batches_refuses_unknown_twice_late_and_after_the_end(mock_api: MockAPI) -> None:
    engine = Engine(config(mock_api.url, {"format": "none", "row_group_rows": 1}))
    with pytest.raises(ValueError, match=r"batches\('lap'\): no such endpoint"):
        engine.batches("lap")
    stream = engine.batches("laps")
    with pytest.raises(RuntimeError, match="already called"):
        engine.batches("laps")
    run = asyncio.create_task(engine.run())
    await stream.__anext__()  # laps has records: its parents wrote theirs before
    with pytest.raises(RuntimeError, match=r"batches\('meetings'\): the endpoint has already"):
        engine.batches("meetings")
    await collect(stream)
    assert (await run).exit_code == 0
    with pytest.raises(RuntimeError, match="the run has ended"):
        engine.batches("weather")


async def test_a_run_error_surfaces_in_the_iterator(mock_api: MockAPI, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = config(mock_api.url, {"directory": str(out)})
    holder = Engine(cfg)
    holder_lock = asyncingest.OutputLocked
    from asyncingest.state.lock import OutputLock

    lock = OutputLock(out)
    lock.acquire()  # another run holds the folder: this run fails at once
    try:
        stream = holder.batches("laps")
        with pytest.raises(holder_lock):
            await holder.run()
        with pytest.raises(holder_lock):
            await stream.__anext__()
    finally:
        lock.release()


async def test_closing_the_stream_early_fails_the_run_clearly(mock_api: MockAPI) -> None:
    engine = Engine(config(mock_api.url, {"format": "none", "row_group_rows": 10}))
    stream = engine.batches("laps")
    run = asyncio.create_task(engine.run())
    async with stream:
        await stream.__anext__()
    with pytest.raises(BatchesClosed, match=r"batches\('laps'\) was closed"):
        await run


def test_output_none_config_is_validated() -> None:
    base = {"api": {"base_url": "http://x"}, "endpoints": [{"name": "a", "path": "/a"}]}
    assert config_from_dict({**base, "output": "none"}).output.format == "none"
    with pytest.raises(asyncingest.ConfigError, match="directory: only for Parquet output"):
        config_from_dict({**base, "output": {"format": "none", "directory": "d"}})
    with pytest.raises(asyncingest.ConfigError, match="state_dir: only for format none"):
        config_from_dict({**base, "output": {"state_dir": "s"}})
    with pytest.raises(asyncingest.ConfigError, match=r"'none' .* or 'parquet'"):
        config_from_dict({**base, "output": "csv"})


async def test_the_cli_and_sync_mode_refuse_output_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the config's output is the default, ./output
    raw = {
        "api": {"base_url": "http://127.0.0.1:9"},
        "output": "none",
        "endpoints": [{"name": "a", "path": "/a"}],
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, _, err = await cli("run", str(path))
    assert code == 2 and "output.format: none delivers records only" in err
    with pytest.raises(asyncingest.ConfigError, match=r"output\.format: none"):
        await asyncio.to_thread(run_sync, config_from_dict(raw))
    assert sorted(os.listdir(tmp_path)) == ["job.yaml"]  # refused: nothing made


# -- through the Pipeline, as the issue's example ---------------------------------------------


async def test_pipeline_batches_as_in_the_issue(mock_api: MockAPI, tmp_path: Path) -> None:
    cfg = config(mock_api.url, {"format": "none", "row_group_rows": 50})
    got: list[pa.RecordBatch] = []
    async with asyncingest.Pipeline(cfg) as p:
        async for batch in p.batches("laps"):
            got.append(batch)
        assert p.snapshot() is not None
    assert p.result.exit_code == 0
    assert_same_records(rows(got), mock_api.dataset.laps, F1_KEYS["laps"])
    with pytest.raises(RuntimeError, match="the run has ended"):
        p.batches("weather")


async def test_pipeline_stop_ends_the_stream_after_the_work_in_flight(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    cfg = config(
        mock_api.url,
        {"format": "none", "state_dir": str(state), "row_group_rows": 20},
        [F1["meetings"], F1["sessions"], F1["laps"]],
    )
    first: list[pa.RecordBatch] = []
    p = asyncingest.Pipeline(cfg)
    stream = p.batches("laps")  # before the start
    await p.start()
    stopping: asyncio.Task[asyncingest.RunResult] | None = None
    async for batch in stream:
        first.append(batch)
        if stopping is None:
            stopping = asyncio.create_task(p.stop())
    assert stopping is not None
    assert (await stopping).stopped
    async with asyncingest.Pipeline(cfg) as again:
        second = await collect(again.batches("laps"))
    # A stop delivers and saves the work in flight: nothing comes twice.
    assert_same_records(rows(first) + rows(second), mock_api.dataset.laps, F1_KEYS["laps"])
