"""The chunked writer shared by the current table and compaction: row groups of
``row_group_rows``, files of at most ``max_rows_per_file`` rows, each fsynced before the
caller hears it is closed."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncingest.sink.chunked import ChunkedWriter

SCHEMA = pa.schema([("id", pa.int64())])


def _table(start: int, stop: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, stop), type=pa.int64())}, schema=SCHEMA)


def _writer(folder: Path, max_rows: int | None, closed: list[Path]) -> ChunkedWriter:
    numbers = itertools.count()
    return ChunkedWriter(
        SCHEMA,
        compression="zstd",
        row_group_rows=4,
        max_rows_per_file=max_rows,
        next_path=lambda: folder / f"f{next(numbers)}.parquet",
        after_close=closed.append,
    )


def _layout(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def test_row_groups_and_files_are_cut_to_size_and_rows_keep_their_order(tmp_path: Path) -> None:
    closed: list[Path] = []
    out = _writer(tmp_path, 10, closed)
    for start in range(0, 23, 3):  # uneven tables: 3 rows each, 23 rows in all
        out.add(_table(start, min(start + 3, 23)))
    out.add(_table(0, 0))  # an empty table changes nothing
    assert closed == [tmp_path / "f0.parquet", tmp_path / "f1.parquet"]  # full files closed
    out.close()
    assert out.files == closed == [tmp_path / f"f{i}.parquet" for i in range(3)]
    assert [_layout(p) for p in out.files] == [[4, 4, 2], [4, 4, 2], [3]]
    assert out.rows == 23
    ids = [v for p in out.files for v in pq.read_table(p).column("id").to_pylist()]
    assert ids == list(range(23))


def test_without_a_file_limit_everything_goes_to_one_file_and_nothing_means_no_file(
    tmp_path: Path,
) -> None:
    closed: list[Path] = []
    out = _writer(tmp_path, None, closed)
    out.close()
    assert out.files == closed == []
    out = _writer(tmp_path, None, closed)
    out.add(_table(0, 9))
    out.close()
    assert closed == [tmp_path / "f0.parquet"]
    assert _layout(closed[0]) == [4, 4, 1]


def test_at_least_one_file_writes_an_empty_file_with_the_schema(tmp_path: Path) -> None:
    closed: list[Path] = []
    out = _writer(tmp_path, 10, closed)
    out.close(at_least_one_file=True)
    assert closed == [tmp_path / "f0.parquet"]
    assert pq.read_table(closed[0]).schema.equals(SCHEMA)


def test_a_file_is_fsynced_before_after_close_hears_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (log.append("fsync"), real_fsync(fd))[1])
    out = ChunkedWriter(
        SCHEMA,
        compression="zstd",
        row_group_rows=4,
        max_rows_per_file=4,
        next_path=lambda: tmp_path / f"f{len(log)}.parquet",
        after_close=lambda path: log.append(f"closed {path.name}"),
    )
    out.add(_table(0, 4))
    assert log == ["fsync", "closed f0.parquet"]


def test_abort_closes_the_open_file_and_leaves_the_files_to_the_caller(tmp_path: Path) -> None:
    closed: list[Path] = []
    out = _writer(tmp_path, 10, closed)
    out.add(_table(0, 5))  # one row group written, one row buffered
    out.abort()
    assert closed == []  # not fsynced, not announced
    assert out.files == [tmp_path / "f0.parquet"]
    assert _layout(out.files[0]) == [4]
    out.abort()  # twice is harmless
