"""Incremental runs (issue #14): cursor values, the incremental config and its errors, windows
in requests, and increments against the bundled mock API, whose CRM records change between runs
(``Dataset.edit``/``archive``/``create`` on its mock clock): three increments with changes in
between, a SIGKILL in the middle of one, ``--full-refresh``, token cursors, bounded backfills,
and the partitions read as one dataset by pyarrow.dataset, DuckDB and polars.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest
import yaml

import asyncingest
from asyncingest.cli.main import main
from asyncingest.config.cursor import CursorError, CursorKind, format_timestamp, infer_type
from asyncingest.config.loading import config_from_dict
from asyncingest.core.cursor import CursorMax, bind_window
from asyncingest.errors import ConfigError
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.state.checkpoint import load_state

from .conftest import FAST_RETRY, run_cli

CONTACTS = "/crm/v3/objects/contacts"
ENGAGEMENTS = "/crm/v3/objects/engagements"
PAGE = 50


# -- cursor values --------------------------------------------------------------------------------


def test_timestamps_with_zones_compare_as_utc_instants_and_format_back_with_z() -> None:
    kind = CursorKind("timestamp")
    a = kind.parse("2024-01-01T10:00:00+02:00")
    b = kind.parse("2024-01-01T08:00:00Z")
    c = kind.parse("2024-01-01T08:00:00")  # naive text is UTC
    assert a == b == c
    assert kind.parse("2024-01-01T08:00:00.001Z") > b
    assert kind.to_json(a) == "2024-01-01T08:00:00Z"
    assert kind.to_json(kind.parse("2024-01-01T08:00:00.120Z")) == "2024-01-01T08:00:00.120Z"
    assert kind.to_json(kind.parse("2024-01-01T08:00:00.000123Z")) == "2024-01-01T08:00:00.000123Z"
    assert kind.to_json(kind.parse(datetime(2024, 1, 1, tzinfo=UTC))) == "2024-01-01T00:00:00Z"
    assert kind.to_json(kind.back(a, 300)) == "2024-01-01T07:55:00Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00Z"
    with pytest.raises(CursorError, match="not an ISO 8601"):
        kind.parse("yesterday")
    with pytest.raises(CursorError, match="epoch_s or epoch_ms"):
        kind.parse(1_700_000_000)


def test_epoch_integer_and_token_cursors() -> None:
    s, ms, n, tok = (CursorKind(t) for t in ("epoch_s", "epoch_ms", "integer", "token"))
    assert s.parse("1700000000") == 1_700_000_000
    assert s.back(1_700_000_000, 60) == 1_699_999_940
    assert ms.back(1_700_000_000_000, 60) == 1_699_999_940_000  # the lag is seconds
    assert s.to_text(s.parse(1.5)) == "1.5"
    assert s.to_text(s.parse(2.0)) == "2"
    assert n.back(n.parse("41"), 3) == 38  # a count
    assert n.newer(5, 7) == 7 and n.newer(None, 5) == 5 and n.newer(5, None) == 5
    assert tok.newer("a", "b") == "b" and tok.back("a", 0) == "a" and not tok.ordered
    assert n.try_parse("x") is None and n.try_parse(True) is None
    with pytest.raises(CursorError):
        ms.parse(float("nan"))
    assert infer_type("2024-01-01T00:00:00Z") == "timestamp"
    assert infer_type(1_700_000_000) is None  # seconds, milliseconds or a count: ambiguous


def test_the_high_water_mark_is_the_highest_readable_cursor_since_the_last_take() -> None:
    spec = _endpoint(incremental=_timestamps()).incremental
    assert spec is not None
    mark = CursorMax(spec)
    mark.fold(
        [
            {"updatedAt": "2024-01-01T10:00:00+02:00"},
            {"updatedAt": "2024-01-01T09:00:00Z"},
            {"updatedAt": None},
            {"updatedAt": "not a time"},
            {},
        ]
    )
    assert mark.kind.to_json(mark.take()) == "2024-01-01T09:00:00Z"
    assert mark.unreadable == 3
    assert mark.take() is None  # handed out once
    nested = CursorMax(_endpoint(incremental=_timestamps(cursor_field="meta.at")).incremental)  # type: ignore[arg-type]
    nested.fold([{"meta": {"at": "2024-02-01T00:00:00Z"}}, {"meta": 3}])
    assert nested.take() is not None and nested.unreadable == 1


# -- config -------------------------------------------------------------------------------------


def _timestamps(**over: Any) -> dict[str, Any]:
    return {
        "cursor_field": "updatedAt",
        "param": "updatedAfter",
        "initial": "2020-01-01T00:00:00Z",
        **over,
    }


def _endpoint(**over: Any) -> Any:
    raw = {
        "api": {"base_url": "http://127.0.0.1:1/"},
        "endpoints": [{"name": "contacts", "path": CONTACTS, "primary_key": "id", **over}],
    }
    return config_from_dict(raw, "job.yaml").endpoints[0]


@pytest.mark.parametrize(
    ("incremental", "extra", "where", "says"),
    [
        ({"cursor_field": "v", "param": "p", "initial": 5}, {}, "incremental", "cursor_type is"),
        ({"cursor_field": "v", "initial": "2024-01-01"}, {}, "contacts", "param"),
        (_timestamps(initial="soon"), {}, "incremental", "initial 'soon' is not ISO 8601"),
        (
            _timestamps(initial="soon", cursor_type="timestamp"),
            {},
            "incremental.initial",
            "'soon' is not an ISO",
        ),
        (_timestamps(end="2019-01-01T00:00:00Z"), {}, "incremental", "is before initial"),
        (_timestamps(lag=-1), {}, "incremental.lag", "greater than or equal to 0"),
        ({"cursor_type": "token", "param": "since"}, {}, "incremental", "token_path"),
        (
            {"cursor_type": "token", "param": "since", "token_path": "t", "lag": 5},
            {},
            "incremental",
            "cannot be stepped back",
        ),
        ({"param": "p", "cursor_type": "integer"}, {}, "incremental", "needs cursor_field"),
        (
            {"param": "p", "cursor_type": "integer", "cursor_field": "v", "lag": 1.5},
            {},
            "incremental",
            "a count for an integer cursor",
        ),
        (None, {"merge": "latest"}, "contacts", "merge: latest needs incremental"),
        (_timestamps(), {"merge": "latest", "primary_key": []}, "contacts", "needs primary_key"),
        (_timestamps(deleted_field="archived"), {}, "contacts", "only used by merge: latest"),
        (None, {"params": {"q": "{incremental.start}"}}, "contacts", "needs an incremental"),
        (
            _timestamps(param=None),
            {"params": {"to": "{incremental.end}", "from": "{incremental.start}"}},
            "contacts",
            "needs incremental.end",
        ),
        (_timestamps(), {"merge": "newest"}, "merge", "'latest'"),
    ],
)
def test_a_bad_incremental_config_names_the_field_and_what_is_expected(
    incremental: dict[str, Any] | None, extra: dict[str, Any], where: str, says: str
) -> None:
    over = dict(extra)
    if incremental is not None:
        over["incremental"] = incremental
    with pytest.raises(ConfigError) as info:
        _endpoint(**over)
    text = info.value.render()
    assert f"endpoints[contacts]{'' if where == 'contacts' else '.' + where}" in text
    assert says in text, text


def test_a_placeholder_in_the_path_and_a_token_on_a_fan_out_are_refused() -> None:
    with pytest.raises(ConfigError, match="not in path"):
        _endpoint(path="/c/{incremental.start}", incremental=_timestamps())
    raw = {
        "api": {"base_url": "http://127.0.0.1:1/"},
        "output": {"format": "none"},
        "endpoints": [{"name": "contacts", "path": CONTACTS, "incremental": _timestamps()}],
    }
    with pytest.raises(ConfigError, match="need Parquet output"):
        config_from_dict(raw, "job.yaml")


def test_yaml_timestamps_and_an_inferred_cursor_type(tmp_path: Path) -> None:
    e = _endpoint(incremental=_timestamps(initial=datetime(2024, 1, 1, 2, tzinfo=UTC)))
    assert e.incremental.cursor_type == "timestamp"
    assert e.incremental.initial == "2024-01-01T02:00:00Z"  # stored as ISO UTC text


def test_validate_exits_2_on_an_incremental_error_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.yaml"
    raw = {
        "api": {"base_url": "http://127.0.0.1:1/"},
        "endpoints": [{"name": "c", "path": "/c", "merge": "latest", "primary_key": "id"}],
    }
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "endpoints[c]" in err and "merge: latest needs incremental" in err
    assert "Traceback" not in err


def test_the_window_goes_into_params_and_body() -> None:
    e = _endpoint(
        method="POST",
        params={"q": "since {incremental.start}"},
        body={"from": "{incremental.start}", "to": "{incremental.end}", "n": ["{incremental.end}"]},
        incremental={
            "cursor_field": "v",
            "cursor_type": "integer",
            "initial": 10,
            "end": 99,
            "param": "after",
            "end_param": "until",
        },
    )
    bound = bind_window(e, 12, 99)
    assert bound.params == {"q": "since 12", "after": "12", "until": "99"}
    assert bound.json_body == {"from": 12, "to": 99, "n": [99]}  # a lone placeholder keeps its type
    first = bind_window(
        _endpoint(incremental=_timestamps(initial=None, cursor_type="timestamp")), None, None
    )
    assert "updatedAfter" not in first.params  # no start yet: no filter


# -- against the mock API --------------------------------------------------------------------------


def _crm(url: str, out: Path, merge: bool = False, **inc: Any) -> dict[str, Any]:
    cursor_page = {"type": "cursor", "cursor_path": "paging.next.after", "limit": PAGE}
    contacts_merge: dict[str, Any] = {}
    if merge:
        contacts_merge = {"merge": "latest"}
        inc = {"deleted_field": "archived", **inc}
    return {
        "api": {"base_url": url, "retry": FAST_RETRY},
        "output": {"directory": str(out), "checkpoint_seconds": 0.05, "row_group_rows": 20},
        "endpoints": [
            {
                "name": "contacts",
                "path": CONTACTS,
                "records": "results",
                "pagination": cursor_page,
                "primary_key": "id",
                "incremental": {**_timestamps(lag=60), **inc},
                **contacts_merge,
            },
            {
                "name": "engagements",
                "path": ENGAGEMENTS,
                "records": "results",
                "pagination": cursor_page,
                "primary_key": "id",
                "incremental": _timestamps(),
            },
            {
                "name": "engagement_contacts",
                "path": "/crm/v4/objects/engagements/{engagement_id}/associations/contacts",
                "for_each": {"endpoint": "engagements", "bind": {"engagement_id": "id"}},
                "records": "results",
            },
        ],
    }


def _versions(rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(str(r["id"]), r["updatedAt"]) for r in rows}


def _union(out: Path, endpoint: str) -> list[dict[str, Any]]:
    return ds.dataset(out / endpoint, format="parquet", partitioning="hive").to_table().to_pylist()  # type: ignore[no-any-return]


def _latest(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kind = CursorKind("timestamp")
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        old = best.get(r["id"])
        if old is None or kind.parse(r["updatedAt"]) >= kind.parse(old["updatedAt"]):
            best[r["id"]] = r
    return best


def _change(api: MockAPI, round_: int) -> None:
    """An hour later: 2% of the contacts edited, a few created and archived; engagements too."""
    d = api.dataset
    d.clock.advance(3600)
    d.edit(0.02, seed=round_)
    d.create(3, seed=round_)
    live = [c["id"] for c in d.contacts if not c.get("archived")]
    d.archive(live[round_ * 7 : round_ * 7 + 2])
    d.edit(0.1, table="engagements", seed=round_)


async def test_three_increments_hold_every_version_and_cost_requests_in_proportion(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=600, n_engagements=40)) as api:
        cfg = config_from_dict(_crm(api.url, out))
        seen: set[tuple[str, str]] = set()
        requests = []
        for n in (1, 2, 3):
            snapshot = [dict(r) for r in api.dataset.contacts]
            result = await asyncingest.run(cfg)
            assert result.exit_code == 0, result
            assert result.increment is not None and result.increment.number == n
            assert result.increment.complete
            union = _union(out, "contacts")
            # No skipped change: every version the API held when the increment ran is kept.
            assert _versions(snapshot) <= _versions(union)
            seen |= _versions(snapshot)
            window = result.increment.window("contacts")
            assert window.rows == result.endpoint("contacts").records_written
            requests.append(result.endpoint("contacts").requests)
            if n < 3:
                _change(api, n)
        assert _versions(union) == seen  # and nothing else
        # The increments are partitions of one dataset: every increment holds its own rows.
        parts = sorted({r["increment"] for r in union})
        assert parts == [1, 2, 3]
        # The latest version per key is the API's final state (archived flags included).
        final = {str(r["id"]): r for r in api.dataset.contacts}
        latest = _latest(union)
        assert latest.keys() == final.keys()
        assert all(latest[k]["updatedAt"] == final[k]["updatedAt"] for k in final)
        # Requests follow the changes, not the data set: 600 contacts are 12 pages; an hour's
        # changes (12 edited, 3 new, 2 archived, plus the lag's re-reads) fit in one.
        assert requests[0] >= math.ceil(600 / PAGE)
        assert requests[1] <= 2 and requests[2] <= 2
        # Children were fetched only for the engagements of each increment.
        state = load_state(out)
        assert state is not None and state.increment == 3
        w2 = state.increments[1].windows
        assert w2["engagement_contacts"].rows <= 3 * w2["engagements"].rows + 3


async def test_increments_read_as_one_dataset_with_duckdb_and_polars(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=120, n_engagements=10)) as api:
        cfg = config_from_dict(_crm(api.url, out))
        assert (await asyncingest.run(cfg)).exit_code == 0
        _change(api, 1)
        assert (await asyncingest.run(cfg)).exit_code == 0
    glob = f"{out}/contacts/**/*.parquet"
    by_duckdb = duckdb.sql(
        f"select increment, count(*) from read_parquet('{glob}', hive_partitioning=true) "
        "group by 1 order by 1"
    ).fetchall()
    by_polars = (
        pl.scan_parquet(glob, hive_partitioning=True).group_by("increment").len().sort("increment")
    ).collect()
    by_arrow = ds.dataset(out / "contacts", format="parquet", partitioning="hive").to_table()
    assert [n for _, n in by_duckdb] == by_polars["len"].to_list()
    assert sum(n for _, n in by_duckdb) == by_arrow.num_rows
    assert [i for i, _ in by_duckdb] == [1, 2]


async def test_the_next_increment_starts_at_the_committed_mark_minus_the_lag(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=60, n_engagements=5)) as api:
        cfg = config_from_dict(_crm(api.url, out))
        first = await asyncingest.run(cfg)
        assert first.increment is not None
        high = first.increment.window("contacts").high
        kind = CursorKind("timestamp")
        assert high == kind.to_json(max(kind.parse(c["updatedAt"]) for c in api.dataset.contacts))
        api.dataset.clock.advance(60)
        second = await asyncingest.run(cfg)
        assert second.increment is not None
        w = second.increment.window("contacts")
        assert w.start == kind.to_json(kind.back(kind.parse(high), 60))
        assert w.high == high  # nothing changed: the lag re-read the newest record only
        assert 1 <= w.rows < 60
        assert second.note == ""  # a new increment, not a resumed one
        # lag may change between increments (it only decides where the next one starts).
        raw = _crm(api.url, out, lag=600)
        third = await asyncingest.run(config_from_dict(raw), full_refresh="engagements")
        assert third.increment is not None
        assert third.increment.window("contacts").start == kind.to_json(
            kind.back(kind.parse(high), 600)
        )
        assert third.increment.window("engagements").full_refresh  # one name, not letters
        # The report, the state and the result agree.
        state = load_state(out)
        assert state is not None and state.marks["contacts"] == high
        report = orjson.loads(
            (out / "_asyncingest" / "runs" / f"{second.run_id}.json").read_bytes()
        )
        assert report["result"]["increment"]["number"] == 2


async def test_full_refresh_refetches_one_endpoint_from_initial(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=80, n_engagements=6)) as api:
        cfg = config_from_dict(_crm(api.url, out))
        await asyncingest.run(cfg)
        again = await asyncingest.run(cfg, full_refresh=["contacts"])
        assert again.increment is not None
        w = again.increment.window("contacts")
        assert w.full_refresh and w.start == "2020-01-01T00:00:00Z" and w.rows == 80
        assert not again.increment.window("engagements").full_refresh
        for bad, says in (("nope", "no such endpoint"), ("engagement_contacts", "not incremental")):
            with pytest.raises(ConfigError, match=says):
                await asyncingest.run(cfg, full_refresh=[bad])


async def test_a_bounded_backfill_is_fetched_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=60, n_engagements=5)) as api:
        raw = _crm(api.url, out, end="2023-07-01T00:00:00Z", end_param="updatedBefore")
        cfg = config_from_dict(raw)
        first = await asyncingest.run(cfg)
        assert first.increment is not None
        rows = _union(out, "contacts")
        assert rows and all(r["updatedAt"] < "2023-07-01" for r in rows)
        second = await asyncingest.run(cfg)
        assert second.increment is not None
        assert second.increment.window("contacts").skipped
        assert second.endpoint("contacts").requests == 0


async def test_a_token_cursor_sends_back_the_token_of_the_last_complete_increment(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=70, n_engagements=5)) as api:
        raw = {
            "api": {"base_url": api.url, "retry": FAST_RETRY},
            "output": {"directory": str(out)},
            "endpoints": [
                {
                    "name": "contacts",
                    "path": CONTACTS + "/changes",
                    "records": "results",
                    "params": {"limit": 30},
                    "pagination": {
                        "type": "cursor",
                        "cursor_path": "paging.next.after",
                        "cursor_param": "since",
                        "limit_param": None,
                    },
                    "primary_key": "id",
                    "incremental": {
                        "cursor_type": "token",
                        "param": "since",
                        "token_path": "nextSyncToken",
                    },
                }
            ],
        }
        cfg = config_from_dict(raw)
        first = await asyncingest.run(cfg)
        assert first.increment is not None
        token = first.increment.window("contacts").high
        assert token and first.increment.window("contacts").rows == 70
        changed = api.dataset.edit(0.1, seed=5)
        second = await asyncingest.run(cfg)
        assert second.increment is not None
        w = second.increment.window("contacts")
        assert w.start == token and w.rows == len(changed) and w.high != token
        state = load_state(out)
        assert state is not None and state.marks["contacts"] == w.high


async def test_sync_mode_and_submit_refuse_incremental_configs(tmp_path: Path) -> None:
    pytest.importorskip("aio_pika")
    from asyncingest.scale.submit import submit
    from asyncingest.sync.engine import unsupported

    cfg = config_from_dict(_crm("http://127.0.0.1:1/", tmp_path / "out"))
    problems = unsupported(cfg)
    assert any(p.location == "endpoints[contacts].incremental" for p in problems)
    with pytest.raises(ConfigError, match="scale-out runs have no increments"):
        # Refused before any broker is reached (nothing listens on port 1).
        await submit(cfg, "amqp://127.0.0.1:1/", run_id="r1", output=tmp_path / "out")


def test_the_cli_refuses_full_refresh_with_fresh_or_sync_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_crm("http://127.0.0.1:1/", tmp_path / "out")))
    assert main(["run", str(path), "--fresh", "--full-refresh", "contacts"]) == 2
    assert "--fresh starts over" in capsys.readouterr().err
    code = main(["run", str(path), "--mode", "sync", "--full-refresh", "contacts"])
    assert code == 2
    assert "--full-refresh" in capsys.readouterr().err


# -- crashes -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_kills_in_the_middle_of_an_increment_resume_it_and_skip_no_change(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=400, n_engagements=20)) as api:
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(_crm(api.url, out)))
        code, text = await run_cli(path)
        assert code == 0, text
        _change(api, 1)
        api.dataset.edit(0.3, seed=9)  # a big increment: several pages, several checkpoints
        snapshot = [dict(r) for r in api.dataset.contacts]
        start = None
        # Killed after a fetched page, then (resuming) at its second state save: a periodic
        # checkpoint, or the one that would complete the increment (killed before its rename).
        for crash_at in ("page:3", "state:2"):
            code, text = await run_cli(path, env={"ASYNCINGEST_CRASH_AT": crash_at})
            assert code == -9, text
            state = load_state(out)
            assert state is not None and state.increment == 2 and state.status != "complete"
            window = state.increments[-1].windows["contacts"]
            assert start is None or window.start == start  # the same window every time
            start = window.start
        code, text = await run_cli(path)  # resumes increment 2, same window
        assert code == 0, text
        assert "increment 2" in text
        state = load_state(out)
        assert state is not None and state.increment == 2 and state.status == "complete"
        assert state.increments[-1].windows["contacts"].start == start
        union = _union(out, "contacts")
        assert _versions(snapshot) <= _versions(union)
        rows = [r for r in union if r["increment"] == 2]
        assert len(rows) == len({r["id"] for r in rows})  # each record once in the increment
        assert state.increments[-1].windows["contacts"].rows == len(rows)
        latest = _latest(union)
        assert {k: v["updatedAt"] for k, v in latest.items()} == {
            str(r["id"]): r["updatedAt"] for r in snapshot
        }


async def test_an_interrupted_increment_refuses_a_new_full_refresh(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=60, n_engagements=5)) as api:
        cfg = config_from_dict(_crm(api.url, out))
        pipeline = asyncingest.Pipeline(cfg)
        await pipeline.start()
        result = await pipeline.stop()
        if not result.stopped:
            pytest.skip("the run finished before the stop")
        with pytest.raises(ConfigError, match="under way"):
            await asyncingest.run(cfg, full_refresh=["contacts"])
        done = await asyncingest.run(cfg)
        assert done.note == "resumed" and done.increment is not None
        assert done.increment.number == 1


# -- the current table (merge: latest) ------------------------------------------------------------


def _current(out: Path, endpoint: str = "contacts") -> dict[str, dict[str, Any]]:
    rows = ds.dataset(out / f"{endpoint}_current", format="parquet").to_table().to_pylist()
    table = {str(r["id"]): r for r in rows}
    assert len(table) == len(rows), "one row per key"
    return table


def _live(api: MockAPI) -> dict[str, str]:
    """The API's final state: live records by id, with their updatedAt."""
    return {str(r["id"]): r["updatedAt"] for r in api.dataset.contacts if not r.get("archived")}


