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

from asyncingest.sink.parquet import FieldType, ParquetSink, SinkOptions, safe_dir_name
from asyncingest.sink.schema import BatchConverter

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


def test_a_row_group_larger_than_pyarrows_default_stays_one_group_also_when_widened(
    tmp_path: Path,
) -> None:
    """``row_group_rows`` above pyarrow's own cap (1,048,576 rows per group when
    ``row_group_size`` is not given) is still what the files hold, in the first write and in
    the rewrite that widens a file's schema at close. (~1 s: the only way to see the cap.)"""
    size = 1_100_000
    options = SinkOptions(row_group_rows=size, max_rows_per_file=2 * size, compression="none")
    sink = ParquetSink(tmp_path, "big", options)
    sink.write([{"i": i} for i in range(size)])  # one full row group: written as int64
    sink.write([{"i": 0.5}])  # widens the column to float64: the first file is rewritten
    first, second = sink.close()
    meta = pq.ParquetFile(first).metadata
    assert [meta.row_group(k).num_rows for k in range(meta.num_row_groups)] == [size]
    assert meta.schema.to_arrow_schema().field("i").type == pa.float64()
    assert pq.ParquetFile(second).metadata.num_rows == 1


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


def test_timestamps_are_read_in_their_declared_unit(tmp_path: Path) -> None:
    schema: dict[str, FieldType] = {
        "s": "timestamp",
        "ms": "timestamp_ms",
        "us": "timestamp_us",
        "ns": "timestamp_ns",
    }
    sink = ParquetSink(tmp_path, "t", SMALL, schema)
    at = dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)
    record = {
        "s": 1_700_000_000.123,
        "ms": 1_700_000_000_123,
        "us": 1_700_000_000_123_000,
        "ns": 1_700_000_000_123_000_000,
    }
    iso = dict.fromkeys(schema, "2023-11-14T22:13:20.123Z")
    assert sink.write([record, iso]) == []
    (path,) = sink.close()
    table = pq.read_table(path)
    assert table.schema.field("ms").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("ns").type == pa.timestamp("ns", tz="UTC")
    assert table.slice(0, 1).to_pylist() == [dict.fromkeys(schema, at)]
    assert table.slice(1, 1).to_pylist() == [dict.fromkeys(schema, at)]


@pytest.mark.parametrize(
    ("ftype", "value", "detail"),
    [
        ("timestamp", 1_700_000_000_123, "0001-9999 as epoch seconds; in a finer unit?"),
        ("timestamp_ms", 10**17, "outside years 0001-9999"),
        ("timestamp_us", -(10**18), "outside years 0001-9999"),
        ("timestamp_ns", 2**63, "outside 1677-09-21..2262-04-11"),
        ("timestamp_ns", "3000-01-01T00:00:00Z", "outside 1677-09-21..2262-04-11"),
        ("timestamp", float("nan"), "not a finite number"),
        ("timestamp_ms", "soon", "not an ISO-8601 timestamp"),
    ],
)
def test_an_impossible_timestamp_rejects_its_record_and_names_it(
    tmp_path: Path, ftype: FieldType, value: object, detail: str
) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL, {"id": "int64", "at": ftype})
    (rejected,) = sink.write([{"id": 1, "at": 0}, {"id": 2, "at": value}])
    assert rejected.record["id"] == 2
    assert f"field 'at': expected {ftype}, got" in rejected.reason and detail in rejected.reason
    (path,) = sink.close()
    assert pq.read_table(path).to_pylist()[0]["id"] == 1  # the writer goes on


def test_declared_schema_coerces_lossless_values(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL, {"n": "int64", "x": "float64", "s": "string"})
    assert sink.write([{"n": "42", "x": "1.5", "s": 7}, {"n": 3.0, "x": 2, "s": True}]) == []
    (path,) = sink.close()
    assert pq.read_table(path).to_pylist() == [
        {"n": 42, "x": 1.5, "s": "7"},
        {"n": 3, "x": 2.0, "s": "true"},
    ]


