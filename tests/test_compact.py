"""Compaction: a finished run leaves few files per folder, and a kill at any step of merging
them leaves the old files or the new ones committed, never both, never a row twice."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from aiohttp import web

import asyncingest
from asyncingest import StateCorrupt, config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.sink.parquet import ParquetSink, SinkOptions
from asyncingest.sink.schema import TYPES_KEY
from asyncingest.state.checkpoint import RunState, load_state
from asyncingest.state.compact import CompactOptions, compact_folders, compact_running, recover

from .conftest import F1_ENDPOINTS, F1_KEYS, assert_same_records, read_records, run_cli

pytestmark = pytest.mark.slow

# Every checkpoint file is smaller than the minimum: laps (480 rows) and its transform output
# always have small files to merge, because the mock API answers two laps pages per checkpoint
# (paced_api below).
MAX_ROWS = MIN_ROWS = 200
GROUP_ROWS = 5
# No folder reaches 500 rows: nothing is merged during the run, everything at its end.
AT_THE_END = {"max_rows_per_file": 500, "min_rows_per_file": 500}
# 480 laps, 10 a page.
SETTINGS = {"laps_per_driver": 40, "latency_ms": 10}
PAGES_PER_SAVE = 2  # laps pages the mock answers per save of the state (paced_api)
# A checkpoint commits at most 4 laps pages (40 rows), so laps and laps_out reach 100 small rows
# again and again during the run (a file cut at 100 by the sink would not be small).
DURING = {"max_rows_per_file": 100, "min_rows_per_file": 100}
TRANSFORM = {"function": "tests.transform_helpers:identity", "batch_size": 7}


@asynccontextmanager
async def paced_api(out: Path) -> AsyncIterator[tuple[MockAPI, str]]:
    """The mock API (``SETTINGS``) and the URL of a proxy in front of it that answers two laps
    pages per save of the state of the run writing ``out``: at most four laps pages (40 rows:
    two answered since the last save, two before it while that checkpoint was under way) land
    in one checkpoint, whatever the machine's load.

    How many small files a folder gets decides whether these tests see a compaction at all.
    Paced only by the mock's latency, that number was the ratio of page time to checkpoint
    time (fsyncs included): 4-6 files for laps with 10 ms pages on an idle machine, and 1 (no
    merge, so a test waiting for a crash point at the 1st or 2nd compaction saw the run end
    instead) under ``pytest -n`` or beside other jobs. Paced by the checkpoints it is the same
    on any machine.
    """
    state = out / "_asyncingest" / "state.json"

    def stamp() -> tuple[int, int, int] | None:
        try:
            st = os.stat(state)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size  # replaced at each save: a new file

    last: tuple[int, int, int] | None = None
    answered = 0
    turn = asyncio.Lock()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal last, answered
        if request.path == "/v1/laps":
            async with turn:
                if answered == PAGES_PER_SAVE:
                    for _ in range(12_000):  # a minute at most (the run died: answer anyway)
                        if stamp() not in (None, last):
                            break
                        await asyncio.sleep(0.005)
                    answered = 0
                last = stamp() if answered == 0 else last
                answered += 1
        async with session.get(api.url + request.path_qs) as answer:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type="application/json")

    async with (
        MockAPI(MockSettings.small(**SETTINGS)) as api,
        aiohttp.ClientSession() as session,
    ):
        runner = web.ServerRunner(web.Server(handle, access_log=None), shutdown_timeout=0.5)
        await runner.setup()
        try:
            sock = socket.create_server(("127.0.0.1", 0))
            await web.SockSite(runner, sock).start()
            yield api, f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            await runner.cleanup()


def pipeline(url: str, out: Path, *, transform: bool = False, **output: Any) -> dict[str, Any]:
    """The F1 crawl, checkpointing very often so every endpoint commits many small files."""
    endpoints = [
        {**e, "transform": TRANSFORM} if transform and e["name"] == "laps" else e
        for e in F1_ENDPOINTS
    ]
    return {
        "api": {
            "base_url": url,
            "retry": {"max_attempts": 8, "backoff_base": 0.01, "backoff_max": 0.05},
            "concurrency": {"requests_per_endpoint": 2, "cpu_workers": 1},
            "adaptive_rate": False,
        },
        "output": {
            "directory": str(out),
            "row_group_rows": GROUP_ROWS,
            "max_rows_per_file": MAX_ROWS,
            "min_rows_per_file": MIN_ROWS,
            "checkpoint_seconds": 0.01,
            "compression": "snappy",
            **output,
        },
        "endpoints": endpoints,
    }


def folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("_"))


def rows_per_file(folder: Path) -> dict[str, int]:
    return {p.name: pq.read_metadata(p).num_rows for p in sorted(folder.glob("*.parquet"))}


def assert_every_record_once(api: MockAPI, out: Path, transform: bool = False) -> None:
    for name, keys in F1_KEYS.items():
        assert_same_records(read_records(out, name), getattr(api.dataset, name), keys)
    if transform:
        assert_same_records(read_records(out, "laps_out"), api.dataset.laps, F1_KEYS["laps"])


def assert_no_key_twice_in_a_glob(out: Path) -> None:
    """What a reader of the folder sees (DuckDB's glob): no primary key twice."""
    for name, keys in F1_KEYS.items():
        if not any((out / name).glob("*.parquet")):
            continue
        cols = ", ".join(keys)
        glob = str(out / name / "*.parquet")
        dupes = duckdb.sql(
            f"SELECT {cols}, count(*) AS n FROM read_parquet('{glob}') GROUP BY {cols} HAVING n > 1"
        ).fetchall()
        assert not dupes, (name, dupes[:3])


def assert_state_names_what_is_on_disk(out: Path) -> None:
    state = load_state(out)
    assert state is not None
    for folder in folders(out):
        es = state.endpoints[folder.name]
        assert es.compaction is None
        assert sorted(es.files) == sorted(p.name for p in folder.glob("*.parquet")), folder
        assert not [p for p in folder.iterdir() if p.name.startswith(".")], folder


def assert_compacted(out: Path, max_rows: int = MAX_ROWS, min_rows: int = MIN_ROWS) -> None:
    for folder in folders(out):
        rows = rows_per_file(folder)
        assert all(n <= max_rows for n in rows.values()), (folder.name, rows)
        small = [n for n in rows.values() if n < min_rows]
        assert len(small) <= 1, (folder.name, rows)


async def test_a_finished_run_leaves_at_most_one_small_file_per_folder(tmp_path: Path) -> None:
    # Files only come from checkpoints here (no folder reaches max_rows_per_file), and the
    # slower pages make the crawl span many checkpoints however loaded the machine is: laps
    # always ends the run with several small files to merge.
    out = tmp_path / "out"
    async with paced_api(out) as (api, url):
        result = await asyncingest.run(config_from_dict(pipeline(url, out, **AT_THE_END)))
        assert result.ok
        assert_every_record_once(api, out)
    assert_compacted(out, 500, 500)
    assert_state_names_what_is_on_disk(out)
    # The run did checkpoint often: compaction had many files to merge.
    (c,) = [c for c in result.compacted if c.folder == "laps"]
    assert c.compacted_from > c.files and c.rows > 0


async def test_compacted_files_keep_types_metadata_compression_and_row_groups(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with paced_api(out) as (_api, url):
        result = await asyncingest.run(config_from_dict(pipeline(url, out, **AT_THE_END)))
        assert result.ok and result.compacted
    for c in result.compacted:
        for path in (out / c.folder).glob("*.parquet"):
            meta = pq.read_metadata(path)
            assert TYPES_KEY in (pq.read_schema(path).metadata or {}), path
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                assert group.num_rows <= GROUP_ROWS
                assert group.column(0).compression == "SNAPPY"
    # A declared schema's types survive: laps' lap_number is still int64.
    assert pq.read_schema(next((out / "laps").glob("*.parquet"))).field("lap_number").type == (
        "int64"
    )


async def test_the_run_report_counts_files_before_and_after_compaction(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with paced_api(out) as (_api, url):
        result = await asyncingest.run(config_from_dict(pipeline(url, out, **AT_THE_END)))
    report = orjson.loads((out / "_asyncingest" / "runs" / f"{result.run_id}.json").read_bytes())
    (laps,) = [c for c in report["result"]["compacted"] if c["folder"] == "laps"]
    assert set(laps) == {"folder", "files", "compacted_from", "rows"}
    assert laps["files"] == len(list((out / "laps").glob("*.parquet")))
    assert laps["compacted_from"] > laps["files"]


async def test_transform_output_folder_is_compacted_too(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with paced_api(out) as (api, url):
        cfg = pipeline(url, out, transform=True, **AT_THE_END)  # files only at checkpoints
        result = await asyncingest.run(config_from_dict(cfg))
        assert result.ok
        assert_every_record_once(api, out, transform=True)
    assert "laps_out" in {c.folder for c in result.compacted}
    assert_compacted(out, 500, 500)
    assert_state_names_what_is_on_disk(out)


CRASH_POINTS = ["compact-staged", "compact-state", "compact-deleted", "compact-renamed"]


@pytest.mark.parametrize("crash_at", [f"{p}:{n}" for n in (1, 2) for p in CRASH_POINTS])
async def test_a_kill_during_the_final_compaction_then_resume_gives_every_record_once(
    tmp_path: Path, crash_at: str
) -> None:
    out = tmp_path / "out"
    async with paced_api(out) as (api, url):
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(pipeline(url, out, transform=True, **AT_THE_END)))
        code, text = await run_cli(cfg, env={"ASYNCINGEST_CRASH_AT": crash_at})
        assert code == -signal.SIGKILL, text
        # Killed part way: a reader of any folder never sees a row twice.
        assert_no_key_twice_in_a_glob(out)
        state = load_state(out)
        assert state is not None and state.status == "complete"
        code, text = await run_cli(cfg)  # finds the output complete, finishes the compaction
        assert code == 0, text
        assert_every_record_once(api, out, transform=True)
    assert_no_key_twice_in_a_glob(out)
    assert_compacted(out, 500, 500)
    assert_state_names_what_is_on_disk(out)


@pytest.mark.parametrize("crash_at", [f"{p}:{n}" for n in (1, 2) for p in CRASH_POINTS])
async def test_a_kill_during_a_compaction_while_running_then_resume_gives_every_record_once(
    tmp_path: Path, crash_at: str
) -> None:
    out = tmp_path / "out"
    async with paced_api(out) as (api, url):
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(pipeline(url, out, transform=True, **DURING)))
        code, text = await run_cli(cfg, env={"ASYNCINGEST_CRASH_AT": crash_at})
        assert code == -signal.SIGKILL, text
        assert_no_key_twice_in_a_glob(out)
        state = load_state(out)
        assert state is not None and state.status == "running"  # killed mid-run
        code, text = await run_cli(cfg)  # resumes: finishes or drops the step, then the rest
        assert code == 0, text
        assert_every_record_once(api, out, transform=True)
    assert_no_key_twice_in_a_glob(out)
    assert_compacted(out, 100, 100)
    assert_state_names_what_is_on_disk(out)


async def test_small_files_are_merged_while_the_run_goes_on(tmp_path: Path) -> None:
    """Killed before its end, a long run has not left a file per checkpoint: its small
    files were merged once they added up to min_rows_per_file."""
    out = tmp_path / "out"
    async with paced_api(out) as (_api, url):
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(pipeline(url, out, **DURING)))
        # The 2nd merge has committed: the run is still going (laps alone makes 4 or more).
        code, text = await run_cli(cfg, env={"ASYNCINGEST_CRASH_AT": "compact-renamed:2"})
        assert code == -signal.SIGKILL, text
    state = load_state(out)
    assert state is not None and state.status == "running"
    laps = state.endpoints["laps"]
    rows = {n: pq.read_metadata(out / "laps" / n).num_rows for n in laps.files}
    assert any(n >= 100 for n in rows.values()), rows  # merged files, made mid-run


async def test_a_compaction_killed_before_its_commit_leaves_the_old_files_committed(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with paced_api(out) as (_api, url):
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(pipeline(url, out, **AT_THE_END)))
        code, text = await run_cli(cfg, env={"ASYNCINGEST_CRASH_AT": "compact-staged:1"})
        assert code == -signal.SIGKILL, text
    state = load_state(out)
    assert state is not None
    (folder,) = [f for f in folders(out) if list(f.glob(".part-*.parquet.compact"))]
    # The state names the old files, all still there; the merged ones are hidden.
    assert sorted(state.endpoints[folder.name].files) == sorted(
        p.name for p in folder.glob("*.parquet")
    )
    assert len(state.endpoints[folder.name].files) >= 2


async def test_a_compaction_killed_after_its_commit_is_finished_on_the_next_start(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with paced_api(out) as (_api, url):
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(pipeline(url, out, **AT_THE_END)))
        code, text = await run_cli(cfg, env={"ASYNCINGEST_CRASH_AT": "compact-state:1"})
        assert code == -signal.SIGKILL, text
    state = load_state(out)
    assert state is not None
    (name,) = [n for n, es in state.endpoints.items() if es.compaction is not None]
    pending = state.endpoints[name].compaction
    assert pending is not None
    # Committed: the state names the merged files (still hidden) instead of the old ones.
    finals = [final for _, final in pending["staged"]]
    assert set(finals) <= set(state.endpoints[name].files)
    assert not set(pending["replaced"]) & set(state.endpoints[name].files)
    assert recover(out, state)
    folder = out / name
    assert sorted(state.endpoints[name].files) == sorted(p.name for p in folder.glob("*.parquet"))
    assert not list(folder.glob(".*"))


def small_files(tmp_path: Path, sizes: list[int]) -> RunState:
    folder = tmp_path / "items"
    folder.mkdir()
    state = RunState("fp")
    n = 0
    for i, size in enumerate(sizes):
        name = f"part-{i:05d}.parquet"
        pq.write_table(pa.table({"id": list(range(n, n + size))}), folder / name)
        state.endpoint("items").files.append(name)
        n += size
    return state


def test_many_small_files_become_files_of_max_rows(tmp_path: Path) -> None:
    state = small_files(tmp_path, [7] * 30 + [40])  # 210 rows in small files, one of 40
    options = CompactOptions("zstd", row_group_rows=5, max_rows_per_file=50, min_rows_per_file=25)
    (c,) = compact_folders(tmp_path, state, ["items"], options)
    assert (c.compacted_from, c.files, c.rows) == (31, 6, 210)
    rows = sorted(rows_per_file(tmp_path / "items").values())
    assert rows == [10, 40, 50, 50, 50, 50]  # the file of 40 is above the minimum: kept
    ids = pq.read_table(tmp_path / "items").column("id").to_pylist()
    assert sorted(ids) == list(range(250))
    assert sorted(state.endpoints["items"].files) == sorted(rows_per_file(tmp_path / "items"))


def test_a_folder_with_one_small_file_is_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "items"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3]}), folder / "part-00000.parquet")
    state = RunState("fp")
    state.endpoint("items").files = ["part-00000.parquet"]
    options = CompactOptions("zstd", 10, 100, 50)
    assert compact_folders(tmp_path, state, ["items"], options) == []
    assert state.endpoints["items"].files == ["part-00000.parquet"]