async def test_the_current_table_is_the_apis_final_state_after_three_increments(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=300, n_engagements=10)) as api:
        cfg = config_from_dict(_crm(api.url, out, merge=True))
        for n in (1, 2, 3):
            result = await asyncingest.run(cfg)
            assert result.exit_code == 0 and result.increment is not None
            current = _current(out)
            assert {k: v["updatedAt"] for k, v in current.items()} == _live(api), n
            state = load_state(out)
            assert state is not None
            assert state.increments[-1].windows["contacts"].current == "done"
            if n < 3:
                _change(api, n)
        archived = [r["id"] for r in api.dataset.contacts if r.get("archived")]
        assert archived and not set(archived) & set(current)  # deletes left the table
        # A full refresh replaces the table with what the API lists now.
        api.dataset.archive([next(iter(current))])
        refreshed = await asyncingest.run(cfg, full_refresh=["contacts"])
        assert (
            refreshed.increment is not None and refreshed.increment.window("contacts").full_refresh
        )
        assert {k: v["updatedAt"] for k, v in _current(out).items()} == _live(api)
        # --fresh deletes the current table too and starts again at increment 1.
        again = await asyncingest.run(cfg, fresh=True)
        assert again.increment is not None and again.increment.number == 1
        assert {k: v["updatedAt"] for k, v in _current(out).items()} == _live(api)
        assert not list(out.glob(".contacts_current.v[2-9]*"))