def test_a_partial_schema_types_its_fields_and_infers_the_others(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL, {"lap_duration": "float64", "pit": "bool"})
    records = [
        {"session_key": 9161, "lap_number": 1, "lap_duration": 91, "pit": "true", "note": None},
        {"session_key": 9161, "lap_number": 2, "lap_duration": 90.5, "pit": False, "note": "x"},
    ]
    assert sink.write(records) == []
    assert sink.dropped_fields == {}
    (path,) = sink.close()
    table = pq.read_table(path)
    assert table.schema.field("lap_duration").type == pa.float64()
    assert table.schema.field("pit").type == pa.bool_()
    assert table.schema.field("session_key").type == pa.int64()
    assert table.schema.field("note").type == pa.string()
    assert table.to_pylist() == [
        {"lap_duration": 91.0, "pit": True, "session_key": 9161, "lap_number": 1, "note": None},
        {"lap_duration": 90.5, "pit": False, "session_key": 9161, "lap_number": 2, "note": "x"},
    ]


def test_only_declared_drops_the_other_fields_and_counts_them(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL, {"id": "int64"}, columns="only_declared")
    sink.write([{"id": 1, "junk": 1}, {"id": 2, "more": "x", "junk": 2}, {"id": 3}])
    assert sink.dropped_fields == {"junk": 2, "more": 1}
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


def nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def test_a_json_value_nested_too_deep_for_json_text_rejects_only_its_record(
    tmp_path: Path,
) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL, {"id": "int64", "v": "json"})
    deep = nested(300)
    records = [{"id": 1, "v": [1, 2]}, {"id": 2, "v": deep}, {"id": 3, "v": [2**70]}]
    (rejected,) = sink.write(records)
    assert rejected.record["id"] == 2 and "field 'v'" in rejected.reason
    assert "cannot be written as JSON text" in rejected.reason
    (path,) = sink.close()
    assert pq.read_table(path).to_pylist() == [
        {"id": 1, "v": "[1,2]"},
        {"id": 3, "v": "[1180591620717411303424]"},  # beyond 64 bits: exact, not refused
    ]


def test_non_object_record_is_rejected(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    (rejected,) = sink.write([{"a": 1}, "oops"])  # type: ignore[list-item]
    assert rejected.reason == "record is not a JSON object: str 'oops'"


# -- inferred schema -------------------------------------------------------------------------


def test_inferred_types_and_nested_values_as_typed_columns(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"i": 1, "f": 1.5, "s": "a", "b": False, "d": {"x": [1, 2]}, "l": [{"y": 1}]}])
    assert dict(sink.field_types) == {
        "i": "int64",
        "f": "float64",
        "s": "string",
        "b": "bool",
        "d": ("struct", {"x": ("list", "int64")}),
        "l": ("list", ("struct", {"y": "int64"})),
    }
    (path,) = sink.close()
    assert pq.read_table(path).to_pylist() == [
        {"i": 1, "f": 1.5, "s": "a", "b": False, "d": {"x": [1, 2]}, "l": [{"y": 1}]}
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


def test_real_scalar_conflicts_are_rejected_and_the_type_stays(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    assert sink.write([{"n": 1, "s": "a"}]) == []
    rejected = sink.write([{"n": "abc"}, {"n": True}, {"s": 5}, {"n": 2, "s": "b"}])
    assert [r.reason for r in rejected] == [
        "field 'n': inferred int64 from earlier records, got str 'abc'",
        "field 'n': inferred int64 from earlier records, got bool True",
        "field 's': inferred string from earlier records, got int 5",
    ]
    assert dict(sink.field_types) == {"n": "int64", "s": "string"}
    (path,) = sink.close()
    assert pq.read_table(path).column("n").to_pylist() == [1, 2]


# -- nested values ---------------------------------------------------------------------------


def test_nested_values_widen_like_scalars(tmp_path: Path) -> None:
    """A new struct field is added, int widens to float inside a list, an empty list waits
    for its element type, a null waits; earlier rows and files are brought to the new type."""
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"id": 1, "o": {"a": 1, "xs": []}, "e": []}, {"id": 2, "o": None, "e": [None]}])
    sink.flush()  # a file with the narrower schema
    sink.write([{"id": 3, "o": {"a": 2.5, "b": "new", "xs": [1, 2.5]}, "e": [{"k": True}]}])
    assert sink.field_types["o"] == (
        "struct",
        {"a": "float64", "xs": ("list", "float64"), "b": "string"},
    )
    assert sink.field_types["e"] == ("list", ("struct", {"k": "bool"}))
    assert sink.json_fallbacks == {}
    sink.close()
    table = read_dataset(tmp_path / "t").sort_by("id")
    assert table.schema.field("o").type == pa.struct(
        [("a", pa.float64()), ("xs", pa.list_(pa.float64())), ("b", pa.string())]
    )
    assert table.to_pylist() == [
        {"id": 1, "o": {"a": 1.0, "xs": [], "b": None}, "e": []},
        {"id": 2, "o": None, "e": [None]},
        {"id": 3, "o": {"a": 2.5, "xs": [1.0, 2.5], "b": "new"}, "e": [{"k": True}]},
    ]
    schemas = {str(pq.read_schema(p)) for p in (tmp_path / "t").glob("part-*.parquet")}
    assert len(schemas) == 1


