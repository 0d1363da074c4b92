"""Schemas end to end: partial schemas, timestamp units, typed nested columns, integers beyond
int64 and poisonous nesting, through a real run against a loopback server, read back with
pyarrow and DuckDB, and what the run report says about them."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

import asyncingest
from asyncingest import config_from_dict
from asyncingest.engine.engine import Engine
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.operate.progress import schema_lines

from .conftest import cli, read_records

FAST_RETRY = {"max_attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02}


class Pages:
    """A loopback server answering each path with the bytes (and status) set for it."""

    def __init__(self) -> None:
        self.bodies: dict[str, tuple[int, bytes]] = {}

    def set(self, path: str, body: Any, status: int = 200) -> None:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        self.bodies[path] = (status, raw)

    async def handle(self, request: web.Request) -> web.Response:
        key = request.path_qs if request.path_qs in self.bodies else request.path
        status, body = self.bodies.get(key, (404, b"{}"))
        return web.Response(status=status, body=body, content_type="application/json")


@pytest.fixture
async def pages() -> AsyncIterator[tuple[Pages, str]]:
    server = Pages()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", server.handle)
    async with TestServer(app, host="127.0.0.1") as ts:
        yield server, str(ts.make_url("/"))


def config(url: str, out: Path, *endpoints: dict[str, Any]) -> Any:
    return config_from_dict(
        {
            "api": {"base_url": url, "retry": FAST_RETRY},
            "output": {"directory": str(out)},
            "endpoints": list(endpoints),
        }
    )


def dead_letters(out: Path, endpoint: str) -> list[dict[str, Any]]:
    path = out / "_dead_letter" / endpoint / "dead-letters.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def nested(levels: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


# -- 1. a partial schema never drops fields ---------------------------------------------------


LAPS = {
    "name": "laps",
    "path": "/v1/laps",
    "params": {"session_key": "{session_key}"},
    "for_each": {"endpoint": "sessions", "bind": ["session_key"], "copy": ["meeting_key"]},
    "records": "results",
    "pagination": {"type": "offset", "limit": 100, "total_path": "total"},
    "primary_key": ["session_key", "driver_number", "lap_number"],
    "schema": {"lap_duration": "float64", "is_pit_out_lap": "bool"},  # the README's example
}
SESSIONS = {"name": "sessions", "path": "/v1/sessions", "primary_key": "session_key"}


async def test_a_partial_schema_keeps_keys_and_copied_parent_fields(tmp_path: Path) -> None:
    async with MockAPI(MockSettings.small()) as api:
        result = await asyncingest.run(config(api.url, tmp_path, SESSIONS, LAPS))
        expected = api.dataset.laps
        meeting_of = {s["session_key"]: s["meeting_key"] for s in api.dataset.sessions}
    assert result.exit_code == 0 and result.endpoint("laps").dropped_fields == {}
    table = ds.dataset(tmp_path / "laps").to_table()
    assert table.schema.field("lap_duration").type == pa.float64()
    assert table.schema.field("session_key").type == pa.int64()
    assert table.schema.field("meeting_key").type == pa.int64()
    got = {(r["session_key"], r["driver_number"], r["lap_number"]): r for r in table.to_pylist()}
    assert len(got) == len(expected)
    for want in expected:
        row = got[(want["session_key"], want["driver_number"], want["lap_number"])]
        assert row["meeting_key"] == meeting_of[want["session_key"]]
        for field, value in want.items():
            assert row[field] == value, (field, row[field], value)


async def test_only_declared_drops_other_fields_and_the_report_counts_them(
    tmp_path: Path,
) -> None:
    laps = {
        **LAPS,
        "columns": "only_declared",
        "schema": {
            "session_key": "int64",
            "driver_number": "int64",
            "lap_number": "int64",
            "lap_duration": "float64",
        },
    }
    async with MockAPI(MockSettings.small()) as api:
        result = await asyncingest.run(config(api.url, tmp_path, SESSIONS, laps))
        n = len(api.dataset.laps)
    assert result.exit_code == 0
    table = ds.dataset(tmp_path / "laps").to_table()
    assert table.column_names == ["session_key", "driver_number", "lap_number", "lap_duration"]
    dropped = result.endpoint("laps").dropped_fields
    assert dropped["meeting_key"] == n and dropped["st_speed"] > 0  # copied fields count too
    (report,) = (tmp_path / "_asyncingest" / "runs").glob("*.json")
    assert orjson.loads(report.read_bytes())["result"]["endpoints"][1]["dropped_fields"] == dropped
    (line,) = schema_lines(result)
    assert line.startswith("laps: dropped (not in its schema, columns: only_declared): ")
    assert f"meeting_key x{n:,}" in line


def test_only_declared_needs_the_primary_key_declared() -> None:
    laps = {**LAPS, "columns": "only_declared"}
    with pytest.raises(Exception, match=r"primary_key fields .* only_declared would drop them"):
        config("http://x", Path("o"), SESSIONS, laps)


# -- 2. timestamps in their unit ----------------------------------------------------------------


async def test_epoch_milliseconds_are_read_as_such_or_dead_lettered_never_a_crash(
    tmp_path: Path, pages: tuple[Pages, str]
) -> None:
    server, url = pages
    ms = 1_700_000_000_123
    server.set("/events", [{"id": 1, "at": ms}, {"id": 2, "at": "2023-11-14T22:13:20.123Z"}])
    as_ms = {"name": "as_ms", "path": "/events", "schema": {"at": "timestamp_ms"}}
    as_s = {"name": "as_s", "path": "/events", "schema": {"at": "timestamp"}}
    result = await asyncingest.run(config(url, tmp_path, as_ms, as_s))
    at = dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)
    assert [r["at"] for r in read_records(tmp_path, "as_ms")] == [at, at]
    assert [r["id"] for r in read_records(tmp_path, "as_s")] == [2]
    assert result.exit_code == 1 and result.endpoint("as_s").records_rejected == 1
    (entry,) = dead_letters(tmp_path, "as_s")
    assert entry["record"] == {"id": 1, "at": ms}
    assert "field 'at': expected timestamp, got int 1700000000123" in entry["reason"]


# -- 3. nested data is typed --------------------------------------------------------------------


APPLICATIONS = [
    {
        "id": 1,
        "applicant": {"name": "Ada", "age": 36},
        "recommendations": [
            {"rank": 1, "offer": {"apr": 19.9, "bank": "A"}},
            {"rank": 2, "offer": {"apr": 21, "bank": "B", "promo": True}},
        ],
    },
    {"id": 2, "applicant": {"name": "Bo"}, "recommendations": []},
]


async def test_nested_records_become_struct_and_list_columns_duckdb_can_query(
    tmp_path: Path, pages: tuple[Pages, str]
) -> None:
    server, url = pages
    server.set("/apps", APPLICATIONS)
    result = await asyncingest.run(config(url, tmp_path, {"name": "apps", "path": "/apps"}))
    assert result.exit_code == 0 and result.endpoint("apps").json_fallbacks == {}
    schema = ds.dataset(tmp_path / "apps").schema
    offer = pa.struct([("apr", pa.float64()), ("bank", pa.string()), ("promo", pa.bool_())])
    assert schema.field("recommendations").type == pa.list_(
        pa.struct([("rank", pa.int64()), ("offer", offer)])
    )
    assert schema.field("applicant").type == pa.struct([("name", pa.string()), ("age", pa.int64())])
    rows = duckdb.sql(
        "select id, recommendations[1].offer.apr, recommendations[2].offer.promo, "
        f"applicant.name from read_parquet('{tmp_path}/apps/*.parquet') order by id"
    ).fetchall()
    assert rows == [(1, 19.9, True, "Ada"), (2, None, None, "Bo")]


async def test_a_shape_conflict_falls_back_to_json_text_and_the_report_says_so(
    tmp_path: Path, pages: tuple[Pages, str]
) -> None:
    server, url = pages
    server.set("/apps", [{"id": 1, "meta": {"a": 1}}, {"id": 2, "meta": 5}])
    result = await asyncingest.run(config(url, tmp_path, {"name": "apps", "path": "/apps"}))
    assert result.exit_code == 0
    assert result.endpoint("apps").json_fallbacks == {"meta": "int64 where an object was"}
    assert [r["meta"] for r in read_records(tmp_path, "apps")] == ['{"a":1}', "5"]
    assert schema_lines(result) == [
        "apps: written as JSON text instead of typed columns: meta (int64 where an object was)"
    ]


async def test_a_resumed_run_widens_the_nested_schema_of_earlier_files(
    tmp_path: Path, pages: tuple[Pages, str]
) -> None:
    """The first run writes page 1 (struct {a: int}) and dead-letters page 2; retried later,
    page 2 brings a new struct field and a float: the earlier file is rewritten, one schema."""
    server, url = pages
    endpoint = {
        "name": "items",
        "path": "/items",
        "records": "results",
        "pagination": {"type": "page", "size": 2, "page_param": "page", "size_param": None},
        "primary_key": "id",
    }
    server.set("/items?page=1", {"results": [{"id": 1, "o": {"a": 1, "xs": []}}, {"id": 2}]})
    server.set("/items?page=2", {}, status=503)
    cfg = config(url, tmp_path, endpoint)
    first = await asyncingest.run(cfg)
    assert first.exit_code == 1 and first.endpoint("items").records_written == 2
    server.set("/items?page=2", {"results": [{"id": 3, "o": {"a": 2.5, "b": "x", "xs": [1]}}]})
    server.set("/items?page=3", {"results": []})
    again = await Engine(cfg, retry_failed=True).run()
    assert again.ok, [e.first_errors for e in again.endpoints]
    files = sorted((tmp_path / "items").glob("part-*.parquet"))
    # One schema: the earlier file was rewritten to it (so the end-of-run compaction could
    # merge the two small files; files of different schemas are never merged).
    assert files and len({str(ds.dataset(f).schema) for f in files}) == 1
    table = ds.dataset(tmp_path / "items").to_table().sort_by("id")
    assert table.schema.field("o").type == pa.struct(
        [("a", pa.float64()), ("xs", pa.list_(pa.int64())), ("b", pa.string())]
    )
    assert table.column("o").to_pylist() == [
        {"a": 1.0, "xs": [], "b": None},
        None,
        {"a": 2.5, "xs": [1], "b": "x"},
    ]


# -- 4. integers beyond int64 -------------------------------------------------------------------


async def test_ids_beyond_64_bits_stay_distinct_and_exact(
    tmp_path: Path, pages: tuple[Pages, str]
) -> None:
    server, url = pages
    body = b'[{"id": 18446744073709551617, "n": 1}, {"id": 18446744073709551619, "n": 2}]'
    server.set("/ids", body)
    result = await asyncingest.run(
        config(url, tmp_path, {"name": "ids", "path": "/ids", "primary_key": "id"})
    )
    assert result.exit_code == 0
    table = ds.dataset(tmp_path / "ids").to_table()
    assert table.schema.field("id").type == pa.decimal128(38, 0)
    assert sorted(int(v) for v in table.column("id").to_pylist()) == [
        18446744073709551617,
        18446744073709551619,
    ]


async def test_a_parent_id_beyond_64_bits_reaches_its_children_exactly(
    tmp_path: Path, pages: tuple[Pages, str]
) -> None:
    server, url = pages
    big = 18446744073709551617
    server.set("/parents", f'[{{"id": {big}}}]'.encode())
    server.set(f"/children/{big}", [{"n": 1}])
    parents = {"name": "parents", "path": "/parents", "primary_key": "id"}
    children = {
        "name": "children",
        "path": "/children/{id}",
        "for_each": {"endpoint": "parents", "bind": ["id"], "copy": {"parent": "id"}},
    }
    result = await asyncingest.run(config(url, tmp_path, parents, children))
    assert result.exit_code == 0, [e.first_errors for e in result.endpoints]
    (row,) = read_records(tmp_path, "children")
    assert int(row["parent"]) == big


# -- 5. poisonous nesting -----------------------------------------------------------------------


@pytest.mark.parametrize("levels", [300, 1_000])
async def test_a_record_nested_too_deep_is_dead_lettered_as_truncated_text(
    tmp_path: Path, pages: tuple[Pages, str], levels: int
) -> None:
    server, url = pages
    deep = b"[" * levels + b"0" + b"]" * levels
    server.set("/p", b'[{"id": 1, "v": [1]}, {"id": 2, "v": ' + deep + b'}, {"id": 3, "v": [2]}]')
    endpoint = {"name": "p", "path": "/p", "primary_key": "id"}
    result = await asyncingest.run(config(url, tmp_path, endpoint))
    assert result.exit_code == 1 and result.endpoint("p").records_rejected == 1
    assert sorted(r["id"] for r in read_records(tmp_path, "p")) == [1, 3]
    (entry,) = dead_letters(tmp_path, "p")
    assert entry["kind"] == "record" and entry["record_truncated"] is True
    assert isinstance(entry["record"], str) and entry["record"].startswith('{"id":2,"v":[[[')
    assert "nested deeper than 254 levels" in entry["reason"]
    again = await asyncingest.run(config(url, tmp_path, endpoint))  # no crash on resume either
    assert again.note == "already complete"


async def test_json_nested_100000_levels_is_a_dead_lettered_request_not_a_crash(
    tmp_path: Path, pages: tuple[Pages, str]
) -> None:
    server, url = pages
    server.set("/deep", b"[" * 100_000 + b"]" * 100_000)
    server.set("/ok", [{"id": 1}])
    deep = {"name": "deep", "path": "/deep"}
    result = await asyncingest.run(config(url, tmp_path, deep, {"name": "ok", "path": "/ok"}))
    assert result.exit_code == 1 and result.endpoint("deep").failed_requests == 1
    assert result.endpoint("ok").records_written == 1
    (entry,) = dead_letters(tmp_path, "deep")
    assert entry["kind"] == "request" and "malformed JSON" in entry["reason"]


# -- what the user sees -----------------------------------------------------------------------


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_validate_and_the_end_of_run_summary_name_what_the_schema_did(
    tmp_path: Path, pages: tuple[Pages, str]
) -> None:
    server, url = pages
    server.set("/apps", [{"id": 1, "meta": {"a": 1}, "x": 1}, {"id": 2, "meta": 5, "x": 2}])
    path = tmp_path / "job.yaml"
    slim = {"name": "slim", "path": "/apps", "schema": {"id": "int64"}, "columns": "only_declared"}
    path.write_text(
        yaml.safe_dump(
            {
                "api": {"base_url": url},
                "output": {"directory": str(tmp_path / "out")},
                "endpoints": [{"name": "apps", "path": "/apps"}, slim],
            }
        )
    )
    code, out, err = await cli("validate", str(path))
    assert code == 0, err
    assert "columns: all inferred" in out
    assert "columns: only id int64 (other fields dropped, counted in the run report)" in out
    code, out, err = await cli("run", str(path))
    assert code == 0, err
    text = out + err
    assert (
        "apps: written as JSON text instead of typed columns: meta (int64 where an object was)"
        in text
    )
    assert "slim: dropped (not in its schema, columns: only_declared): meta x2, x x2" in text