@pytest.mark.slow
async def test_kills_during_the_current_table_rebuild_are_finished_by_the_next_run(
    tmp_path: Path,
) -> None:
    """Killed at each crash point of state/current.py in turn: the first during increment 2's
    rebuild, the next ones while the following run finishes that rebuild (and, once it is
    published, during increment 3's); the last run finishes everything and runs increment 4."""
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=300, n_engagements=10)) as api:
        path = tmp_path / "job.yaml"
        raw = _crm(api.url, out, merge=True)
        raw["output"]["max_rows_per_file"] = 100  # several files: current-partial is reached
        raw["output"]["row_group_rows"] = 50
        path.write_text(yaml.safe_dump(raw))
        code, text = await run_cli(path)
        assert code == 0, text
        _change(api, 1)
        snapshot = [dict(r) for r in api.dataset.contacts]
        for crash_at in ("current-partial", "current-staged", "current-switched"):
            code, text = await run_cli(path, env={"ASYNCINGEST_CRASH_AT": crash_at})
            assert code == -9, (crash_at, text)
            state = load_state(out)
            assert state is not None and state.increment == 2, crash_at
            assert state.increments[-1].windows["contacts"].current == "pending"
        _change(api, 2)
        # Increment 2's table was published before the kill: this run cleans up, begins
        # increment 3 and is killed in its rebuild, after the switch.
        code, text = await run_cli(path, env={"ASYNCINGEST_CRASH_AT": "current-cleaned"})
        assert code == -9, text
        # The next run finishes increment 3's table, then runs increment 4 (as any run does).
        code, text = await run_cli(path)
        assert code == 0, text
        state = load_state(out)
        assert state is not None and state.increment == 4 and state.status == "complete"
        assert all(i.windows["contacts"].current == "done" for i in state.increments)
        assert {k: v["updatedAt"] for k, v in _current(out).items()} == _live(api)
        union = _union(out, "contacts")
        assert _versions(snapshot) <= _versions(union)


