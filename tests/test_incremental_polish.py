"""Incremental runs, the gaps issue #14's first cut left (against the bundled mock API):
``--retry-failed`` rebuilds the current table of the increment it reopens, a cursor value far in
the future does not move the high-water mark, ``for_each: {parents: all}``, and ``plan`` on an
existing output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import asyncingest
from asyncingest.config.loading import config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.mockapi.changes import Window as MockWindow
from asyncingest.mockapi.changes import iso_z, parse_instant
from asyncingest.mockapi.data import Dataset
from asyncingest.state.checkpoint import load_state
from asyncingest.state.current import current_revision

from .test_incremental import CONTACTS, PAGE, _change, _crm, _current, _live

INITIAL = "2020-01-01T00:00:00Z"


def _page_url(dataset: Dataset, page: int) -> str:
    """The exact URL (as the mock's fault plan keys it) of the ``page``-th page (0-based) of
    the first increment's contacts walk: ``updatedAfter=<initial>``, keyset ``after``."""
    window = MockWindow(parse_instant(INITIAL) + 1, None, None)
    after = None
    for _ in range(page):
        _, after = dataset.crm("contacts").by_update(window, after, PAGE)
        assert after is not None
    query = [f"limit={PAGE}", f"updatedAfter={INITIAL}"]
    if after is not None:
        query.append(f"after={after[0]}-{after[1]}")
    return CONTACTS + "?" + "&".join(query)


# -- 1. --retry-failed rebuilds the current table ------------------------------------------------


async def test_retry_failed_rebuilds_the_current_table_of_the_increment_it_reopens(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    settings = MockSettings.small(n_contacts=200, n_engagements=5)
    dataset = Dataset.build(settings)
    # The second page of the first walk fails both attempts: the increment completes with a
    # dead letter, its current table published from the first page alone.
    broken = settings.model_copy(
        update={"forced_faults": {_page_url(dataset, 1): ("status_500",) * 2}}
    )
    async with MockAPI(broken, dataset=dataset) as api:
        raw = _crm(api.url, out, merge=True)
        raw["api"]["retry"] = {**raw["api"]["retry"], "max_attempts": 2}
        cfg = config_from_dict(raw)
        first = await asyncingest.run(cfg)
        assert first.exit_code == 1 and first.dead_requests == 1, first
        assert first.increment is not None and first.increment.window("contacts").held
        assert len(_current(out)) == PAGE  # the first page only
        assert current_revision(out, "contacts") == (1, 0)

        retried = await asyncingest.run(cfg, retry_failed=True)
        assert retried.exit_code == 0 and retried.dead_requests == 0, retried
        assert retried.increment is not None and retried.increment.number == 1
        assert not retried.increment.window("contacts").held
        # The table now holds every record of the mock, at its version, without the archived.
        assert {k: v["updatedAt"] for k, v in _current(out).items()} == _live(api)
        assert current_revision(out, "contacts") == (1, 1)
        state = load_state(out)
        assert state is not None and state.increment == 1 and state.status == "complete"
        window = state.increments[-1].windows["contacts"]
        assert window.current == "done" and window.revision == 1 and window.built_rows == 200
        # The next increment merges onto the retried table as usual.
        _change(api, 1)
        later = await asyncingest.run(cfg)
        assert later.exit_code == 0 and later.increment is not None
        assert later.increment.number == 2
        assert {k: v["updatedAt"] for k, v in _current(out).items()} == _live(api)
        assert current_revision(out, "contacts") == (2, 0)
        # The version it replaced is kept for readers until the next rebuild; v1 r0 is gone.
        hidden = sorted(p.name for p in out.glob(".contacts_current.v*"))
        assert hidden == [".contacts_current.v1.r1", ".contacts_current.v2"]


@pytest.mark.slow
async def test_a_retry_killed_in_its_rebuild_is_finished_by_the_next_run(tmp_path: Path) -> None:
    """The command line, SIGKILLed while ``--retry-failed`` rebuilds the table (before the
    switch): the next run finishes that revision before it begins increment 2."""
    import yaml

    from .conftest import run_cli

    out = tmp_path / "out"
    settings = MockSettings.small(n_contacts=200, n_engagements=5)
    dataset = Dataset.build(settings)
    broken = settings.model_copy(
        update={"forced_faults": {_page_url(dataset, 1): ("status_500",) * 2}}
    )
    async with MockAPI(broken, dataset=dataset) as api:
        raw = _crm(api.url, out, merge=True)
        raw["api"]["retry"] = {**raw["api"]["retry"], "max_attempts": 2}
        raw["output"]["max_rows_per_file"] = 60  # several files: current-partial is reached
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(raw))
        code, text = await run_cli(path)
        assert code == 1, text
        assert len(_current(out)) == PAGE
        code, text = await run_cli(
            path, "--retry-failed", env={"ASYNCINGEST_CRASH_AT": "current-partial"}
        )
        assert code == -9, text
        state = load_state(out)
        assert state is not None and state.status == "complete"
        window = state.increments[-1].windows["contacts"]
        assert (window.current, window.revision) == ("pending", 1)
        assert len(_current(out)) == PAGE  # readers still see the published revision
        code, text = await run_cli(path)
        assert code == 0, text
        state = load_state(out)
        assert state is not None and state.increment == 2
        assert state.increments[0].windows["contacts"].current == "done"
        assert {k: v["updatedAt"] for k, v in _current(out).items()} == _live(api)


RETRY_POINTS = ["current-partial", "current-staged", "current-switched", "current-cleaned"]


def _retry_files(out: Path) -> tuple[list[Path], list[Path]]:
    """Increment 2 of tests/test_current_crash.py split in two: what its first completion
    committed (``a``), and what a retry added (``b``: the rest, a newer version of a key of
    ``a`` and the delete of a key of increment 1)."""
    from asyncingest.sink.parquet import ParquetSink

    from .test_current_crash import OPTIONS, versions

    rows = versions(2)
    extra = [
        {"id": rows[0]["id"], "updatedAt": "2024-01-02T06:00:00Z", "deleted": False},
        {"id": "k29", "updatedAt": "2024-01-02T07:00:00Z", "deleted": True},
    ]
    made = []
    for name, part in (("a", rows[:5]), ("b", rows[5:] + extra)):
        folder = out / "items" / name
        if folder.exists():
            made.append(sorted(folder.glob("*.parquet")))
            continue
        sink = ParquetSink(out / "items", name, OPTIONS)
        sink.write(part)
        made.append(sink.close())
    return made[0], made[1]


def retry_rebuild(out: Path, revision: int) -> Any:
    """Version 2 of ``items`` from the first part of increment 2 (revision 0) or from all of it
    (revision 1, a retry's rebuild); version 1 first when it is not there."""
    from asyncingest.state.current import rebuild_current

    from .test_current_crash import OPTIONS, files_of

    a, b = _retry_files(out)
    common: dict[str, Any] = {
        "primary_key": ("id",),
        "cursor_field": "updatedAt",
        "cursor_type": "timestamp",
        "deleted_field": "deleted",
        "replace": False,
        "options": OPTIONS,
    }
    if current_revision(out, "items") is None:
        rebuild_current(out, "items", 1, files_of(out, 1), **common)
    files = a if revision == 0 else a + b
    return rebuild_current(out, "items", 2, files, revision=revision, **common)


@pytest.mark.slow
@pytest.mark.parametrize("point", RETRY_POINTS)
def test_a_retrys_rebuild_killed_at_a_crash_point_then_run_again_gives_one_rebuilds_table(
    tmp_path: Path, point: str
) -> None:
    """A revision is as crash-safe as a version: killed at each crash point, readers see the
    old revision or the new one whole, and running it again gives the table of a single
    rebuild of version 2 from all of its files."""
    import os
    import signal
    import subprocess
    import sys

    from .test_current_crash import ROOT, assert_no_key_twice, files_of, table

    reference = tmp_path / "reference"
    reference.mkdir()
    a, b = _retry_files(reference)
    from asyncingest.state.current import rebuild_current

    from .test_current_crash import OPTIONS

    common: dict[str, Any] = {
        "primary_key": ("id",),
        "cursor_field": "updatedAt",
        "cursor_type": "timestamp",
        "deleted_field": "deleted",
        "replace": False,
        "options": OPTIONS,
    }
    rebuild_current(reference, "items", 1, files_of(reference, 1), **common)
    rebuild_current(reference, "items", 2, a + b, **common)
    expected = table(reference)

    out = tmp_path / "out"
    out.mkdir()
    retry_rebuild(out, 0)
    before = table(out)
    assert before != expected  # the retry's rows are not in it yet
    code = (
        "import sys; from pathlib import Path; "
        "from tests.test_incremental_polish import retry_rebuild; "
        "retry_rebuild(Path(sys.argv[1]), 1)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        env={**os.environ, "ASYNCINGEST_CRASH_AT": f"{point}:1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    committed = point in ("current-switched", "current-cleaned")
    assert current_revision(out, "items") == ((2, 1) if committed else (2, 0))
    assert table(out) == (expected if committed else before)
    assert_no_key_twice(out)
    result = retry_rebuild(out, 1)
    assert result.version == 2 and result.revision == 1
    assert table(out) == expected
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == [".items_current.v2", ".items_current.v2.r1"]
    with pytest.raises(ValueError, match="revision 1"):
        retry_rebuild(out, 0)  # older than the published revision


# -- 2. a cursor far in the future does not move the mark -----------------------------------------


def test_a_time_cursor_beyond_the_limit_does_not_move_the_mark_and_is_counted() -> None:
    from asyncingest.config.models import IncrementalConfig
    from asyncingest.core.cursor import CursorMax

    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    spec = IncrementalConfig(cursor_field="t", cursor_type="epoch_s", future_tolerance=3600)
    cursor = CursorMax(spec, now=now)
    # Epoch milliseconds where seconds are expected; a value just inside the tolerance counts.
    cursor.fold([{"t": 1_699_990_000}, {"t": 1_700_000_000_123}, {"t": now + 3600}])
    assert cursor.take() == now + 3600
    assert cursor.take_future() == (1, 1_700_000_000_123)
    assert cursor.take_future() == (0, None)  # handed out once

    stamp = IncrementalConfig(cursor_field="u", initial="2023-01-01T00:00:00Z")
    assert stamp.cursor_type == "timestamp" and stamp.future_tolerance == 86_400
    cursor = CursorMax(stamp, now=now)
    cursor.fold([{"u": "9999-12-31T23:59:59Z"}, {"u": "2023-11-14T00:00:00+02:00"}])
    assert stamp.kind.to_json(cursor.take()) == "2023-11-13T22:00:00Z"
    assert cursor.take_future() == (1, "9999-12-31T23:59:59Z")
    ms = IncrementalConfig(cursor_field="t", cursor_type="epoch_ms")
    cursor = CursorMax(ms, now=now)
    cursor.fold([{"t": 1_700_000_000_000}, {"t": 1_700_000_000_000_000}])  # us given as ms
    assert cursor.take() == 1_700_000_000_000 and cursor.future == 1

    off = IncrementalConfig(cursor_field="u", initial="2023-01-01T00:00:00Z", future_tolerance=None)
    cursor = CursorMax(off, now=now)
    cursor.fold([{"u": "9999-12-31T23:59:59Z"}])
    assert cursor.future == 0 and cursor.take() is not None  # the guard is off
    # Integers and tokens are no instants: no guard, and asking for one is refused.
    count = IncrementalConfig(cursor_field="v", cursor_type="integer")
    cursor = CursorMax(count, now=now)
    cursor.fold([{"v": 10**15}])
    assert cursor.take() == 10**15 and cursor.future == 0
    with pytest.raises(ValueError, match="future_tolerance: only for time cursors"):
        IncrementalConfig(cursor_field="v", cursor_type="integer", future_tolerance=10)


async def test_a_record_dated_year_9999_is_written_reported_and_skips_no_later_change(
    tmp_path: Path,
) -> None:
    import io

    from asyncingest.operate.logsub import configure_logging

    from .test_incremental import _union, _versions

    out = tmp_path / "out"
    seen: list[Any] = []

    def listen(event: Any) -> None:
        seen.append(event)

    listen.event_types = (asyncingest.CursorAhead,)  # type: ignore[attr-defined]
    stream = io.StringIO()
    logs = configure_logging("warning", "text", stream)
    async with MockAPI(MockSettings.small(n_contacts=120, n_engagements=5)) as api:
        cfg = config_from_dict(_crm(api.url, out, merge=True))
        first = await asyncingest.run(cfg)
        assert first.exit_code == 0
        _change(api, 1)
        table = api.dataset.crm("contacts")
        bad = dict(table.rows[5])
        bad["updatedAt"] = "9999-12-31T00:00:00Z"  # bad data at the source
        table.replace(bad)
        second = await asyncingest.run(cfg, subscribers=[listen, logs])
        assert second.exit_code == 0 and second.increment is not None
        window = second.increment.window("contacts")
        assert window.future == 1
        assert "1 with a cursor in the future (not moving the mark)" in str(window)
        # Written, not lost: in the increment's partition and in the current table.
        rows = [r for r in _union(out, "contacts") if r["id"] == bad["id"]]
        assert any(r["updatedAt"] == bad["updatedAt"] and r["increment"] == 2 for r in rows)
        assert _current(out)[bad["id"]]["updatedAt"] == bad["updatedAt"]
        # The mark is the newest believable cursor, not year 9999.
        state = load_state(out)
        assert state is not None
        assert state.marks["contacts"] == window.high and window.high.startswith("20")
        # Reported: an event and a warning naming the endpoint, the field and the value.
        [event] = seen
        assert (event.endpoint, event.field, event.value) == (
            "contacts",
            "updatedAt",
            "9999-12-31T00:00:00Z",
        )
        assert event.records == 1 and str(event.limit).startswith("20")
        text = stream.getvalue()
        assert "WARNING" in text and "contacts: updatedAt '9999-12-31T00:00:00Z'" in text
        # The next increment still sees the changes made after it (none skipped), and the
        # record fixed at the source replaces the year-9999 version in the current table
        # (a cursor beyond the limit ranks below every believable one).
        _change(api, 2)
        fixed = dict(bad)
        fixed["updatedAt"] = iso_z(api.dataset.clock.now)
        table.replace(fixed)
        snapshot = [dict(r) for r in api.dataset.contacts]
        third = await asyncingest.run(cfg)
        assert third.exit_code == 0
        assert _versions(snapshot) <= _versions(_union(out, "contacts"))
        assert _current(out)[bad["id"]]["updatedAt"] == fixed["updatedAt"]
        assert {k: v["updatedAt"] for k, v in _current(out).items()} == _live(api)


# -- 3. for_each: {parents: all} ------------------------------------------------------------------


def _all_parents(url: str, out: Path) -> dict[str, Any]:
    raw = _crm(url, out)
    engagements, children = raw["endpoints"][1], raw["endpoints"][2]
    engagements["merge"] = "latest"
    children["for_each"] = {
        "endpoint": "engagements",
        "bind": {"engagement_id": "id"},
        "copy": {"engagement_id": "id"},
        "parents": "all",
    }
    return raw


def _child_parents(out: Path, increment: int) -> list[str]:
    """The engagement ids of increment ``increment``'s association records (one per row)."""
    from .test_incremental import _union

    rows = [r for r in _union(out, "engagement_contacts") if r["increment"] == increment]
    return [str(r["engagement_id"]) for r in rows]


async def test_parents_all_fetches_children_for_every_key_of_the_parents_current_table(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=60, n_engagements=45)) as api:
        raw = _all_parents(api.url, out)
        raw["output"]["row_group_rows"] = 10  # the sweep streams the table in batches
        cfg = config_from_dict(raw)
        first = await asyncingest.run(cfg)
        assert first.exit_code == 0
        engagements = set(_current(out, "engagements"))
        assert len(engagements) == 45
        _change(api, 1)  # 10% of the engagements edited
        second = await asyncingest.run(cfg)
        assert second.exit_code == 0 and second.increment is not None
        changed = second.increment.window("engagements").rows
        assert 0 < changed < 45
        # Children of every engagement, the changed ones (from the pages) and the others
        # (swept from the table), each exactly once.
        # (Some engagements have no associations: their one request gives no row.)
        assert second.endpoint("engagement_contacts").requests == 45
        assert sorted(_child_parents(out, 2)) == sorted(_child_parents(out, 1))
        assert "for every engagements_current key" in str(
            second.increment.window("engagement_contacts")
        )
        state = load_state(out)
        assert state is not None
        window = state.increments[-1].windows["engagements"]
        assert window.sweep == ".engagements_current.v1" and window.swept == window.sweep_rows
        assert window.sweep_rows == 45


def test_parents_all_needs_a_current_table_on_the_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml
    from rich.console import Console

    from asyncingest.cli.main import main
    from asyncingest.errors import ConfigError
    from asyncingest.operate.validate_report import describe_plan

    raw = _all_parents("http://127.0.0.1:1", tmp_path / "out")
    console = Console(record=True, width=200)
    console.print(describe_plan(config_from_dict(raw), source="job.yaml"))
    assert "for every key of engagements_current" in console.export_text()
    del raw["endpoints"][1]["merge"]
    with pytest.raises(ConfigError, match=r"parents: all .* needs merge: latest"):
        config_from_dict(raw)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'engagements' needs merge: latest" in err and "Traceback" not in err


@pytest.mark.slow
async def test_a_sweep_killed_part_way_is_resumed_and_misses_no_parent(tmp_path: Path) -> None:
    import yaml

    from .conftest import run_cli

    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=60, n_engagements=45)) as api:
        raw = _all_parents(api.url, out)
        raw["output"]["row_group_rows"] = 5
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(raw))
        code, text = await run_cli(path)
        assert code == 0, text
        _change(api, 1)
        code, text = await run_cli(path, env={"ASYNCINGEST_CRASH_AT": "sweep:4"})
        assert code == -9, text
        state = load_state(out)
        assert state is not None and state.increment == 2 and state.status != "complete"
        code, text = await run_cli(path)
        assert code == 0, text
        # Every engagement's associations, each once (nothing fetched twice into the output).
        assert sorted(_child_parents(out, 2)) == sorted(_child_parents(out, 1))
        state = load_state(out)
        assert state is not None
        window = state.increments[-1].windows["engagements"]
        assert window.swept == window.sweep_rows == 45