def test_nested_columns_are_queryable_by_duckdb(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "apps", SMALL)
    offer = {"offer": {"apr": 19.9, "bank": "A"}, "rank": 1}
    sink.write(
        [
            {"id": 1, "recommendations": [offer, {"offer": {"apr": 21}, "rank": 2}]},
            {"id": 2, "recommendations": []},
        ]
    )
    sink.close()
    rows = duckdb.sql(
        f"select id, recommendations[1].offer.apr, recommendations[2].offer.bank "
        f"from read_parquet('{tmp_path}/apps/*.parquet') order by id"
    ).fetchall()
    assert rows == [(1, 19.9, None), (2, None, None)]


def test_a_shape_conflict_makes_the_column_json_text_and_says_so(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"id": 1, "v": {"a": 1}, "w": 5}, {"id": 2, "v": {"a": 2}, "w": 6}])
    sink.flush()
    assert sink.write([{"id": 3, "v": 7, "w": {"x": 1}}, {"id": 4, "v": "s", "w": None}]) == []
    assert sink.field_types["v"] == "json" and sink.field_types["w"] == "json"
    assert sink.json_fallbacks == {
        "v": "int64 where an object was",
        "w": "an object where int64 was",
    }
    sink.close()
    table = read_dataset(tmp_path / "t").sort_by("id")
    assert table.schema.field("v").type == pa.string()
    assert table.column("v").to_pylist() == ['{"a":1}', '{"a":2}', "7", '"s"']
    assert table.column("w").to_pylist() == ["5", "6", '{"x":1}', None]


def test_a_declared_json_field_stays_json_text(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL, {"v": "json"})
    sink.write([{"v": {"a": [1, 2]}, "o": {"b": 1}}])
    (path,) = sink.close()
    assert pq.read_table(path).to_pylist() == [{"v": '{"a":[1,2]}', "o": {"b": 1}}]
    assert sink.json_fallbacks == {}