def test_a_new_increments_sink_keeps_the_columns_and_types_of_the_last_one(
    tmp_path: Path,
) -> None:
    from asyncingest.sink.parquet import ParquetSink, SinkOptions

    first = ParquetSink(tmp_path / "contacts", "increment=1", SinkOptions())
    first.write([{"id": "1", "score": 1, "note": "x"}])
    first.close()
    second = ParquetSink(
        tmp_path / "contacts",
        "increment=2",
        SinkOptions(),
        seed_from=tmp_path / "contacts" / "increment=1",
    )
    second.write([{"id": "2", "score": 2}])  # no note in this increment
    second.close()
    table = ds.dataset(tmp_path / "contacts", format="parquet", partitioning="hive").to_table()
    assert table.schema.field("score").type == "int64"
    assert sorted(table.column("note").to_pylist(), key=str) == [None, "x"]


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_incremental

    assert bench_incremental.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "day 1: increment" in out and "day 1: full refetch" in out


async def test_retry_failed_with_nothing_to_retry_starts_no_new_increment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=30, n_engagements=5)) as api:
        cfg = config_from_dict(_crm(api.url, out))
        await asyncingest.run(cfg)
        again = await asyncingest.run(cfg, retry_failed=True)
        assert again.note == "already complete" and again.increment is None
        state = load_state(out)
        assert state is not None and state.increment == 1