# -- 4. plan on an existing output estimates the next increment -----------------------------------


async def test_plan_on_an_existing_output_samples_the_next_increments_window(
    tmp_path: Path,
) -> None:
    from asyncingest.operate.sample import plan

    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(n_contacts=600, n_engagements=10)) as api:
        cfg = config_from_dict(_crm(api.url, out))
        first = await plan(cfg, walks=3)
        assert first.increment is None  # no output yet: the first increment, from initial
        by_name = {r.name: r for r in first.endpoints}
        assert by_name["contacts"].requests is not None
        assert by_name["contacts"].requests.value >= 600 / PAGE
        result = await asyncingest.run(cfg)
        assert result.exit_code == 0
        _change(api, 1)  # an hour of changes: a page of contacts
        nxt = await plan(cfg, walks=3)
        assert nxt.increment == 2 and nxt.to_dict()["increment"] == 2
        by_name = {r.name: r for r in nxt.endpoints}
        contacts = by_name["contacts"].requests
        assert contacts is not None and contacts.value <= 2
        from rich.console import Console

        console = Console(record=True, width=200)
        console.print(nxt)
        assert "increment 2: the windows the next run fetches" in console.export_text()
        second = await asyncingest.run(cfg)
        assert second.increment is not None and second.increment.number == 2
        assert second.endpoint("contacts").requests <= 2
        # Without sampling too, the estimate names the increment.
        assert (await plan(cfg, walks=0)).increment == 3