def test_a_compaction_that_fails_before_its_commit_leaves_only_the_old_files(
    tmp_path: Path,
) -> None:
    state = small_files(tmp_path, [7] * 2)  # merged first: its staging file is made
    folder = tmp_path / "items"
    for name in ("part-00002.parquet", "part-00003.parquet"):  # another schema, merged next
        pq.write_table(pa.table({"name": ["x"] * 7}), folder / name, compression="none")
        state.endpoints["items"].files.append(name)
    with (folder / "part-00003.parquet").open("r+b") as fh:
        fh.seek(4)
        fh.write(b"\xff" * 16)  # its first page header: the data cannot be read
    before = sorted(p.name for p in folder.iterdir())
    options = CompactOptions("zstd", row_group_rows=5, max_rows_per_file=50, min_rows_per_file=25)
    with pytest.raises(StateCorrupt, match=r"part-00003\.parquet: this committed Parquet file"):
        compact_folders(tmp_path, state, ["items"], options)
    assert sorted(p.name for p in folder.iterdir()) == before  # no staging file left
    assert state.endpoints["items"].files == before and state.endpoints["items"].compaction is None


def test_a_pending_compaction_whose_files_are_gone_is_reported_as_a_damaged_state(
    tmp_path: Path,
) -> None:
    state = small_files(tmp_path, [7])
    state.endpoints["items"].compaction = {
        "staged": [[".part-00009.parquet.compact", "part-00009.parquet"]],
        "replaced": [],
    }
    with pytest.raises(StateCorrupt, match=r"part-00009\.parquet.*--fresh"):
        recover(tmp_path, state)