async def test_an_increment_with_failed_requests_keeps_the_mark_so_nothing_is_skipped(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    # Each contacts page fails twice (both attempts of an increment), then answers.
    broken = MockSettings.small(
        n_contacts=80, n_engagements=5, forced_faults={CONTACTS: ("status_500",) * 2}
    )
    async with MockAPI(broken) as api:
        raw = _crm(api.url, out)
        raw["api"]["retry"] = {**FAST_RETRY, "max_attempts": 2}
        cfg = config_from_dict(raw)
        first = await asyncingest.run(cfg)
        assert first.exit_code == 1 and first.increment is not None
        assert first.increment.window("contacts").held
        assert not first.increment.window("engagements").held
        state = load_state(out)
        assert state is not None and "contacts" not in state.marks
        assert "engagements" in state.marks
        for _ in range(3):  # page 1 answers in increment 2, page 2 in increment 3
            later = await asyncingest.run(cfg)
            assert later.increment is not None
            w = later.increment.window("contacts")
            assert w.start == "2020-01-01T00:00:00Z"  # the mark stayed: the window is re-read
            assert later.increment.window("engagements").start != "2020-01-01T00:00:00Z"
            if not w.held:
                break
    assert not w.held and w.rows == 80
    state = load_state(out)
    assert state is not None and state.marks["contacts"] == w.high


async def test_a_search_style_placeholder_and_a_transform_work_per_increment(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=90, n_engagements=4)) as api:
        raw = _crm(api.url, out)
        contacts = raw["endpoints"][0]
        contacts["incremental"].pop("param")
        contacts["params"] = {"updatedSince": "{incremental.start}"}  # at or after the start
        contacts["transform"] = {
            "function": "tests.transform_helpers:identity",
            "batch_size": 20,
            "output": "contacts_t",
        }
        raw["api"]["concurrency"] = {"cpu_workers": 1}
        cfg = config_from_dict(raw)
        first = await asyncingest.run(cfg)
        assert first.exit_code == 0 and first.increment is not None
        api.dataset.clock.advance(3600)
        changed = api.dataset.edit(0.1, seed=3)
        second = await asyncingest.run(cfg)
        assert second.exit_code == 0 and second.increment is not None
    w = second.increment.window("contacts")
    assert w.rows >= len(changed)
    transformed = ds.dataset(out / "contacts_t", format="parquet", partitioning="hive").to_table()
    assert sorted(set(transformed.column("increment").to_pylist())) == [1, 2]
    assert transformed.num_rows == 90 + w.rows
    state = load_state(out)
    assert state is not None and "increment=1" not in state.endpoints  # folders by name
    assert state.endpoints["contacts_t"].files  # the transform's partition of increment 2


