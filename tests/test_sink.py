"""The Parquet sink, as a specification: files, atomicity, schemas, rejections, names."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from asyncingest._sink import FieldType, ParquetSink, SinkOptions, safe_dir_name

SMALL = SinkOptions(row_group_rows=3, max_rows_per_file=1_000)


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"n{i}", "score": i / 2, "ok": i % 2 == 0} for i in range(start, n)]


def read_dataset(directory: Path) -> pa.Table:
    return ds.dataset(directory).to_table()


def read_duckdb(directory: Path) -> duckdb.DuckDBPyRelation:
    relation = duckdb.sql(f"select * from read_parquet('{directory}/**/*.parquet')")
    assert relation is not None
    return relation


def duckdb_types(directory: Path) -> list[str]:
    return [str(t) for t in read_duckdb(directory).types]


def part_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- round trip and layout -------------------------------------------------------------------


def test_round_trip_equals_input(tmp_path: Path) -> None:
    records = [*rows(10), {"id": None, "name": None, "score": None, "ok": None}]
    sink = ParquetSink(tmp_path, "laps", SMALL)
    assert sink.write(records) == []
    files = sink.close()
    assert files == [tmp_path / "laps" / "part-00000.parquet"]
    assert pq.read_table(files[0]).to_pylist() == records
    assert sink.rows_written == 11


def test_row_groups_have_the_configured_size(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=4))
    for start in range(0, 10, 3):  # batches that do not align with row groups
        sink.write(rows(min(start + 3, 10), start))
    (path,) = sink.close()
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 3
    assert [meta.row_group(i).num_rows for i in range(3)] == [4, 4, 2]


def test_rotation_at_max_rows_per_file(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=3, max_rows_per_file=5))
    sink.write(rows(12))
    files = sink.close()
    assert [p.name for p in files] == [f"part-0000{i}.parquet" for i in range(3)]
    assert [pq.ParquetFile(p).metadata.num_rows for p in files] == [5, 5, 2]
    groups = [pq.ParquetFile(files[0]).metadata.row_group(i).num_rows for i in range(2)]
    assert groups == [3, 2]  # the last row group is cut to fit the file
    assert read_dataset(tmp_path / "laps").num_rows == 12


def test_files_are_committed_only_at_flush_or_full(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL)
    sink.write(rows(7))
    assert sink.files == [] and sink.rows_written == 0 and sink.rows_pending == 7
    assert sink.flush() == [tmp_path / "laps" / "part-00000.parquet"]
    assert sink.flush() == []
    sink.write(rows(2))
    assert sink.close() == [tmp_path / "laps" / f"part-0000{i}.parquet" for i in range(2)]
    assert sink.rows_written == 9


def test_numbering_continues_after_existing_files(tmp_path: Path) -> None:
    folder = tmp_path / "laps"
    folder.mkdir()
    for name in ("part-00000.parquet", "part-00006.parquet"):
        pq.write_table(pa.table({"id": [1]}), folder / name)
    sink = ParquetSink(tmp_path, "laps", SMALL)
    sink.write([{"id": 2}])
    assert sink.close() == [folder / "part-00007.parquet"]


def test_write_after_close_raises(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL)
    sink.close()
    with pytest.raises(RuntimeError, match="closed"):
        sink.write(rows(1))


def test_repr_shows_state(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL)
    sink.write(rows(4))
    assert repr(sink) == (
        "ParquetSink(name='laps', current='part-00000.parquet', buffered_rows=1, "
        "rows_written=0, files=0, fields=4)"
    )


# -- atomic visibility -----------------------------------------------------------------------


def test_file_in_progress_is_invisible_to_readers(tmp_path: Path) -> None:
    folder = tmp_path / "laps"
    sink = ParquetSink(tmp_path, "laps", SMALL)
    sink.write(rows(3))
    sink.flush()  # one committed file
    sink.write(rows(9, 3))  # two row groups written to the next, unfinished file
    assert part_names(folder) == [".part-00001.parquet.inprogress", "part-00000.parquet"]
    assert read_dataset(folder).num_rows == 3
    assert len(read_duckdb(folder).fetchall()) == 3
    sink.close()
    assert part_names(folder) == ["part-00000.parquet", "part-00001.parquet"]
    assert len(read_duckdb(folder).fetchall()) == 9


def test_stale_staging_files_are_removed_on_start(tmp_path: Path) -> None:
    folder = tmp_path / "laps"
    killed = ParquetSink(tmp_path, "laps", SMALL)
    killed.write(rows(3))  # never closed: as if the process died
    stale = folder / ".part-00000.parquet.inprogress"
    assert stale.exists()
    unrelated = folder / "notes.txt"
    unrelated.write_text("kept")
    sink = ParquetSink(tmp_path, "laps", SMALL)
    assert sink.removed_stale == (stale,)
    assert part_names(folder) == ["notes.txt"]
    sink.write(rows(1))
    assert sink.close() == [folder / "part-00000.parquet"]


# -- declared schema -------------------------------------------------------------------------

SCHEMA: dict[str, FieldType] = {
    "name": "string",
    "n": "int64",
    "x": "float64",
    "flag": "bool",
    "at": "timestamp",
    "day": "date",
    "extra": "json",
}


def test_declared_schema_types(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL, SCHEMA)
    record = {
        "name": "a",
        "n": 1,
        "x": 2,
        "flag": True,
        "at": "2024-03-02T15:03:01.5Z",
        "day": "2024-03-02",
        "extra": {"k": [1, None]},
    }
    assert sink.write([record, {"at": "2024-03-02T17:03:01+02:00"}, {"at": 1_700_000_000}]) == []
    (path,) = sink.close()
    table = pq.read_table(path)
    assert table.schema == pa.schema(
        [
            ("name", pa.string()),
            ("n", pa.int64()),
            ("x", pa.float64()),
            ("flag", pa.bool_()),
            ("at", pa.timestamp("us", tz="UTC")),
            ("day", pa.date32()),
            ("extra", pa.string()),
        ]
    )
    first, second, third = table.to_pylist()
    utc = dt.UTC
    assert first == {
        "name": "a",
        "n": 1,
        "x": 2.0,
        "flag": True,
        "at": dt.datetime(2024, 3, 2, 15, 3, 1, 500_000, tzinfo=utc),
        "day": dt.date(2024, 3, 2),
        "extra": '{"k":[1,null]}',
    }
    assert second["at"] == dt.datetime(2024, 3, 2, 15, 3, 1, tzinfo=utc)
    assert second["name"] is None  # missing fields are null
    assert third["at"] == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=utc)


def test_declared_schema_coerces_lossless_values(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL, {"n": "int64", "x": "float64", "s": "string"})
    assert sink.write([{"n": "42", "x": "1.5", "s": 7}, {"n": 3.0, "x": 2, "s": True}]) == []
    (path,) = sink.close()
    assert pq.read_table(path).to_pylist() == [
        {"n": 42, "x": 1.5, "s": "7"},
        {"n": 3, "x": 2.0, "s": "true"},
    ]


def test_fields_outside_declared_schema_are_dropped_and_named(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL, {"id": "int64"})
    sink.write([{"id": 1, "junk": 1}, {"id": 2, "more": "x", "junk": 2}])
    assert sink.dropped_fields == {"junk", "more"}
    (path,) = sink.close()
    assert pq.read_table(path).column_names == ["id"]


def test_unconvertible_value_rejects_only_that_record(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL, {"lap": "int64", "lap_duration": "float64"})
    good = {"lap": 1, "lap_duration": 91.2}
    bad = {"lap": 2, "lap_duration": "abc"}
    (rejected,) = sink.write([good, bad, {"lap": 3}])
    assert rejected.record is bad
    assert rejected.reason == "field 'lap_duration': expected float64, got str 'abc'"
    (path,) = sink.close()
    assert pq.read_table(path).column("lap").to_pylist() == [1, 3]


@pytest.mark.parametrize(
    ("ftype", "value", "reason"),
    [
        ("int64", 1.5, "field 'v': expected int64, got float 1.5"),
        ("int64", True, "field 'v': expected int64, got bool True"),
        ("int64", 2**63, "field 'v': expected int64, got int 9223372036854775808 (out of int64"),
        ("bool", 1, "field 'v': expected bool, got int 1"),
        ("string", {"a": 1}, "field 'v': expected string, got dict {'a': 1} (use type json"),
        ("timestamp", "yesterday", "expected timestamp, got str 'yesterday' (not an ISO-8601"),
        ("date", "2024-13-01", "field 'v': expected date, got str '2024-13-01' (not a YYYY"),
        ("string", ["x" * 100], "field 'v': expected string, got list ['xxxxxxx"),
    ],
)
def test_rejection_reasons_name_field_type_and_value(
    tmp_path: Path, ftype: FieldType, value: object, reason: str
) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL, {"v": ftype})
    (rejected,) = sink.write([{"v": value}])
    assert reason in rejected.reason
    assert len(rejected.reason) < 150  # long values are truncated


def test_a_json_value_orjson_cannot_encode_rejects_only_its_record(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL, {"id": "int64", "v": "json"})
    records = [{"id": 1, "v": [1, 2]}, {"id": 2, "v": [2**70]}, {"id": 3, "v": None}]
    (rejected,) = sink.write(records)
    assert rejected.record == {"id": 2, "v": [2**70]} and "field 'v'" in rejected.reason
    (path,) = sink.close()
    assert pq.read_table(path).to_pylist() == [{"id": 1, "v": "[1,2]"}, {"id": 3, "v": None}]


def test_non_object_record_is_rejected(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    (rejected,) = sink.write([{"a": 1}, "oops"])  # type: ignore[list-item]
    assert rejected.reason == "record is not a JSON object: str 'oops'"


# -- inferred schema -------------------------------------------------------------------------


def test_inferred_types_and_nested_values_as_json_text(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"i": 1, "f": 1.5, "s": "a", "b": False, "d": {"x": [1, 2]}, "l": [{"y": 1}]}])
    assert dict(sink.field_types) == {
        "i": "int64",
        "f": "float64",
        "s": "string",
        "b": "bool",
        "d": "json",
        "l": "json",
    }
    (path,) = sink.close()
    assert pq.read_table(path).to_pylist() == [
        {"i": 1, "f": 1.5, "s": "a", "b": False, "d": '{"x":[1,2]}', "l": '[{"y":1}]'}
    ]


def test_first_batch_nulls_stay_undecided(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"id": i, "v": None} for i in range(4)])  # a row group is already written
    assert sink.field_types["v"] is None
    sink.write([{"id": 9, "v": 2.5}])
    assert sink.field_types["v"] == "float64"
    sink.close()
    table = read_dataset(tmp_path / "t")
    assert table.schema.field("v").type == pa.float64()
    assert sorted(table.column("v").to_pylist(), key=str) == [2.5, None, None, None, None]
    assert duckdb_types(tmp_path / "t") == ["BIGINT", "DOUBLE"]


def test_field_that_stays_null_is_a_string_column(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"id": 1, "v": None}])
    (path,) = sink.close()
    assert pq.read_schema(path).field("v").type == pa.string()


def test_int_then_float_widens_whole_folder(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"v": i} for i in range(5)])
    sink.flush()  # part-00000 is committed as int64
    sink.write([{"v": 0.5}, {"v": 7}])
    assert [p.name for p in sink.close()] == ["part-00000.parquet", "part-00001.parquet"]
    for path in sink.files:
        assert pq.read_schema(path).field("v").type == pa.float64()
    table = read_dataset(folder)
    assert table.schema.field("v").type == pa.float64()
    assert sorted(table.column("v").to_pylist()) == [0, 0.5, 1, 2, 3, 4, 7]
    assert duckdb_types(folder) == ["DOUBLE"]
    assert pq.ParquetFile(folder / "part-00000.parquet").metadata.num_row_groups == 2  # kept


def test_widening_inside_an_open_file_rotates(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"v": i} for i in range(3)])  # row group written, file still open
    sink.write([{"v": 1.5}] * 3)
    assert len(sink.files) == 1  # the int64 file was committed; floats go to a new one
    sink.close()
    assert read_dataset(tmp_path / "t").schema.field("v").type == pa.float64()


def test_field_appearing_later_is_null_in_earlier_rows(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"id": 1}, {"id": 2}, {"id": 3}])
    sink.flush()
    sink.write([{"id": 4, "new": "x"}])
    sink.close()
    table = read_dataset(folder).sort_by("id")
    assert table.column_names == ["id", "new"]
    assert table.column("new").to_pylist() == [None, None, None, "x"]
    assert [row[1] for row in read_duckdb(folder).order("id").fetchall()] == table.column(
        "new"
    ).to_pylist()


def test_real_conflicts_are_rejected_and_the_type_stays(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    assert sink.write([{"n": 1, "s": "a", "d": {"k": 1}}]) == []
    rejected = sink.write(
        [
            {"n": "abc"},
            {"n": True},
            {"n": {"k": 1}},
            {"s": 5},
            {"d": "flat"},
            {"n": 2, "s": "b", "d": [1]},
        ]
    )
    assert [r.reason for r in rejected] == [
        "field 'n': inferred int64 from earlier records, got str 'abc'",
        "field 'n': inferred int64 from earlier records, got bool True",
        "field 'n': inferred int64 from earlier records, got dict {'k': 1}",
        "field 's': inferred string from earlier records, got int 5",
        "field 'd': inferred json from earlier records, got str 'flat'",
    ]
    assert dict(sink.field_types) == {"n": "int64", "s": "string", "d": "json"}
    (path,) = sink.close()
    assert pq.read_table(path).column("n").to_pylist() == [1, 2]


def test_bool_never_becomes_int(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    (rejected,) = sink.write([{"b": True}, {"b": 1}, {"b": False}])
    assert rejected.reason == "field 'b': inferred bool from earlier records, got int 1"
    (rejected,) = sink.write([{"n": 1}, {"n": True}])
    assert rejected.reason == "field 'n': inferred int64 from earlier records, got bool True"
    (path,) = sink.close()
    table = pq.read_table(path)
    assert table.schema.field("b").type == pa.bool_()
    assert table.schema.field("n").type == pa.int64()


# -- options and folder names ----------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "snappy", "zstd", "gzip"])
def test_compression_is_applied(tmp_path: Path, codec: str) -> None:
    sink = ParquetSink(tmp_path, "t", SinkOptions(compression=codec))
    sink.write(rows(3))
    (path,) = sink.close()
    expected = "UNCOMPRESSED" if codec == "none" else codec.upper()
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == expected


@pytest.mark.parametrize(
    "options",
    [{"compression": "bz2"}, {"row_group_rows": 0}, {"max_rows_per_file": 0}],
)
def test_invalid_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SinkOptions(**options)


@pytest.mark.parametrize(
    "name", ["../x", "/abs", "a/b", "..", ".", "", "a\\b", "x\x00", "C:x", ".hidden", "_meta"]
)
def test_safe_dir_name_rejects_escapes(name: str) -> None:
    with pytest.raises(ValueError, match="invalid folder name"):
        safe_dir_name(name)


@pytest.mark.parametrize("name", ["laps", "car-data", "v2.sessions", "Pit Stops", "a..b", "ü"])
def test_safe_dir_name_accepts_normal_names(name: str) -> None:
    assert safe_dir_name(name) == name


def test_sink_refuses_an_escaping_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ParquetSink(tmp_path, "../out", SMALL)
    assert list(tmp_path.parent.glob("out")) == []


def test_a_later_run_continues_the_inferred_schema_and_widens_earlier_files(
    tmp_path: Path,
) -> None:
    """A resumed run writes into a folder an earlier run left: its inferred types start from
    the types recorded in those files, and widening rewrites them, so one schema remains."""
    first = ParquetSink(tmp_path, "laps", SinkOptions())
    first.write([{"n": 1, "meta": {"a": 1}}, {"n": 2, "meta": None}])
    first.close()
    second = ParquetSink(tmp_path, "laps", SinkOptions())
    assert second.field_types == {"n": "int64", "meta": "json"}
    assert second.write([{"n": 2.5, "meta": {"b": [1, 2]}}]) == []  # int widens to float
    second.close()
    table = ds.dataset(tmp_path / "laps", format="parquet").to_table()
    assert table.schema.field("n").type == pa.float64()
    assert sorted(table.column("n").to_pylist()) == [1.0, 2.0, 2.5]
    schemas = {str(pq.read_schema(p)) for p in (tmp_path / "laps").glob("part-*.parquet")}
    assert len(schemas) == 1


def test_files_not_written_by_asyncingest_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    pq.write_table(pa.table({"n": ["a"]}), tmp_path / "x" / "part-00000.parquet")
    sink = ParquetSink(tmp_path, "x", SinkOptions())
    sink.write([{"n": 1}])
    sink.close()
    assert pq.read_schema(tmp_path / "x" / "part-00000.parquet").field("n").type == pa.string()
