"""The current table (``merge: latest``, ``asyncingest.state.current``): one row per key, the
newest version, against a brute-force "latest per key" over random increments; deletes, full
refreshes, schema widening, the file layout, what readers see through the link, and re-runs.

The SIGKILL-at-each-crash-point tests are in ``test_current_crash.py`` (they spawn processes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncingest.errors import StateCorrupt
from asyncingest.sink.parquet import ParquetSink, SinkOptions
from asyncingest.state.compact import CompactOptions
from asyncingest.state.current import (
    CurrentResult,
    current_path,
    current_version,
    rebuild_current,
)

OPTIONS = SinkOptions(compression="snappy", row_group_rows=3, max_rows_per_file=7)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def write_increment(
    out: Path, endpoint: str, n: int, records: Sequence[Mapping[str, Any]]
) -> list[Path]:
    """Increment ``n``'s files as the engine's sink writes them (``increment=<n>/``)."""
    if not records:
        return []
    sink = ParquetSink(out / endpoint, f"increment={n}", OPTIONS)
    assert sink.write(records) == []
    return sink.close()


def rebuild(
    out: Path,
    n: int,
    files: Sequence[Path],
    *,
    cursor_type: str = "timestamp",
    cursor_field: str | None = "updatedAt",
    replace: bool = False,
    options: Any = OPTIONS,
    key: tuple[str, ...] = ("id",),
) -> CurrentResult:
    return rebuild_current(
        out,
        "items",
        n,
        files,
        primary_key=key,
        cursor_field=cursor_field,
        cursor_type=cursor_type,
        deleted_field="deleted",
        replace=replace,
        options=options,
    )


def current_rows(out: Path, endpoint: str = "items") -> list[dict[str, Any]]:
    table = ds.dataset(current_path(out, endpoint), format="parquet").to_table()
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def iso(t: datetime, offset_hours: int = 0) -> str:
    return t.astimezone(timezone(timedelta(hours=offset_hours))).isoformat()


# -- against brute force ------------------------------------------------------------------------


class LatestPerKey:
    """The reference: every version in arrival order, the latest per key by (cursor, arrival);
    a full refresh forgets everything before it."""

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered  # False: no cursor, arrival decides
        self.best: dict[Any, tuple[Any, dict[str, Any]]] = {}

    def add(self, records: list[dict[str, Any]], cursors: list[int], replace: bool) -> None:
        if replace:
            self.best = {}
        for record, cursor in zip(records, cursors, strict=True):
            old = self.best.get(record["id"])
            if old is None or not self.ordered or cursor >= old[0]:
                self.best[record["id"]] = (cursor, record)

    def live(self) -> list[dict[str, Any]]:
        rows = [r for _, r in self.best.values() if not r["deleted"]]
        return sorted(rows, key=lambda r: r["id"])


version = st.tuples(
    st.integers(0, 12),  # key
    st.integers(0, 6),  # cursor (hours after T0)
    st.integers(-5, 5),  # the offset the timestamp is written with
    st.booleans(),  # deleted
    st.booleans(),  # carries the column the later increments added
)
increments = st.lists(
    st.tuples(st.lists(version, max_size=9), st.booleans()), min_size=1, max_size=5
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(increments=increments, cursor_type=st.sampled_from(["timestamp", "epoch_ms", "token"]))
def test_the_current_table_is_the_latest_version_per_key(
    increments: list[tuple[list[tuple[int, int, int, bool, bool]], bool]], cursor_type: str
) -> None:
    """After every increment, the table equals the reference, whatever the order versions come
    in (older ones late, deletes of keys never seen, the same key twice in one increment, a
    full refresh), the time zones the cursor is written in, and a column that appears later."""
    model = LatestPerKey(ordered=cursor_type != "token")
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        for n, (versions, replace) in enumerate(increments, start=1):
            records, cursors = [], []
            for i, (key, hours, offset, deleted, extra) in enumerate(versions):
                t = T0 + timedelta(hours=hours)
                cursor: Any = iso(t, offset) if cursor_type == "timestamp" else hours * 3_600_000
                record = {"id": f"k{key:02d}", "updatedAt": cursor, "deleted": deleted, "n": n}
                record["row"] = i
                if extra and n > 1:
                    record["extra"] = {"score": float(hours)}
                records.append(record)
                cursors.append(hours)
            files = write_increment(out, "items", n, records)
            result = rebuild(
                out,
                n,
                files,
                cursor_type=cursor_type,
                cursor_field=None if cursor_type == "token" else "updatedAt",
                replace=replace,
            )
            model.add(records, cursors, replace)
            expected = model.live()
            got = current_rows(out)
            assert [(r["id"], r["n"], r["row"]) for r in got] == [
                (r["id"], r["n"], r["row"]) for r in expected
            ]
            assert all(r.get("extra") == e.get("extra") for r, e in zip(got, expected, strict=True))
            assert result.rows == len(expected) and current_version(out, "items") == n
            sizes = [pq.read_metadata(p).num_rows for p in _parts(out)]
            assert all(s <= OPTIONS.max_rows_per_file for s in sizes)
            assert len(sizes) == max(1, -(-len(expected) // OPTIONS.max_rows_per_file))


def _parts(out: Path, endpoint: str = "items") -> list[Path]:
    return sorted(current_path(out, endpoint).glob("*.parquet"))


# -- the rules, one at a time -------------------------------------------------------------------


def test_timestamps_compare_as_instants_whatever_their_offset(tmp_path: Path) -> None:
    first = write_increment(
        tmp_path,
        "items",
        1,
        [{"id": "a", "updatedAt": "2024-01-01T12:00:00+02:00", "deleted": False, "v": 1}],
    )
    rebuild(tmp_path, 1, first)
    # 11:00Z is later than 12:00+02:00 (10:00Z) though it sorts first as text; and 09:30Z is
    # older than what is there, written with nanoseconds.
    second = write_increment(
        tmp_path,
        "items",
        2,
        [
            {"id": "a", "updatedAt": "2024-01-01T11:00:00Z", "deleted": False, "v": 2},
            {"id": "a", "updatedAt": "2024-01-01T09:30:00.123456789Z", "deleted": False, "v": 3},
        ],
    )
    result = rebuild(tmp_path, 2, second)
    assert [r["v"] for r in current_rows(tmp_path)] == [2]
    assert (result.upserted, result.stale) == (1, 0)
    third = write_increment(
        tmp_path,
        "items",
        3,
        [{"id": "a", "updatedAt": "2024-01-01T10:59:59.999Z", "deleted": False, "v": 4}],
    )
    assert rebuild(tmp_path, 3, third).stale == 1
    assert [r["v"] for r in current_rows(tmp_path)] == [2]


def test_a_declared_timestamp_column_and_integer_cursors(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path / "items", "increment=1", OPTIONS, schema={"at": "timestamp"})
    sink.write([{"id": 1, "at": "2024-01-02T00:00:00Z", "deleted": 0, "v": 1}])
    files = sink.close()
    assert pq.read_schema(files[0]).field("at").type == pa.timestamp("us", tz="UTC")
    rebuild(tmp_path, 1, files, cursor_field="at", key=("id",))
    sink = ParquetSink(tmp_path / "items", "increment=2", OPTIONS, schema={"at": "timestamp"})
    sink.write([{"id": 1, "at": "2024-01-01T00:00:00Z", "deleted": 0, "v": 2}])
    assert rebuild(tmp_path, 2, sink.close(), cursor_field="at").stale == 1
    # Integers as digit text and as numbers compare numerically ("9" < "10").
    third = write_increment(tmp_path, "ints", 1, [{"id": 1, "seq": "10", "deleted": 0, "v": 3}])
    rebuild_current(
        tmp_path,
        "ints",
        1,
        third,
        primary_key=("id",),
        cursor_field="seq",
        cursor_type="integer",
        deleted_field=None,
        replace=False,
        options=OPTIONS,
    )
    fourth = write_increment(tmp_path, "ints", 2, [{"id": 1, "seq": "9", "deleted": 0, "v": 4}])
    result = rebuild_current(
        tmp_path,
        "ints",
        2,
        fourth,
        primary_key=("id",),
        cursor_field="seq",
        cursor_type="integer",
        deleted_field=None,
        replace=False,
        options=OPTIONS,
    )
    assert result.stale == 1 and [r["v"] for r in current_rows(tmp_path, "ints")] == [3]


def test_a_delete_removes_the_key_and_an_older_version_cannot_bring_it_back(
    tmp_path: Path,
) -> None:
    rows = [{"id": f"k{i}", "updatedAt": iso(T0), "deleted": False} for i in range(5)]
    rebuild(tmp_path, 1, write_increment(tmp_path, "items", 1, rows))
    gone = {"id": "k2", "updatedAt": iso(T0 + timedelta(hours=2)), "deleted": True}
    never = {"id": "k9", "updatedAt": iso(T0), "deleted": True}  # a key never seen
    result = rebuild(tmp_path, 2, write_increment(tmp_path, "items", 2, [gone, never]))
    assert (result.rows, result.deleted, result.tombstones) == (4, 2, 2)
    assert [r["id"] for r in current_rows(tmp_path)] == ["k0", "k1", "k3", "k4"]
    # A lagging page serves k2 as it was an hour before its delete: still deleted.
    late = {"id": "k2", "updatedAt": iso(T0 + timedelta(hours=1)), "deleted": False}
    assert rebuild(tmp_path, 3, write_increment(tmp_path, "items", 3, [late])).stale == 1
    assert "k2" not in [r["id"] for r in current_rows(tmp_path)]
    # Restored later than the delete: back.
    back = {"id": "k2", "updatedAt": iso(T0 + timedelta(hours=3)), "deleted": False}
    result = rebuild(tmp_path, 4, write_increment(tmp_path, "items", 4, [back]))
    assert "k2" in [r["id"] for r in current_rows(tmp_path)] and result.tombstones == 1
    # Tombstones are hidden from readers (DuckDB's glob and pyarrow.dataset alike).
    glob = f"{current_path(tmp_path, 'items')}/*.parquet"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(5,)]


def test_deleted_flags_written_as_text_or_numbers(tmp_path: Path) -> None:
    flags = ["true", "false", "0", "no", "", "yes", "deleted", None]
    rows = [{"id": f"k{i}", "updatedAt": iso(T0), "deleted": f} for i, f in enumerate(flags)]
    rebuild(tmp_path, 1, write_increment(tmp_path, "items", 1, rows))
    assert [r["deleted"] for r in current_rows(tmp_path)] == ["false", "0", "no", "", None]
    rows = [{"id": f"k{i}", "updatedAt": iso(T0), "deleted": f} for i, f in enumerate([0, 2])]
    files = write_increment(tmp_path, "numbers", 1, rows)
    rebuild_current(
        tmp_path,
        "numbers",
        1,
        files,
        primary_key=("id",),
        cursor_field="updatedAt",
        cursor_type="timestamp",
        deleted_field="deleted",
        replace=False,
        options=OPTIONS,
    )
    assert [r["id"] for r in current_rows(tmp_path, "numbers")] == ["k0"]


def test_a_full_refresh_keeps_only_what_the_increment_holds(tmp_path: Path) -> None:
    rows = [{"id": f"k{i}", "updatedAt": iso(T0), "deleted": i == 0, "old": 1} for i in range(6)]
    rebuild(tmp_path, 1, write_increment(tmp_path, "items", 1, rows))
    refresh = [
        {"id": "k1", "updatedAt": iso(T0 - timedelta(days=1)), "deleted": False},
        {"id": "k0", "updatedAt": iso(T0 - timedelta(days=1)), "deleted": False},
    ]
    result = rebuild(tmp_path, 2, write_increment(tmp_path, "items", 2, refresh), replace=True)
    # Older cursors, but the refresh is the truth: k0's delete is forgotten, k2..k5 are gone,
    # and so is the column only the old rows had.
    assert [r["id"] for r in current_rows(tmp_path)] == ["k0", "k1"]
    assert (result.replaced, result.stale, result.tombstones) == (True, 0, 0)
    assert "old" not in pq.read_schema(_parts(tmp_path)[0]).names


def test_the_schema_widens_across_increments(tmp_path: Path) -> None:
    first = [{"id": f"k{i}", "updatedAt": iso(T0), "deleted": False, "n": i} for i in range(4)]
    first[0]["props"] = {"a": 1}
    rebuild(tmp_path, 1, write_increment(tmp_path, "items", 1, first))
    later = T0 + timedelta(hours=1)
    second = [
        {"id": "k1", "updatedAt": iso(later), "deleted": False, "n": 1.5, "props": {"b": "x"}},
        {"id": "k9", "updatedAt": iso(later), "deleted": False, "n": 2, "new": [1, 2]},
    ]
    rebuild(tmp_path, 2, write_increment(tmp_path, "items", 2, second))
    schema = pq.read_schema(_parts(tmp_path)[0])
    assert schema.field("n").type == pa.float64()  # int64 widened
    assert schema.field("props").type == pa.struct([("a", pa.int64()), ("b", pa.string())])
    assert schema.field("new").type == pa.list_(pa.int64())
    assert len({pq.read_schema(p) for p in _parts(tmp_path)}) == 1
    got = {r["id"]: r for r in current_rows(tmp_path)}
    assert got["k0"]["props"] == {"a": 1, "b": None} and got["k0"]["new"] is None
    assert got["k1"]["n"] == 1.5 and got["k1"]["props"] == {"a": None, "b": "x"}
    assert got["k2"]["n"] == 2.0 and got["k9"]["new"] == [1, 2]
    # A conflict no widening resolves (text where numbers were) makes the column JSON text.
    third = [{"id": "k3", "updatedAt": iso(later), "deleted": False, "n": "many"}]
    rebuild(tmp_path, 3, write_increment(tmp_path, "items", 3, third))
    got = {r["id"]: r for r in current_rows(tmp_path)}
    assert (got["k3"]["n"], got["k1"]["n"]) == ('"many"', "1.5")


def test_a_string_inside_a_struct_survives_a_wider_struct(tmp_path: Path) -> None:
    """The sink's unify-at-close (and the current table's union) conform a struct column to one
    with more fields: its string children are data, not the undecided placeholder."""
    sink = ParquetSink(tmp_path, "items", OPTIONS)
    sink.write([{"id": 1, "p": {"b": "x", "j": None}}])
    sink.flush()
    sink.write([{"id": 2, "p": {"c": 1}}])
    sink.close()
    rows = sorted(pq.read_table(tmp_path / "items").to_pylist(), key=lambda r: r["id"])
    assert [r["p"] for r in rows] == [
        {"b": "x", "j": None, "c": None},
        {"b": None, "j": None, "c": 1},
    ]


def test_files_are_max_rows_per_file_not_one_per_increment(tmp_path: Path) -> None:
    options = CompactOptions("zstd", row_group_rows=4, max_rows_per_file=10, min_rows_per_file=5)
    for n in range(1, 8):
        rows = [{"id": f"k{n}-{i}", "updatedAt": iso(T0), "deleted": False} for i in range(4)]
        result = rebuild(tmp_path, n, write_increment(tmp_path, "items", n, rows), options=options)
    assert result.rows == 28 and result.files == 3
    sizes = [pq.read_metadata(p).num_rows for p in _parts(tmp_path)]
    assert sizes == [10, 10, 8]
    meta = pq.read_metadata(_parts(tmp_path)[0])
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4, 2]
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_a_composite_and_dotted_primary_key(tmp_path: Path) -> None:
    def row(a: int, b: str, h: int, v: int) -> dict[str, Any]:
        when = iso(T0 + timedelta(hours=h))
        return {"k": {"a": a, "b": b}, "id": f"{a}{b}", "updatedAt": when, "deleted": 0, "v": v}

    first = [row(1, "x", 0, 1), row(1, "y", 0, 1), row(2, "x", 0, 1)]
    rebuild(tmp_path, 1, write_increment(tmp_path, "items", 1, first), key=("k.a", "k.b"))
    second = [row(1, "y", 1, 2), row(2, "y", 1, 2)]
    rebuild(tmp_path, 2, write_increment(tmp_path, "items", 2, second), key=("k.a", "k.b"))
    assert [(r["id"], r["v"]) for r in current_rows(tmp_path)] == [
        ("1x", 1),
        ("1y", 2),
        ("2x", 1),
        ("2y", 2),
    ]


# -- publication --------------------------------------------------------------------------------


def test_readers_open_the_table_through_the_link(tmp_path: Path) -> None:
    rows = [{"id": f"k{i}", "updatedAt": iso(T0), "deleted": False} for i in range(12)]
    rebuild(tmp_path, 1, write_increment(tmp_path, "items", 1, rows))
    link = current_path(tmp_path, "items")
    assert link.is_symlink() and os.readlink(link) == ".items_current.v1/data"  # relative
    assert ds.dataset(link, format="parquet").count_rows() == 12
    assert pq.read_table(link).num_rows == 12
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{link}/*.parquet')").fetchall() == [
        (12,)
    ]
    polars = pytest.importorskip("polars")
    assert polars.scan_parquet(f"{link}/*.parquet").collect().height == 12
    assert polars.read_parquet(link).height == 12


def test_a_rerun_of_a_published_version_returns_its_figures_and_cleans_up(
    tmp_path: Path,
) -> None:
    rows = [{"id": f"k{i}", "updatedAt": iso(T0), "deleted": False} for i in range(3)]
    for n in (1, 2, 3):
        files = write_increment(tmp_path, "items", n, rows)
        result = rebuild(tmp_path, n, files)
    # Versions 1 was deleted, 2 is kept (a reader may still be in it), 3 is published.
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [".items_current.v2", ".items_current.v3"]
    assert rebuild(tmp_path, 3, files) == result
    with pytest.raises(ValueError, match="already at increment 3"):
        rebuild(tmp_path, 2, files)


def test_an_increment_without_files_republishes_the_table(tmp_path: Path) -> None:
    rows = [{"id": f"k{i}", "updatedAt": iso(T0), "deleted": False} for i in range(3)]
    rebuild(tmp_path, 1, write_increment(tmp_path, "items", 1, rows))
    result = rebuild(tmp_path, 2, [])
    assert (result.version, result.rows, result.upserted) == (2, 3, 0)
    assert current_version(tmp_path, "items") == 2


def test_a_first_increment_without_rows_publishes_an_empty_table_every_reader_opens(
    tmp_path: Path,
) -> None:
    result = rebuild(tmp_path, 1, [])
    assert (result.rows, result.files) == (0, 1)
    link = current_path(tmp_path, "items")
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{link}/*.parquet')").fetchall() == [(0,)]
    assert ds.dataset(link, format="parquet").schema.names == ["id"]
    rows = [{"id": 7, "updatedAt": iso(T0), "deleted": False}]
    rebuild(tmp_path, 2, write_increment(tmp_path, "items", 2, rows))
    assert pq.read_schema(_parts(tmp_path)[0]).field("id").type == pa.int64()  # decided now
    assert [r["id"] for r in current_rows(tmp_path)] == [7]


def test_a_folder_or_a_dangling_link_in_the_tables_place_is_reported(tmp_path: Path) -> None:
    assert current_version(tmp_path, "items") is None
    (tmp_path / "items_current").mkdir()
    with pytest.raises(StateCorrupt, match="should be a link"):
        current_version(tmp_path, "items")
    (tmp_path / "items_current").rmdir()
    os.symlink(".items_current.v4", tmp_path / "items_current")
    with pytest.raises(StateCorrupt, match="not a complete version"):
        rebuild(tmp_path, 5, [])


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cursor_type"):
        rebuild(tmp_path, 1, [], cursor_type="date")
    with pytest.raises(ValueError, match="primary_key"):
        rebuild(tmp_path, 1, [], key=())
    files = write_increment(tmp_path, "items", 1, [{"x": 1}])
    with pytest.raises(ValueError, match="primary_key field 'id'"):
        rebuild(tmp_path, 1, files)
    assert current_version(tmp_path, "items") is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