def test_nesting_deeper_than_the_typed_limit_falls_back_to_json_text(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    assert sink.write([{"id": 1, "v": None}, {"id": 2, "v": nested(200)}]) == []
    assert sink.field_types["v"] == "json"
    assert sink.json_fallbacks == {"v": "nested deeper than 32 levels"}
    (path,) = sink.close()
    values = pq.read_table(path).column("v").to_pylist()
    assert values[0] is None and values[1] == "[" * 200 + "0" + "]" * 200


def test_a_nested_float_column_meeting_an_int_beyond_2_53_keeps_it_exact_as_json_text(
    tmp_path: Path,
) -> None:
    """Arrow refuses an int a double cannot hold exactly (2**53 + 1) in a nested float
    column, though the kinds widen (int into float64): the column falls back to JSON text,
    with Arrow's reason, and every value stays exact (the earlier file, rewritten as text at
    close, held floats)."""
    sink = ParquetSink(tmp_path, "t", SMALL)
    big = 2**53 + 1
    assert sink.write([{"id": 1, "v": [1.5, 2]}, {"id": 2, "v": [3]}]) == []
    assert sink.field_types["v"] == ("list", "float64")
    assert sink.write([{"id": 3, "v": [0.5, big]}]) == []
    assert sink.field_types["v"] == "json"
    (why,) = sink.json_fallbacks.values()
    assert list(sink.json_fallbacks) == ["v"] and why.startswith("not typable: Integer value")
    sink.close()
    table = read_dataset(tmp_path / "t").sort_by("id")
    assert table.column("v").to_pylist() == ["[1.5,2.0]", "[3.0]", f"[0.5,{big}]"]


def test_a_resumed_sink_continues_a_json_fallback(tmp_path: Path) -> None:
    first = ParquetSink(tmp_path, "t", SMALL)
    first.write([{"v": {"a": 1}}, {"v": [1]}])
    first.close()
    second = ParquetSink(tmp_path, "t", SMALL)
    assert second.field_types == {"v": "json"}
    assert second.json_fallbacks == {"v": "a list where an object was"}
    second.write([{"v": {"b": 2}}])
    second.close()
    values = read_dataset(tmp_path / "t").column("v").to_pylist()
    assert sorted(values) == ["[1]", '{"a":1}', '{"b":2}']


# -- integers beyond int64 -------------------------------------------------------------------


def test_integers_beyond_int64_are_kept_exact_as_decimal(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"id": 1, "n": {"big": 2}}])
    sink.flush()
    big = [18446744073709551617, 18446744073709551619]
    assert sink.write([{"id": b, "n": {"big": b}} for b in big]) == []
    assert sink.field_types == {"id": "decimal", "n": ("struct", {"big": "decimal"})}
    sink.close()
    table = read_dataset(tmp_path / "t")
    assert table.schema.field("id").type == pa.decimal128(38, 0)
    ids = sorted(int(v) for v in table.column("id").to_pylist())
    assert ids == [1, *big]
    assert sorted(int(r["big"]) for r in table.column("n").to_pylist()) == [2, *big]
    got = duckdb.sql(f"select id::varchar from read_parquet('{tmp_path}/t/*.parquet')")
    assert sorted(r[0] for r in got.fetchall()) == ["1", *map(str, big)]