def test_parents_and_future_tolerance_may_change_between_increments(tmp_path: Path) -> None:
    from asyncingest.config.identity import fingerprint

    raw = _crm("http://127.0.0.1:1", tmp_path / "out", merge=True)
    raw["endpoints"][1]["merge"] = "latest"
    before = fingerprint(config_from_dict(raw))
    raw["endpoints"][2]["for_each"]["parents"] = "all"
    raw["endpoints"][0]["incremental"]["future_tolerance"] = 60
    assert fingerprint(config_from_dict(raw)) == before
    raw["endpoints"][2]["for_each"]["bind"] = {"engagement_id": "uuid"}
    assert fingerprint(config_from_dict(raw)) != before  # what a job fetches: refused


def test_the_sweep_streams_the_table_in_batches_from_where_it_stopped(tmp_path: Path) -> None:
    """``state.current.sweep_rows``: the rows in a fixed order, after ``skip``, in batches of at
    most ``batch_size`` with their keys; Arrow holds about one batch at a time, not the table."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from asyncingest.sink.parquet import ParquetSink, SinkOptions
    from asyncingest.state.current import published_folder, rebuild_current, sweep_rows

    options = SinkOptions(row_group_rows=500, max_rows_per_file=3_000)
    sink = ParquetSink(tmp_path / "items", "increment=1", options)
    n = 20_000
    sink.write(
        [
            {
                "id": i,
                "owner": {"id": f"o{i}"},
                "note": "x" * 40,
                "updatedAt": "2024-01-01T00:00:00Z",
            }
            for i in range(n)
        ]
    )
    files = sink.close()
    rebuild_current(
        tmp_path,
        "items",
        1,
        files,
        primary_key=("id",),
        cursor_field="updatedAt",
        cursor_type="timestamp",
        deleted_field=None,
        replace=False,
        options=options,
    )
    published = published_folder(tmp_path, "items")
    assert published == (".items_current.v1", n)
    whole = pads.dataset(tmp_path / "items_current", format="parquet").to_table().nbytes
    before = pa.total_allocated_bytes()
    peak, seen, ids = 0, 0, []
    for rows, keys, consumed in sweep_rows(
        tmp_path, published[0], ["owner.id"], ("id",), 500, 4_321
    ):
        peak = max(peak, pa.total_allocated_bytes() - before)
        assert 0 < consumed <= 500 and len(rows) == len(keys) == consumed
        assert all(set(r) == {"owner", "id"} for r in rows)  # only the columns asked for
        assert keys == [(r["id"],) for r in rows]
        ids.extend(r["id"] for r in rows)
        seen += consumed
    assert seen == n - 4_321 and ids == list(range(4_321, n))
    assert peak < whole / 4, (peak, whole)