def test_a_sink_whose_files_were_merged_while_open_unifies_the_merged_file_at_close(
    tmp_path: Path,
) -> None:
    """Merged during the run, then the inferred schema widens: close() rewrites the merged
    file to the final schema and does not look for the files it replaced."""
    sink = ParquetSink(tmp_path, "items", SinkOptions(row_group_rows=5, max_rows_per_file=50))
    state = RunState("fp")
    for start in (0, 7):
        sink.write([{"id": i} for i in range(start, start + 7)])
        sink.flush()
    state.endpoint("items").files = [p.name for p in sink.files]
    options = CompactOptions("zstd", row_group_rows=5, max_rows_per_file=50, min_rows_per_file=10)
    merged = compact_running(tmp_path, state, "items", options, sink, {})
    assert merged is not None and (merged.compacted_from, merged.files) == (2, 1)
    sink.write([{"id": 14, "score": 1.5}])  # a new field: the schema widens
    sink.close()
    files = sorted((tmp_path / "items").glob("*.parquet"))
    assert len({str(pq.read_schema(f).remove_metadata()) for f in files}) == 1
    table = pq.read_table(tmp_path / "items")
    assert sorted(table.column("id").to_pylist()) == list(range(15))
    assert "score" in pq.read_schema(tmp_path / "items" / state.endpoints["items"].files[0]).names