def test_an_integer_beyond_int64_is_never_rounded_into_a_float_column(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    sink.write([{"x": 1.5}])
    (rejected,) = sink.write([{"x": 18446744073709551617}, {"x": 2}])
    assert "would lose its value as float64" in rejected.reason
    (rejected,) = ParquetSink(tmp_path, "u", SMALL, {"x": "int64"}).write([{"x": 2**64 + 1}])
    assert "out of int64 range" in rejected.reason


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
    assert second.field_types == {"n": "int64", "meta": ("struct", {"a": "int64"})}
    assert second.write([{"n": 2.5, "meta": {"b": [1, 2]}}]) == []  # int widens to float
    second.close()
    table = ds.dataset(tmp_path / "laps", format="parquet").to_table()
    assert table.schema.field("n").type == pa.float64()
    assert sorted(table.column("n").to_pylist()) == [1.0, 2.0, 2.5]
    assert sorted(table.column("meta").to_pylist(), key=str) == [
        None,
        {"a": 1, "b": None},
        {"a": None, "b": [1, 2]},
    ]
    schemas = {str(pq.read_schema(p)) for p in (tmp_path / "laps").glob("part-*.parquet")}
    assert len(schemas) == 1


def test_files_not_written_by_asyncingest_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    pq.write_table(pa.table({"n": ["a"]}), tmp_path / "x" / "part-00000.parquet")
    sink = ParquetSink(tmp_path, "x", SinkOptions())
    sink.write([{"n": 1}])
    sink.close()
    assert pq.read_schema(tmp_path / "x" / "part-00000.parquet").field("n").type == pa.string()


def test_a_value_too_deep_for_json_rejects_its_record_and_the_column_stays_typed(
    tmp_path: Path,
) -> None:
    sink = ParquetSink(tmp_path, "t", SMALL)
    records = [{"id": 1, "v": [1]}, {"id": 2, "v": nested(300)}, {"id": 3, "v": [2]}]
    (rejected,) = sink.write(records)
    assert rejected.record["id"] == 2 and "nested deeper than 254 levels" in rejected.reason
    assert sink.field_types["v"] == ("list", "int64") and sink.json_fallbacks == {}
    (path,) = sink.close()
    assert pq.read_table(path).to_pylist() == [{"id": 1, "v": [1]}, {"id": 3, "v": [2]}]


# -- edges mutation testing found unguarded (nox -s mutants -- parquet) -----------------------


def test_sink_options_at_their_edges() -> None:
    SinkOptions(row_group_rows=1, max_rows_per_file=1)
    with pytest.raises(ValueError, match=r"^row_group_rows and max_rows_per_file must be >= 1$"):
        SinkOptions(row_group_rows=0)
    with pytest.raises(ValueError, match=r"^compression 'nope' unavailable; use one of \["):
        SinkOptions(compression="nope")


def test_a_tap_gets_each_row_group_once(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL)
    sink.tap = True
    sink.write(rows(7))
    batches = sink.take_batches()
    assert [b.num_rows for b in batches] == [3, 3]
    assert sink.take_batches() == []
    sink.close()
    assert [b.num_rows for b in sink.take_batches()] == [1]


def test_a_reserved_path_is_never_used_by_the_sink(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL)
    assert sink.reserve_path() == tmp_path / "laps" / "part-00000.parquet"
    sink.write(rows(3))
    sink.flush()
    assert sink.reserve_path() == tmp_path / "laps" / "part-00002.parquet"
    sink.write(rows(3))
    assert [p.name for p in sink.close()] == ["part-00001.parquet", "part-00003.parquet"]


def test_widening_after_a_compaction_rewrites_the_merged_file_not_the_merged_away(
    tmp_path: Path,
) -> None:
    """What ``state/compact.py`` does to a live sink: committed files merged into one (a
    reserved name), the old ones deleted, ``replaced`` told; a later widening at close
    rewrites the merged file and never opens the deleted ones."""
    first = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=10))
    first.write([{"x": 1}])
    first.flush()
    first.write([{"x": 2}])
    first.close()
    sink = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=10))  # resumed
    sink.write([{"x": 3}])
    (p2,) = sink.flush()
    old = [tmp_path / "laps" / "part-00000.parquet", tmp_path / "laps" / "part-00001.parquet", p2]
    merged = sink.reserve_path()
    table = pa.concat_tables([pq.read_table(p) for p in old])
    pq.write_table(table, merged)
    for p in old:
        p.unlink()
    sink.replaced(old, [merged], table.schema)
    sink.write([{"x": 4.5}])  # int -> float: every file of the folder is rewritten at close
    sink.close()
    result = read_dataset(tmp_path / "laps")
    assert sorted(result.column("x").to_pylist()) == [1.0, 2.0, 3.0, 4.5]
    assert pq.read_schema(merged).field("x").type == pa.float64()


def test_abort_drops_the_open_file_and_keeps_the_committed(tmp_path: Path) -> None:
    folder = tmp_path / "laps"
    sink = ParquetSink(tmp_path, "laps", SMALL)
    sink.tap = True
    sink.write(rows(3))
    sink.flush()
    sink.write(rows(7, 3))  # two row groups in an open staging file, one row buffered
    sink.abort()
    assert part_names(folder) == ["part-00000.parquet"]
    assert (sink.closed, sink.rows_pending, sink.take_batches()) == (True, 0, [])
    assert repr(sink) == (
        "ParquetSink(name='laps', current=None, buffered_rows=0, rows_written=3, files=1, "
        "fields=4, closed)"
    )
    with pytest.raises(RuntimeError, match="closed"):
        sink.write(rows(1))


