"""What makes a commit survive a power cut: the order of fsync, rename and folder fsync.

A SIGKILL test cannot see this order (the page cache outlives the process), so these tests
record it: ``os.fsync`` and ``os.replace`` (and ``os.unlink``, for compaction) are wrapped to
log what they touch, by path, and still do their work. Each commit must be

1. the new file's data fsynced under its hidden name,
2. renamed (``os.replace``) to its visible name,
3. the folder fsynced, so the new name itself is durable,

and nothing may be renamed into view before its data is on disk. Linux only (a descriptor's
path comes from ``/proc/self/fd``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncingest.sink.parquet import ParquetSink, SinkOptions
from asyncingest.state.checkpoint import RunState, save_state, state_path
from asyncingest.state.compact import CompactOptions, compact_folders

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads descriptor paths from /proc/self/fd"
)

Step = tuple[str, ...]


class DiskLog:
    """The durable-storage calls made, in order, with paths relative to ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.steps: list[Step] = []

    def rel(self, path: str | os.PathLike[str]) -> str:
        p = Path(os.fspath(path)).resolve()
        return "." if p == self.root else str(p.relative_to(self.root))

    def of(self, kind: str) -> list[Step]:
        return [s for s in self.steps if s[0] == kind]


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DiskLog]:
    log = DiskLog(tmp_path)
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd: int) -> None:
        log.steps.append(("fsync", log.rel(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kw: object) -> None:
        log.steps.append(("replace", log.rel(src), log.rel(dst)))
        real_replace(src, dst, **kw)  # type: ignore[arg-type]

    def unlink(path: str | os.PathLike[str], **kw: object) -> None:
        if Path(os.fspath(path)).resolve().is_relative_to(log.root):
            log.steps.append(("unlink", log.rel(path)))
        real_unlink(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    yield log


def assert_each_rename_is_durable(steps: list[Step]) -> None:
    """Every rename comes after an fsync of its source and is followed by an fsync of the
    destination's folder before any later rename or fsync of a file."""
    for i, step in enumerate(steps):
        if step[0] != "replace":
            continue
        _, src, dst = step
        assert ("fsync", src) in steps[:i], f"{src} renamed before its data was fsynced"
        folder = str(Path(dst).parent)
        later = steps[i + 1 :]
        assert ("fsync", folder) in later, f"folder of {dst} never fsynced after the rename"


# -- the Parquet sink ---------------------------------------------------------------------------


def test_the_sink_fsyncs_a_file_then_renames_it_then_fsyncs_the_folder(
    tmp_path: Path, disk: DiskLog
) -> None:
    sink = ParquetSink(tmp_path, "items", SinkOptions(row_group_rows=2, max_rows_per_file=3))
    disk.steps.clear()  # creating the folder fsyncs the root: not what this test is about
    sink.write([{"id": i} for i in range(5)])  # one full file of 3, then 2 more at close
    files = sink.close()
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert disk.steps == [
        ("fsync", "items/.part-00000.parquet.inprogress"),
        ("replace", "items/.part-00000.parquet.inprogress", "items/part-00000.parquet"),
        ("fsync", "items"),
        ("fsync", "items/.part-00001.parquet.inprogress"),
        ("replace", "items/.part-00001.parquet.inprogress", "items/part-00001.parquet"),
        ("fsync", "items"),
    ]
    assert pq.read_table(tmp_path / "items").num_rows == 5


def test_a_new_sink_folder_is_made_durable_in_its_parent(tmp_path: Path, disk: DiskLog) -> None:
    ParquetSink(tmp_path / "out", "items", SinkOptions())
    assert ("fsync", "out") in disk.steps


def test_a_file_widened_at_close_is_committed_the_same_way(tmp_path: Path, disk: DiskLog) -> None:
    """A rewrite of an earlier file to the folder's final schema replaces a visible file:
    fsync the rewrite, rename it over the old file, fsync the folder."""
    sink = ParquetSink(tmp_path, "items", SinkOptions(row_group_rows=2, max_rows_per_file=2))
    sink.write([{"id": 1}, {"id": 2}])  # file 0: id is int64
    sink.write([{"id": 3, "name": "x"}, {"id": 4, "name": None}])  # file 1 adds a column
    sink.close()
    assert len(disk.of("replace")) >= 3  # two commits and at least one rewrite
    assert_each_rename_is_durable(disk.steps)
    assert pq.read_table(tmp_path / "items").num_rows == 4


# -- the state ----------------------------------------------------------------------------------


def test_the_state_is_fsynced_under_a_temporary_name_then_renamed_then_the_folder_fsynced(
    tmp_path: Path, disk: DiskLog
) -> None:
    save_state(tmp_path, RunState("fp"))
    final = disk.rel(state_path(tmp_path))
    tmp = str(Path(final).with_name(f".{Path(final).name}.tmp"))
    assert disk.steps == [
        ("fsync", tmp),
        ("replace", tmp, final),
        ("fsync", str(Path(final).parent)),
    ]


def test_saving_the_state_again_keeps_the_order(tmp_path: Path, disk: DiskLog) -> None:
    state = RunState("fp")
    save_state(tmp_path, state)
    state.endpoint("items").done.add_range(0, 10)
    save_state(tmp_path, state)
    assert [s[0] for s in disk.steps] == ["fsync", "replace", "fsync"] * 2
    assert_each_rename_is_durable(disk.steps)


# -- compaction ---------------------------------------------------------------------------------


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


def test_a_compaction_makes_its_files_durable_before_the_state_names_them(
    tmp_path: Path, disk: DiskLog
) -> None:
    state = small_files(tmp_path, [3, 3, 3])
    options = CompactOptions("zstd", row_group_rows=5, max_rows_per_file=100, min_rows_per_file=50)
    disk.steps.clear()
    (report,) = compact_folders(tmp_path, state, ["items"], options)
    assert (report.compacted_from, report.files) == (3, 1)
    state_file = disk.rel(state_path(tmp_path))
    state_tmp = str(Path(state_file).with_name(f".{Path(state_file).name}.tmp"))
    state_dir = str(Path(state_file).parent)
    staging, final = "items/.part-00003.parquet.compact", "items/part-00003.parquet"
    commit = [
        # 1. the merged file, durable under its hidden name (and the folder, for that name)
        ("fsync", staging),
        ("fsync", "items"),
        # 2. the commit point: the state names the new file instead of the old ones
        ("fsync", state_tmp),
        ("replace", state_tmp, state_file),
        ("fsync", state_dir),
        # 3. the old files go, durably
        ("unlink", "items/part-00000.parquet"),
        ("unlink", "items/part-00001.parquet"),
        ("unlink", "items/part-00002.parquet"),
        ("fsync", "items"),
        # 4. the merged file under its final name, durably
        ("replace", staging, final),
        ("fsync", "items"),
    ]
    assert disk.steps[: len(commit)] == commit
    # then the pending step is cleared with one more atomic save
    assert disk.steps[len(commit) :] == [
        ("fsync", state_tmp),
        ("replace", state_tmp, state_file),
        ("fsync", state_dir),
    ]
    assert sorted(pq.read_table(tmp_path / "items").column("id").to_pylist()) == list(range(9))


# -- the crash points the SIGKILL tests aim at ------------------------------------------------


def test_the_crash_points_sit_between_the_fsync_and_the_rename(
    tmp_path: Path, disk: DiskLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ASYNCINGEST_CRASH_AT=commit`` / ``state`` (the SIGKILL tests) must kill the process
    after the new file is durable under its temporary name and before it is renamed."""
    import asyncingest.sink.parquet as parquet
    import asyncingest.state.checkpoint as checkpoint

    def crash_point(name: str) -> None:
        disk.steps.append(("crash", name))

    monkeypatch.setattr(parquet, "crash_point", crash_point)
    monkeypatch.setattr(checkpoint, "crash_point", crash_point)
    sink = ParquetSink(tmp_path, "items", SinkOptions())
    disk.steps.clear()
    sink.write([{"id": 1}])
    sink.close()
    save_state(tmp_path, RunState("fp"))
    assert disk.steps[:3] == [
        ("fsync", "items/.part-00000.parquet.inprogress"),
        ("crash", "commit"),
        ("replace", "items/.part-00000.parquet.inprogress", "items/part-00000.parquet"),
    ]
    crash = disk.steps.index(("crash", "state"))
    assert disk.steps[crash - 1] == ("fsync", "_asyncingest/.state.json.tmp")
    assert disk.steps[crash + 1][0] == "replace"