def test_a_closed_sinks_folder_waits_for_the_end_of_run_compaction(tmp_path: Path) -> None:
    """Its close may have rewritten the files to a wider schema than the ones read before."""
    sink = ParquetSink(tmp_path, "items", SinkOptions(row_group_rows=5, max_rows_per_file=50))
    state = RunState("fp")
    for start in (0, 7):
        sink.write([{"id": i} for i in range(start, start + 7)])
        sink.flush()
    state.endpoint("items").files = [p.name for p in sink.files]
    known: dict[str, Any] = {}
    waiting = CompactOptions("zstd", row_group_rows=5, max_rows_per_file=50, min_rows_per_file=20)
    assert compact_running(tmp_path, state, "items", waiting, sink, known) is None  # 14 < 20
    sink.write([{"id": 14, "score": 1.5}])
    sink.close()  # the earlier files are rewritten with the new column
    state.endpoint("items").files = [p.name for p in sink.files]
    options = CompactOptions("zstd", row_group_rows=5, max_rows_per_file=50, min_rows_per_file=10)
    assert compact_running(tmp_path, state, "items", options, sink, known) is None
    (done,) = compact_folders(tmp_path, state, ["items"], options)
    assert done.files == 1
    assert sorted(pq.read_table(tmp_path / "items").column("id").to_pylist()) == list(range(15))