def test_abort_is_quiet_when_the_disk_fails_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL)
    sink.write(rows(4))

    real_close, failed = pq.ParquetWriter.close, []

    def full_disk_once(self: pq.ParquetWriter) -> None:
        if not failed:
            failed.append(True)
            raise OSError(28, "No space left on device")
        real_close(self)

    monkeypatch.setattr(pq.ParquetWriter, "close", full_disk_once)
    sink.abort()  # the writer's close fails again: swallowed
    assert failed and sink.closed
    other = ParquetSink(tmp_path, "gone", SMALL)
    other.write(rows(4))
    for p in (tmp_path / "gone").iterdir():
        p.unlink()
    (tmp_path / "gone").rmdir()  # the folder itself is gone: nothing to clean, no error
    other.abort()
    assert other.closed


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a/b", "contains '/'"),
        ("a\\b", "contains '\\\\\\\\'"),
        ("c:", "contains ':'"),
        ("a\x7fb", "contains '\\\\x7f'"),
        ("a\x1fb", "contains '\\\\x1f'"),
        ("b/a:", "contains '/:'"),
        (".hidden", "must not start with '.' or '_' \\(path escape, or hidden from dataset"),
        ("_meta", "must not start with '.' or '_'"),
        ("x" * 201, r"^invalid folder name 'xxxxxxxxxxxxxxxxxxxx'...: longer than 200$"),
    ],
)
def test_unsafe_folder_names_are_refused_saying_why(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        safe_dir_name(name)


@pytest.mark.parametrize("name", ["x" * 200, "caf\u00e9", "a\x80b", "a.b_c-d", "Xy"])
def test_safe_folder_names_are_kept(name: str) -> None:
    assert safe_dir_name(name) == name


def test_without_a_tap_no_batches_are_kept(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL)
    sink.write(rows(7))
    sink.close()
    assert sink.take_batches() == []  # not the whole run's data held in memory


def _write_part(folder: Path, n: int, table: pa.Table) -> None:
    folder.mkdir(exist_ok=True)
    pq.write_table(table, folder / f"part-{n:05d}.parquet")


def test_a_foreign_file_does_not_hide_later_files_of_an_earlier_run(tmp_path: Path) -> None:
    folder = tmp_path / "laps"
    _write_part(folder, 0, pa.table({"other": ["not ours"]}))
    first = ParquetSink(tmp_path, "laps", SMALL)
    first.write([{"x": 1}])
    first.close()  # part-00001, ours
    again = ParquetSink(tmp_path, "laps", SMALL)
    again.write([{"x": 2.5}])  # widens x: the earlier run's file is rewritten at close
    again.close()
    assert pq.read_schema(folder / "part-00001.parquet").field("x").type == pa.float64()
    assert pq.read_table(folder / "part-00000.parquet").column_names == ["other"]


def test_the_newest_earlier_file_is_the_highest_number_not_the_last_name(tmp_path: Path) -> None:
    """``part-100000`` sorts before ``part-99999`` as text: the kinds a resumed sink continues
    from come from the file with the highest number."""
    folder = tmp_path / "laps"
    run = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=10))
    run.write([{"x": 1}])
    run.close()
    older = pq.read_table(folder / "part-00000.parquet")
    run = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=10))
    run.write([{"x": 1.5}])
    run.close()
    newer = pq.read_table(folder / "part-00001.parquet")
    for p in folder.glob("part-*.parquet"):
        p.unlink()
    _write_part(folder, 99_999, older)  # a run killed before close: not unified yet
    _write_part(folder, 100_000, newer)
    resumed = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=10))
    assert resumed.reserve_path().name == "part-100001.parquet"
    resumed.write([{"x": 7}])
    resumed.close()
    for p in folder.glob("part-*.parquet"):
        assert pq.read_schema(p).field("x").type == pa.float64(), p.name


def _one_file(tmp_path: Path, name: str, records: list[dict[str, Any]]) -> pa.Table:
    sink = ParquetSink(tmp_path / "elsewhere", name, SMALL)
    assert sink.write(records) == []
    (path,) = sink.close()
    return pq.read_table(path)


def test_a_new_partition_continues_the_kinds_of_the_seed_folders_newest_file(
    tmp_path: Path,
) -> None:
    """An incremental run's new partition (an empty folder) given the last increment's
    partition as ``seed_from`` starts from the kinds and JSON fallbacks of that folder's file
    with the highest number (not the last name as text); the seed folder is never written."""
    older = _one_file(tmp_path, "older", [{"id": 1, "score": 1}])
    newer = _one_file(tmp_path, "newer", [{"id": 2, "score": 1.5, "v": 1}, {"id": 3, "v": {}}])
    seed = tmp_path / "contacts" / "increment=1"
    seed.parent.mkdir()
    _write_part(seed, 99_999, older)
    _write_part(seed, 100_000, newer)
    before = {p.name: p.read_bytes() for p in seed.iterdir()}
    sink = ParquetSink(tmp_path / "contacts", "increment=2", SMALL, seed_from=seed)
    kinds = {"id": "int64", "score": "float64", "v": "json"}
    assert sink.field_types == kinds
    assert sink.json_fallbacks == {"v": "an object where int64 was"}
    assert sink.write([{"id": 4, "score": 2, "v": 5}]) == []  # an int in a float64 column
    (path,) = sink.close()
    assert path == tmp_path / "contacts" / "increment=2" / "part-00000.parquet"
    assert pq.read_table(path).to_pylist() == [{"id": 4, "score": 2.0, "v": "5"}]
    assert sink.field_types == kinds
    assert {p.name: p.read_bytes() for p in seed.iterdir()} == before