async def test_an_empty_increment_publishes_an_empty_table_first_then_leaves_it(
    tmp_path: Path,
) -> None:
    from asyncingest.state.current import current_version

    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=20, n_engagements=2)) as api:
        raw = _crm(api.url, out, merge=True, initial="2030-01-01T00:00:00Z")
        cfg = config_from_dict(raw)
        first = await asyncingest.run(cfg)
        assert first.exit_code == 0 and first.increment is not None
        assert first.increment.window("contacts").rows == 0
        assert current_version(out, "contacts") == 1
        assert _current(out) == {}
        second = await asyncingest.run(cfg)
        assert second.increment is not None and second.increment.number == 2
        assert current_version(out, "contacts") == 1  # nothing changed: not rewritten
        state = load_state(out)
        assert state is not None and state.increments[-1].windows["contacts"].current == "done"


async def test_each_run_announces_its_increment_and_windows_before_fetching(
    tmp_path: Path,
) -> None:
    from asyncingest.operate.logsub import _increment_started

    out = tmp_path / "out"
    seen: list[Any] = []

    def listen(event: Any) -> None:
        seen.append(event)

    listen.event_types = (asyncingest.IncrementStarted, asyncingest.RequestFinished)  # type: ignore[attr-defined]
    async with MockAPI(MockSettings.small(n_contacts=30, n_engagements=3)) as api:
        cfg = config_from_dict(_crm(api.url, out))
        await asyncingest.run(cfg, subscribers=[listen])
        await asyncingest.run(cfg, subscribers=[listen], full_refresh=["contacts"])
    starts = [e for e in seen if isinstance(e, asyncingest.IncrementStarted)]
    assert [e.increment.number for e in starts] == [1, 2]
    assert isinstance(seen[0], asyncingest.IncrementStarted)  # before any request
    assert not starts[1].resumed
    _, name, message, fields = _increment_started(starts[1])
    assert name == "increment_started"
    assert "increment 2 began" in message and "(full refresh)" in message
    assert fields["windows"][0]["endpoint"] == "contacts"


