"""``union_schema``: one schema for files of different schemas (the incremental current table,
where increments that widened differently meet), and the kinds it gives columns of files
asyncingest did not write (``_kind_of_arrow``). Every table must conform to the union."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from asyncingest.sink.schema import (
    FALLBACKS_KEY,
    TYPES_KEY,
    BatchConverter,
    conform,
    fallbacks_of,
    kinds_of,
    same_schema,
    union_schema,
)


def table(*records: dict[str, Any]) -> pa.Table:
    """What a sink writes for ``records``: its kinds (and fallbacks) in the metadata."""
    converted, rejected = BatchConverter().convert(list(records))
    assert rejected == []
    return converted


def united(*tables: pa.Table) -> tuple[pa.Schema, list[list[dict[str, Any]]]]:
    """The union of the tables' schemas, and each table's rows conformed to it."""
    schema = union_schema([t.schema for t in tables])
    return schema, [conform(t, schema).to_pylist() for t in tables]


def test_one_schema_unites_to_itself_undecided_json_and_nested_kept() -> None:
    one = table(
        {"id": 1, "raw": None, "v": 1, "tags": ["a"], "addr": {"city": "x"}},
        {"id": 2, "raw": None, "v": {"a": 1}, "tags": [], "addr": None},
    )
    assert kinds_of(one.schema) == {
        "id": "int64",
        "raw": None,  # undecided: a string placeholder, not a string column
        "v": "json",  # JSON text, stored as a string column
        "tags": {"list": "string"},
        "addr": {"struct": {"city": "string"}},
    }
    schema = union_schema([one.schema])
    assert same_schema(schema, one.schema)
    assert schema.metadata == one.schema.metadata
    assert fallbacks_of(schema) == {"v": "an object where int64 was"}


def test_int64_widens_to_float64_in_either_order() -> None:
    ints, floats = table({"v": 1}), table({"v": 2.5})
    for pair in ((ints, floats), (floats, ints)):
        schema, rows = united(*pair)
        assert schema.field("v").type == pa.float64()
        assert kinds_of(schema) == {"v": "float64"} and fallbacks_of(schema) == {}
        assert sorted(r["v"] for part in rows for r in part) == [1.0, 2.5]


def test_int64_widens_to_decimal_exactly() -> None:
    big = 2**64 + 1
    ints, decimals = table({"v": 1}), table({"v": big})
    assert kinds_of(decimals.schema) == {"v": "decimal"}
    for pair in ((ints, decimals), (decimals, ints)):
        schema, rows = united(*pair)
        assert schema.field("v").type == pa.decimal128(38, 0)
        assert sorted(int(r["v"]) for part in rows for r in part) == [1, big]


def test_fields_of_every_schema_first_seen_first() -> None:
    a = table({"id": 1, "a": "x"})
    b = table({"b": True, "id": 2, "c": 1.5})
    schema, rows = united(a, b)
    assert schema.names == ["id", "a", "b", "c"]
    assert kinds_of(schema) == {"id": "int64", "a": "string", "b": "bool", "c": "float64"}
    assert rows == [
        [{"id": 1, "a": "x", "b": None, "c": None}],
        [{"id": 2, "a": None, "b": True, "c": 1.5}],
    ]


def test_an_undecided_column_takes_the_kind_of_the_other_schema() -> None:
    nulls, ints = table({"v": None}), table({"v": 3})
    for pair in ((nulls, ints), (ints, nulls)):
        schema, rows = united(*pair)
        assert kinds_of(schema) == {"v": "int64"}
        assert sorted((r["v"] for part in rows for r in part), key=str) == [3, None]


def test_struct_members_and_list_elements_are_united() -> None:
    a = table({"addr": {"city": "x", "n": 1}, "tags": [1], "later": []})
    b = table({"addr": {"zip": 7, "n": 1.5}, "tags": [2.5], "later": ["t"]})
    schema, rows = united(a, b)
    assert kinds_of(schema) == {
        "addr": {"struct": {"city": "string", "n": "float64", "zip": "int64"}},
        "tags": {"list": "float64"},
        "later": {"list": "string"},  # an empty list's element type was still undecided
    }
    assert rows == [
        [{"addr": {"city": "x", "n": 1.0, "zip": None}, "tags": [1.0], "later": []}],
        [{"addr": {"city": None, "n": 1.5, "zip": 7}, "tags": [2.5], "later": ["t"]}],
    ]


def test_a_conflict_makes_the_column_json_text_with_the_reason() -> None:
    ints, text = table({"id": 1, "v": 1}), table({"id": 2, "v": "x"})
    schema, rows = united(ints, text)
    assert kinds_of(schema) == {"id": "int64", "v": "json"}
    assert fallbacks_of(schema) == {"v": "string where int64 was"}
    assert schema.field("v").type == pa.string()
    assert rows == [[{"id": 1, "v": "1"}], [{"id": 2, "v": '"x"'}]]


def test_json_text_absorbs_and_its_recorded_reason_is_kept() -> None:
    fallen = table({"v": 1}, {"v": {"a": 1}})  # this run's column fell back to JSON text
    text = table({"v": "x"})  # a plain string column: not JSON text
    schema, rows = united(fallen, text)
    assert kinds_of(schema) == {"v": "json"}
    assert fallbacks_of(schema) == {"v": "an object where int64 was"}
    assert [[r["v"] for r in part] for part in rows] == [["1", '{"a":1}'], ['"x"']]
    assert FALLBACKS_KEY in schema.metadata and TYPES_KEY in schema.metadata


def test_no_fallback_no_fallback_metadata() -> None:
    schema = union_schema([table({"v": 1}).schema, table({"v": 2.5}).schema])
    assert set(schema.metadata) == {TYPES_KEY}


# -- files asyncingest did not write (no kinds in their metadata) ----------------------------


FOREIGN = pa.schema(
    [
        ("i", pa.int64()),
        ("f", pa.float64()),
        ("b", pa.bool_()),
        ("s", pa.string()),
        ("d", pa.decimal128(38, 0)),
        ("tu", pa.timestamp("us", tz="UTC")),
        ("tn", pa.timestamp("ns", tz="UTC")),
        ("day", pa.date32()),
        ("z", pa.null()),
        ("st", pa.struct([("a", pa.int64()), ("l", pa.list_(pa.string()))])),
        ("l", pa.list_(pa.float64())),
        ("i32", pa.int32()),  # not a type asyncingest writes: JSON text
    ]
)


def test_a_foreign_files_columns_get_the_kind_of_their_arrow_type() -> None:
    schema = union_schema([FOREIGN])
    assert kinds_of(schema) == {
        "i": "int64",
        "f": "float64",
        "b": "bool",
        "s": "string",
        "d": "decimal",
        "tu": "timestamp_us",
        "tn": "timestamp_ns",
        "day": "date",
        "z": None,
        "st": {"struct": {"a": "int64", "l": {"list": "string"}}},
        "l": {"list": "float64"},
        "i32": "json",
    }
    assert fallbacks_of(schema) == {}
    foreign = pa.table(
        {
            "i": [1],
            "f": [0.5],
            "b": [True],
            "s": ["x"],
            "d": pa.array([2**70], pa.decimal128(38, 0)),
            "tu": pa.array([1], pa.timestamp("us", tz="UTC")),
            "tn": pa.array([1000], pa.timestamp("ns", tz="UTC")),
            "day": pa.array([1], pa.date32()),
            "z": pa.nulls(1),
            "st": [{"a": 1, "l": ["q"]}],
            "l": [[1.5]],
            "i32": pa.array([3], pa.int32()),
        },
        schema=FOREIGN,
    )
    assert conform(foreign, schema).to_pylist() == [{**foreign.to_pylist()[0], "i32": "3"}]


def test_a_foreign_file_meets_one_of_ours() -> None:
    """The kinds of the foreign columns unite with the recorded ones: a struct with a struct,
    a list with a list, int64 with float64, and an unknown type (JSON text) absorbs."""
    ours = table({"st": {"zip": 7}, "l": [1], "i": 0.5, "i32": 4})
    foreign = pa.table(
        {
            "st": [{"a": 1}],
            "l": pa.array([[2]], pa.list_(pa.int64())),
            "i": [3],
            "i32": pa.array([5], pa.int32()),
        }
    )
    assert kinds_of(foreign.schema) is None
    for pair in ((ours, foreign), (foreign, ours)):
        schema = union_schema([t.schema for t in pair])
        assert kinds_of(schema) == {
            "st": {"struct": {"zip": "int64", "a": "int64"}},
            "l": {"list": "int64"},
            "i": "float64",
            "i32": "json",
        }
        assert fallbacks_of(schema) == {}
    schema, rows = united(ours, foreign)
    assert rows == [
        [{"st": {"zip": 7, "a": None}, "l": [1], "i": 0.5, "i32": "4"}],
        [{"st": {"zip": None, "a": 1}, "l": [2], "i": 3.0, "i32": "5"}],
    ]


@pytest.mark.parametrize("kind", [pa.int64(), pa.struct([("a", pa.int64())])])
def test_a_foreign_null_column_takes_the_other_kind(kind: pa.DataType) -> None:
    schema = union_schema([pa.schema([("v", pa.null())]), pa.schema([("v", kind)])])
    assert schema.field("v").type == kind