def test_a_seed_folder_without_a_file_of_ours_seeds_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _write_part(tmp_path / "foreign", 0, pa.table({"other": [1.5]}))
    (tmp_path / "foreign" / "notes.parquet").write_bytes(b"not a part file")
    for seed in (tmp_path / "missing", tmp_path / "empty", tmp_path / "foreign"):
        sink = ParquetSink(tmp_path / "out", seed.name, SMALL, seed_from=seed)
        assert sink.field_types == {}, seed.name
        sink.write([{"other": 1}])
        assert sink.field_types == {"other": "int64"}, seed.name


def test_a_resumed_partition_continues_its_own_files_not_the_seed(tmp_path: Path) -> None:
    seed = tmp_path / "contacts" / "increment=1"
    seed.parent.mkdir()
    _write_part(seed, 0, _one_file(tmp_path, "seed", [{"score": 1.5}]))
    first = ParquetSink(tmp_path / "contacts", "increment=2", SMALL)
    first.write([{"n": 1}])
    first.close()
    resumed = ParquetSink(tmp_path / "contacts", "increment=2", SMALL, seed_from=seed)
    assert resumed.field_types == {"n": "int64"}


def test_a_new_sink_is_open_with_its_tap_off(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "laps", SMALL)
    assert (sink.closed, sink.tap) == (False, False)
    assert sink.closed is False and sink.tap is False  # bools, as annotated, not just falsy
    sink.close()
    assert sink.closed is True


def test_a_rewrite_at_close_keeps_the_configured_compression(tmp_path: Path) -> None:
    folder = tmp_path / "laps"
    sink = ParquetSink(tmp_path, "laps", SinkOptions(compression="gzip", row_group_rows=1))
    sink.write([{"x": 1}])
    sink.flush()
    sink.write([{"x": 1.5}])
    sink.close()
    for p in sorted(folder.glob("part-*.parquet")):
        meta = pq.ParquetFile(p).metadata
        assert meta.row_group(0).column(0).compression == "GZIP", p.name


def test_every_file_not_yet_widened_is_rewritten_whatever_comes_before_it(
    tmp_path: Path,
) -> None:
    """A compaction of the newer files puts a file already of the final schema before older
    ones in the rewrite order: the older ones are still rewritten."""
    folder = tmp_path / "laps"
    first = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=10))
    first.write([{"x": 1}])
    first.close()  # part-00000: x int
    sink = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=10))
    sink.write([{"x": 2}])
    sink.flush()  # part-00001: x int
    sink.write([{"x": 2.5}])
    (widened,) = sink.flush()  # part-00002: x float
    merged = sink.reserve_path()
    table = pq.read_table(widened)
    pq.write_table(table, merged)
    widened.unlink()
    sink.replaced([widened], [merged], table.schema)
    sink.close()
    for p in sorted(folder.glob("part-*.parquet")):
        assert pq.read_schema(p).field("x").type == pa.float64(), p.name
    assert sorted(read_dataset(folder).column("x").to_pylist()) == [1.0, 2.0, 2.5]


# -- schema edges mutation testing found unguarded (nox -s mutants -- schema) -----------------


def test_a_batch_of_nothing_but_non_objects_is_refused_record_by_record() -> None:
    table, rejected = BatchConverter().convert([5, "x"])  # type: ignore[list-item]
    assert table.num_rows == 0
    assert [(r.record, r.reason) for r in rejected] == [
        (5, "record is not a JSON object: int 5"),
        ("x", "record is not a JSON object: str 'x'"),
    ]


def test_records_with_no_field_at_all_are_refused_as_they_came() -> None:
    table, rejected = BatchConverter().convert([{}])
    assert table.num_rows == 0 and [r.record for r in rejected] == [{}]