async def test_a_from_file_endpoint_sends_the_window_with_every_id(tmp_path: Path) -> None:
    from .conftest import write_ids

    ids_path, ids = write_ids(tmp_path, 12)
    out = tmp_path / "out"
    urls: list[str] = []

    def listen(event: Any) -> None:
        urls.append(event.url)

    listen.event_types = (asyncingest.RequestStarted,)  # type: ignore[attr-defined]
    async with MockAPI(MockSettings.small()) as api:
        raw = {
            "api": {"base_url": api.url, "retry": FAST_RETRY},
            "output": {"directory": str(out)},
            "endpoints": [
                {
                    "name": "users",
                    "path": "/partner/users/{user_id}",
                    "single_record": True,
                    "primary_key": "user_id",
                    "from_file": {"path": str(ids_path), "column": "user_id"},
                    # An epoch-seconds cursor (the mock's users carry no time: their score
                    # stands in for one) sent as ?since=.
                    "incremental": {
                        "cursor_field": "score",
                        "cursor_type": "epoch_s",
                        "param": "since",
                        "initial": 100,
                        "lag": 10,
                    },
                }
            ],
        }
        cfg = config_from_dict(raw)
        first = await asyncingest.run(cfg, subscribers=[listen])
        assert first.increment is not None
        top = max(api.dataset.user(i)["score"] for i in ids)  # type: ignore[index]
        assert first.increment.window("users").high == top
        assert len(urls) == 12 and all("since=100" in u for u in urls)
        urls.clear()
        second = await asyncingest.run(cfg, subscribers=[listen])
    assert second.increment is not None
    start = second.increment.window("users").start
    assert start == pytest.approx(top - 10)
    assert len(urls) == 12 and all(f"since={start}" in u for u in urls)