def test_every_reason_of_a_record_is_given() -> None:
    conv = BatchConverter({"a": "int64", "b": "bool"})
    _, rejected = conv.convert([{"a": "x", "b": 3}])
    (only,) = rejected
    assert only.reason == (
        "field 'a': expected int64, got str 'x'; field 'b': expected bool, got int 3"
    )


def test_dropped_fields_are_counted_per_value_across_batches() -> None:
    conv = BatchConverter({"id": "int64"}, "only_declared")
    conv.convert([{"id": 1, "x": 1}, {"id": 2, "x": 2}, {"id": 3}])
    conv.convert([{"id": 4, "x": 3}])
    assert conv.dropped_fields == {"x": 3}


def test_a_big_integer_then_a_float_in_the_first_batch_makes_a_float_column() -> None:
    table, rejected = BatchConverter().convert([{"x": 2**70}, {"x": 1.5}])
    assert table.schema.field("x").type == pa.float64()
    assert table.column("x").to_pylist() == [1.5]
    assert [r.record for r in rejected] == [{"x": 2**70}]  # would lose its value as float64


def test_a_decimal_column_refuses_floats_later() -> None:
    conv = BatchConverter()
    conv.convert([{"x": 2**70}])
    table, rejected = conv.convert([{"x": 1.5}, {"x": 3}])
    assert table.schema.field("x").type == pa.decimal128(38, 0)
    assert table.column("x").to_pylist() == [3]
    assert [r.record for r in rejected] == [{"x": 1.5}]
    assert "kept exact: no floats" in rejected[0].reason


def test_a_value_of_no_supported_type_is_refused_naming_it() -> None:
    table, rejected = BatchConverter().convert([{"x": b"raw"}, {"x": None}])
    assert table.num_rows == 1
    assert [(r.record, r.reason) for r in rejected] == [
        (
            {"x": b"raw"},
            "field 'x': inferred null from earlier records, got bytes b'raw' (unsupported value)",
        )
    ]


def test_a_json_fallback_column_stays_json_when_objects_come_later() -> None:
    conv = BatchConverter()
    conv.convert([{"x": {"a": 1}}, {"x": [1]}])  # object and list: JSON text
    assert conv.json_fallbacks == {"x": "a list where an object was"}
    table, rejected = conv.convert([{"x": {"b": 2}}])
    assert not rejected
    assert conv.types["x"] == "json"
    assert conv.json_fallbacks == {"x": "a list where an object was"}  # the first reason stays
    assert table.column("x").to_pylist() == ['{"b":2}']


def test_empty_objects_inside_values_are_stored_as_null_not_the_whole_value() -> None:
    table, _ = BatchConverter().convert([{"x": {"a": {}, "b": 1}}, {"x": {"a": {}, "b": 2}}])
    assert table.column("x").to_pylist() == [{"a": None, "b": 1}, {"a": None, "b": 2}]


def test_text_that_becomes_json_later_is_rewritten_as_json_text_in_earlier_files(
    tmp_path: Path,
) -> None:
    """A string column that falls back to JSON text has the same Arrow type: only the kinds in
    the metadata tell them apart, so the earlier file must still be rewritten (as JSON)."""
    sink = ParquetSink(tmp_path, "laps", SinkOptions(row_group_rows=1))
    sink.write([{"x": "abc"}])
    sink.flush()
    sink.write([{"x": {"a": 1}}])
    sink.close()
    values = sorted(read_dataset(tmp_path / "laps").column("x").to_pylist())
    assert values == ['"abc"', '{"a":1}']


def test_batch_converter_repr() -> None:
    assert repr(BatchConverter({"a": "int64"}, "only_declared")) == (
        "BatchConverter(only declared, fields=1, declared=1, json_fallbacks=0, dropped=0)"
    )
    assert repr(BatchConverter()) == (
        "BatchConverter(declared+inferred, fields=0, declared=0, json_fallbacks=0, dropped=0)"
    )


def test_a_converter_refuses_what_it_cannot_honour() -> None:
    with pytest.raises(ValueError, match=r"^columns='only_declared' needs a schema$"):
        BatchConverter(columns="only_declared")
    with pytest.raises(ValueError, match=r"^field 'a': unknown type 'nope'$"):
        BatchConverter({"a": "nope"})  # type: ignore[dict-item]
