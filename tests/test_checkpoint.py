"""The checkpoint and resume decisions, unit by unit (``state/checkpoint.py``, ``state/resume.py``).

The SIGKILL tests (``test_resume.py``, slow) show a killed run resumes without gaps or
duplicates; these pin each piece on its own, in process, so a mutation of one of them fails
here (``nox -s mutants -- checkpoint resume``): the state's round trip, the journal's
committed prefix, what a resume deletes and cuts, ``--fresh`` / ``--retry-failed``, and how a
writer barrier is folded into the state.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from asyncingest.config.identity import fingerprint, identity
from asyncingest.core.request import Request
from asyncingest.errors import ConfigError, StateCorrupt
from asyncingest.sink.deadletter import DeadLetter, DeadLetters
from asyncingest.state import checkpoint as cp
from asyncingest.state.checkpoint import (
    EndpointState,
    Journal,
    RunState,
    discard_uncommitted,
    has_data,
    load_state,
    request_from_json,
    request_to_json,
    save_state,
    state_path,
    wipe,
    write_atomic,
)
from asyncingest.state.increments import Increment, Window
from asyncingest.state.progress import BarrierResult, Progress
from asyncingest.state.rangeset import RangeSet
from asyncingest.state.resume import (
    JobPlan,
    apply,
    dead_letters_left,
    dead_requests_by_endpoint,
    prepare,
    report_json,
    requeue_failed,
    write_run_report,
)

from .conftest import pipeline

BIG = 2**70 + 1  # beyond 64 bits: a cursor the state must keep exactly


def _request() -> Request:
    return Request(
        "POST",
        URL("https://api.test/a%2Fb/items?x=%20y", encoded=True),
        params=(("page", "3"), ("size", "10")),
        json_body={"q": [1, 2], "big": BIG},
        page=4,
        state={"cursor": BIG},
    )


def test_request_round_trips_through_json() -> None:
    r = _request()
    d = request_to_json(r)
    assert d == {
        "method": "POST",
        "url": "https://api.test/a%2Fb/items?x=%20y",
        "params": [["page", "3"], ["size", "10"]],
        "body": {"q": [1, 2], "big": BIG},
        "page": 4,
        "state": {"cursor": BIG},
    }
    back = request_from_json(json.loads(json.dumps(d)))
    assert back == r
    assert str(back.full_url) == str(r.full_url)  # the encoded path stays encoded


def _endpoint_state() -> EndpointState:
    return EndpointState(
        files=["part-00000.parquet", "part-00001.parquet"],
        done=RangeSet([(0, 3), (5, 6)]),
        partial={7: request_to_json(_request())},
        journal_lines=4,
        journal_bytes=120,
        dead_letter_bytes=77,
        finished=True,
        compaction={"staging": "final"},
    )


def test_run_state_round_trips_every_field_exactly() -> None:
    state = RunState(
        "fp1",
        status="interrupted",
        runs=["r1", "r2"],
        endpoints={"items": _endpoint_state(), "other": EndpointState()},
        note="a note",
        identity={"base_url": "https://api.test"},
    )
    back = RunState.from_bytes(state.to_bytes())
    assert back == state
    assert back.endpoints["items"].partial[7]["state"]["cursor"] == BIG
    assert back.endpoints["items"].done.ranges() == [(0, 3), (5, 6)]
    assert back.endpoints["other"] == EndpointState()


def test_run_state_defaults_and_endpoint() -> None:
    state = RunState("fp")
    assert (state.status, state.runs, state.note, state.identity) == ("running", [], "", None)
    es = state.endpoint("items")
    assert es is state.endpoint("items")
    assert es == EndpointState(files=[], done=RangeSet(), partial={})
    assert es.finished is False and es.compaction is None
    assert es.journal_lines == es.journal_bytes == es.dead_letter_bytes == 0


def test_run_state_reads_a_state_without_note_or_identity() -> None:
    raw = json.dumps(
        {"version": 1, "fingerprint": "fp", "status": "complete", "runs": ["r"], "endpoints": {}}
    )
    state = RunState.from_bytes(raw.encode())
    assert (state.note, state.identity, state.status) == ("", None, "complete")
    es = EndpointState.from_json({**EndpointState().to_json(), "compaction": None})
    assert es == EndpointState()
    del_compaction = EndpointState().to_json()
    del del_compaction["compaction"]
    assert EndpointState.from_json(del_compaction).compaction is None


def _incremental_state() -> RunState:
    """A state of increment 3 of an incremental config: every incremental field set."""
    done = Increment(
        2,
        status="complete",
        windows={"items": Window(start="2024-01-01T00:00:00Z", high=BIG, rows=5, held=True)},
        files={"items": ["part-00000.parquet"]},
    )
    running = Increment(
        3,
        windows={
            "items": Window(start=BIG, end="2024-03-01", rows=2, future_limit=1.5e9),
            "notes": Window(incremental=False, parent="items", all_parents=True, swept=4),
        },
    )
    return RunState(
        "fp",
        endpoints={"items": _endpoint_state()},
        increment=3,
        increments=[done, running],
        marks={"items": BIG, "deals": {"token": "t-9"}},
        backfilled={"items": "2024-02-01"},
    )


def test_run_state_round_trips_every_incremental_field_exactly() -> None:
    state = _incremental_state()
    raw = state.to_bytes()
    data = json.loads(raw)
    assert (data["increment"], data["marks"], data["backfilled"]) == (
        3,
        {"items": BIG, "deals": {"token": "t-9"}},
        {"items": "2024-02-01"},
    )
    assert [i["number"] for i in data["increments"]] == [2, 3]
    back = RunState.from_bytes(raw)
    assert back == state
    assert back.current_increment == state.increments[-1]
    assert back.increments[0].windows["items"].high == BIG  # a cursor beyond 64 bits, exact


def test_run_state_without_increments_is_written_and_read_as_before_them() -> None:
    """A state written before incremental configs (or by a config without any) has none of
    their fields, and reads as increment 0, with nothing recorded."""
    state = RunState("fp", endpoints={"items": _endpoint_state()}, note="n")
    raw = state.to_bytes()
    assert not {"increment", "increments", "marks", "backfilled"} & json.loads(raw).keys()
    old = {"version": 1, "fingerprint": "fp", "status": "complete", "runs": [], "endpoints": {}}
    for back in (RunState.from_bytes(raw), RunState.from_bytes(json.dumps(old).encode())):
        assert (back.increment, back.increments, back.marks, back.backfilled) == (0, [], {}, {})
        assert back.current_increment is None
    assert RunState.from_bytes(raw) == state


def test_folder_path_is_the_current_increments_partition(tmp_path: Path) -> None:
    assert RunState("fp").folder_path(tmp_path, "items") == tmp_path / "items"
    state = _incremental_state()
    assert state.folder_path(tmp_path, "items") == tmp_path / "items" / "increment=3"


def test_run_state_refuses_another_version() -> None:
    data = json.loads(RunState("fp").to_bytes())
    data["version"] = 2
    with pytest.raises(ValueError, match="state version 2 is not 1"):
        RunState.from_bytes(json.dumps(data).encode())
    del data["version"]
    with pytest.raises(ValueError):
        RunState.from_bytes(json.dumps(data).encode())


def test_run_state_repr_counts_without_contents() -> None:
    state = RunState("fp", status="interrupted", endpoints={"items": _endpoint_state()})
    assert repr(state) == "RunState(interrupted, items: 4 done/1 partial/2 files)"


def test_save_and_load_state(tmp_path: Path) -> None:
    assert load_state(tmp_path) is None
    state = RunState("fp", endpoints={"items": _endpoint_state()})
    save_state(tmp_path, state)
    assert state_path(tmp_path) == tmp_path / "_asyncingest" / "state.json"
    assert load_state(tmp_path) == state
    assert sorted(p.name for p in state_path(tmp_path).parent.iterdir()) == ["state.json"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"version": 1, "fingerprint": "f', "not valid JSON"),
        (b'{"version": 1, "fingerprint": "f"}', "the field 'status' is missing"),
        (b'{"version": 9}', "state version 9 is not 1"),
        (b"[1, 2]", "the checkpoint is damaged"),
        (
            b'{"version": 1, "fingerprint": "f", "status": "running", "runs": [],'
            b' "endpoints": {"e": {"files": [], "done": [[0]], "partial": {},'
            b' "journal_lines": 0, "journal_bytes": 0, "dead_letter_bytes": 0,'
            b' "finished": false}}}',
            "the checkpoint is damaged",
        ),
    ],
)
def test_a_damaged_state_is_state_corrupt(tmp_path: Path, content: bytes, why: str) -> None:
    state_path(tmp_path).parent.mkdir(parents=True)
    state_path(tmp_path).write_bytes(content)
    with pytest.raises(StateCorrupt) as info:
        load_state(tmp_path)
    assert why in str(info.value)
    assert str(state_path(tmp_path)) in str(info.value)


def test_write_atomic_keeps_the_old_file_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sub" / "f.json"
    write_atomic(path, b"old")
    assert path.read_bytes() == b"old"

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cp.os, "replace", refuse)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.json"]  # no temp file left


def test_write_atomic_syncs_the_file_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        order.append("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        order.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(cp.os, "fsync", fsync)
    monkeypatch.setattr(cp.os, "replace", replace)
    write_atomic(tmp_path / "f", b"x")
    assert order[:2] == ["fsync", "replace"]


# --------------------------------------------------------------------------- journal


def test_journal_numbers_jobs_and_syncs_what_it_wrote(tmp_path: Path) -> None:
    j = Journal(tmp_path, "child")
    assert j.path == tmp_path / "_asyncingest" / "jobs" / "child.jsonl"
    j.open(0, 0)
    assert [j.append({"id": i}, {"p": BIG}) for i in range(3)] == [0, 1, 2]
    lines, nbytes = j.sync()
    assert lines == 3 and nbytes == j.path.stat().st_size
    j.close()
    j.close()  # idempotent
    jobs = list(Journal(tmp_path, "child").replay(3))
    assert jobs == [(i, {"id": i}, {"p": BIG}) for i in range(3)]
    assert list(Journal(tmp_path, "child").replay(2)) == jobs[:2]
    assert list(Journal(tmp_path, "child").replay(0)) == []
    assert list(Journal(tmp_path, "absent").replay(5)) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_journal_close_on_a_full_disk_is_quiet_and_keeps_what_was_synced(tmp_path: Path) -> None:
    """A failed run closes its journals after the disk filled: the flush of the unsynced tail
    fails, which must not hide the run's own error; the synced lines are what counts."""
    j = Journal(tmp_path, "child")
    j.open(0, 0)
    j.append({"id": 0}, {})
    synced = j.sync()
    j.append({"id": 1}, {})  # buffered, not written yet
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, j._fh.fileno())  # type: ignore[union-attr]  # the disk fills up
    finally:
        os.close(full)
    j.close()  # the flush fails with ENOSPC inside: no error
    j.close()
    assert synced == (1, j.path.stat().st_size)
    assert list(Journal(tmp_path, "child").replay(1)) == [(0, {"id": 0}, {})]


def test_journal_open_drops_what_was_not_committed(tmp_path: Path) -> None:
    j = Journal(tmp_path, "child")
    j.open(0, 0)
    j.append({"id": 0}, {})
    lines, nbytes = j.sync()
    j.append({"id": 1}, {})  # written, never named in a state
    j.close()
    again = Journal(tmp_path, "child")
    again.open(lines, nbytes)
    assert (again.lines, again.nbytes) == (1, nbytes)
    assert again.append({"id": 2}, {}) == 1
    again.sync()
    again.close()
    assert [v for _, v, _ in Journal(tmp_path, "child").replay(2)] == [{"id": 0}, {"id": 2}]


def test_journal_shorter_than_the_state_is_corrupt(tmp_path: Path) -> None:
    j = Journal(tmp_path, "child")
    j.open(0, 0)
    j.append({"id": 0}, {})
    _, nbytes = j.sync()
    j.close()
    with pytest.raises(StateCorrupt, match="shorter than"):
        Journal(tmp_path, "child").open(1, nbytes + 1)
    with pytest.raises(StateCorrupt, match="1 lines, fewer than the 2"):
        list(Journal(tmp_path, "child").replay(2))
    with j.path.open("ab") as fh:
        fh.write(b"{not json\n")
    with pytest.raises(StateCorrupt, match="line 2 cannot be read"):
        list(Journal(tmp_path, "child").replay(2))


# --------------------------------------------------------------------------- resume / fresh


def _part(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"part-{n:05d}.parquet"
    p.write_bytes(b"PAR1")
    return p


def _letters(output: Path, endpoint: str, *letters: DeadLetter) -> int:
    dl = DeadLetters(output, endpoint)
    for letter in letters:
        dl.add(letter)
    nbytes = dl.sync()
    dl.close()
    return nbytes


def _failed(job: int) -> DeadLetter:
    return DeadLetter.failed_request(
        job=job,
        url=f"https://api.test/items?page={job}",
        method="GET",
        reason="HTTP 500",
        attempts=3,
        status=500,
        variables={},
        copy={},
        request=request_to_json(Request("GET", URL(f"https://api.test/items?page={job}"))),
    )


def test_discard_uncommitted_deletes_unnamed_files_and_cuts_dead_letters(tmp_path: Path) -> None:
    keep, drop = _part(tmp_path / "items", 0), _part(tmp_path / "items", 1)
    other = _part(tmp_path / "other", 0)
    (tmp_path / "items" / "notes.txt").write_text("not a part file")
    committed = _letters(tmp_path, "items", _failed(1))
    _letters(tmp_path, "items", _failed(2))  # appended after the state was saved
    state = RunState("fp")
    state.endpoint("items").files = [keep.name]
    state.endpoint("items").dead_letter_bytes = committed
    removed = discard_uncommitted(tmp_path, state, {"items": "items", "other": "other"})
    assert sorted(removed) == sorted([drop, other])  # "other" has no state: nothing committed
    assert keep.exists() and not drop.exists() and not other.exists()
    assert (tmp_path / "items" / "notes.txt").exists()
    dead = tmp_path / "_dead_letter" / "items" / "dead-letters.jsonl"
    assert dead.stat().st_size == committed
    assert dead_letters_left(tmp_path, state) == (1, 0)


def test_discard_leaves_a_dead_letter_file_within_its_committed_size(tmp_path: Path) -> None:
    nbytes = _letters(tmp_path, "items", _failed(1))
    state = RunState("fp")
    state.endpoint("items").dead_letter_bytes = nbytes + 10
    assert discard_uncommitted(tmp_path, state, {"items": "items"}) == []
    assert (tmp_path / "_dead_letter" / "items" / "dead-letters.jsonl").stat().st_size == nbytes


def test_discard_leaves_a_dead_letter_file_at_its_committed_size_untouched(
    tmp_path: Path,
) -> None:
    """Nothing to cut: the file is not even opened for writing (its mtime stays, so a backup
    or a sync tool sees no change)."""
    nbytes = _letters(tmp_path, "items", _failed(1))
    dead = tmp_path / "_dead_letter" / "items" / "dead-letters.jsonl"
    os.utime(dead, ns=(10**18, 10**18))
    state = RunState("fp")
    state.endpoint("items").dead_letter_bytes = nbytes
    discard_uncommitted(tmp_path, state, {"items": "items"})
    assert (dead.stat().st_size, dead.stat().st_mtime_ns) == (nbytes, 10**18)


def test_discard_uncommitted_works_in_the_current_increments_partition(tmp_path: Path) -> None:
    """An incremental resume deletes the unnamed files of the increment under way only: the
    earlier increments' partitions (not named by this increment's state) stay."""
    earlier = _part(tmp_path / "items" / "increment=2", 0)
    keep = _part(tmp_path / "items" / "increment=3", 0)
    drop = _part(tmp_path / "items" / "increment=3", 1)
    state = _incremental_state()
    state.endpoint("items").files = [keep.name]
    assert discard_uncommitted(tmp_path, state, {"items": "items"}) == [drop]
    assert earlier.exists() and keep.exists() and not drop.exists()


def test_has_data_and_wipe(tmp_path: Path) -> None:
    assert not has_data(tmp_path, ["items"])
    _part(tmp_path / "items", 0)
    (tmp_path / "items" / "keep.txt").write_text("x")
    assert has_data(tmp_path, ["other", "items"])
    assert not has_data(tmp_path, ["other"])
    _letters(tmp_path, "items", _failed(1))
    j = Journal(tmp_path, "items")
    j.open(0, 0)
    j.append({}, {})
    j.close()
    save_state(tmp_path, RunState("fp"))
    report = tmp_path / "_asyncingest" / "runs" / "r1.json"
    report.parent.mkdir(parents=True)
    report.write_text("{}")
    wipe(tmp_path, ["items"])
    assert not has_data(tmp_path, ["items"])
    assert (tmp_path / "items" / "keep.txt").exists()
    assert not (tmp_path / "_dead_letter" / "items").exists()
    assert not j.path.parent.exists()
    assert load_state(tmp_path) is None
    assert report.exists()  # run reports stay


def _current_table(output: Path, table: str, versions: int) -> None:
    """A ``merge: latest`` current table as ``state/current.py`` leaves it: version folders
    ``.<table>.v<n>``, the link ``<table>`` to the newest one's data, and the temporary link
    of a switch killed before its rename."""
    for v in range(1, versions + 1):
        _part(output / f".{table}.v{v}" / "data", 0)
        (output / f".{table}.v{v}" / "manifest.json").write_text("{}")
    (output / table).symlink_to(f".{table}.v{versions}/data")
    (output / f".{table}.tmp").symlink_to(f".{table}.v{versions}/data")


def test_wipe_deletes_partitions_current_tables_and_dead_letters_and_nothing_else(
    tmp_path: Path,
) -> None:
    out = tmp_path
    _part(out / "contacts", 0)  # written before the config became incremental
    partitions = [_part(out / "contacts" / f"increment={n}", 0).parent for n in (1, 2)]
    (out / "contacts" / "notes.txt").write_text("the user's")
    _letters(out, "contacts", _failed(1))
    _current_table(out, "contacts_current", 2)
    _part(out / "deals_current", 0)  # a folder, not a link (made by something else)
    # Not named: another endpoint's data, dead letters and current table.
    other = _part(out / "other" / "increment=1", 0)
    _letters(out, "other", _failed(2))
    _current_table(out, "other_current", 1)
    (out / ".other_current.tmp").unlink()
    save_state(out, _incremental_state())

    wipe(out, ["contacts"], ["contacts_current", "deals_current"])

    assert not any(p.exists() for p in partitions)
    assert [p.name for p in (out / "contacts").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in out.iterdir()) == [
        ".other_current.v1",
        "_asyncingest",
        "_dead_letter",
        "contacts",
        "other",
        "other_current",
    ]
    assert [p.name for p in (out / "_dead_letter").iterdir()] == ["other"]
    assert (out / "other_current" / "part-00000.parquet").exists() and other.exists()
    assert load_state(out) is None


def test_wipe_goes_on_past_a_version_folder_it_cannot_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version folder may be busy (a reader still in it: on NFS its open files become
    ``.nfs*`` files and the folder cannot go). Like a rebuild's clean-up, ``--fresh`` leaves
    it and wipes the rest, the state too, so the fresh run can start."""
    _current_table(tmp_path, "contacts_current", 2)
    save_state(tmp_path, RunState("fp"))
    busy = tmp_path / ".contacts_current.v1"
    rmdir = os.rmdir

    def busy_rmdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) == busy:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", busy_rmdir)
    wipe(tmp_path, [], ["contacts_current"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [busy.name, "_asyncingest"]
    assert load_state(tmp_path) is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_wipe_removes_a_pipe_by_a_version_folders_name_without_blocking(tmp_path: Path) -> None:
    """Anything by a hidden version name that is not a folder is unlinked: ``rmtree`` would
    open a named pipe and wait forever for a writer."""
    _current_table(tmp_path, "contacts_current", 1)
    os.mkfifo(tmp_path / ".contacts_current.x")
    wiping = threading.Thread(target=wipe, args=(tmp_path, [], ["contacts_current"]), daemon=True)
    wiping.start()
    wiping.join(30)
    assert not wiping.is_alive(), "wipe blocked on the pipe"
    assert [p.name for p in tmp_path.iterdir()] == []


def _config(out: Path) -> Any:
    return pipeline("https://api.test", [{"name": "items", "path": "/items"}], out)


def test_prepare_a_new_output_and_a_refused_one(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    start = prepare(cfg, tmp_path, fresh=False, retry_failed=False)
    assert (start.resumed, start.already_complete, start.requeued) == (False, False, 0)
    assert start.state.fingerprint == fingerprint(cfg)
    assert start.state.identity is not None
    with pytest.raises(ConfigError, match="no earlier run here"):
        prepare(cfg, tmp_path, fresh=False, retry_failed=True)
    _part(tmp_path / "items", 0)
    with pytest.raises(ConfigError, match="holds Parquet files but no asyncingest state"):
        prepare(cfg, tmp_path, fresh=False, retry_failed=False)
    fresh = prepare(cfg, tmp_path, fresh=True, retry_failed=False)
    assert not fresh.resumed and fresh.state.identity is not None
    assert not has_data(tmp_path, ["items"])


def test_prepare_resumes_refuses_a_changed_config_and_knows_a_complete_run(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path)
    state = RunState(fingerprint(cfg), status="interrupted")  # from before identities
    save_state(tmp_path, state)
    start = prepare(cfg, tmp_path, fresh=False, retry_failed=False)
    assert start.resumed and not start.already_complete
    assert start.state.identity is not None  # added
    save_state(tmp_path, RunState("another", identity=None))
    with pytest.raises(ConfigError):
        prepare(cfg, tmp_path, fresh=False, retry_failed=False)
    save_state(tmp_path, RunState(fingerprint(cfg), status="complete"))
    done = prepare(cfg, tmp_path, fresh=False, retry_failed=False)
    assert done.resumed and done.already_complete and done.state.status == "complete"


def test_retry_failed_requeues_the_committed_request_letters(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    record = DeadLetter.rejected_record({"id": 1}, "no key")
    committed = _letters(tmp_path, "items", _failed(3), record, _failed(5))
    _letters(tmp_path, "items", _failed(9))  # not committed: not requeued
    state = RunState(fingerprint(cfg), status="complete")
    es = state.endpoint("items")
    es.finished, es.dead_letter_bytes = True, committed
    es.done.add_range(0, 10)
    save_state(tmp_path, state)
    start = prepare(cfg, tmp_path, fresh=False, retry_failed=True)
    assert start.requeued == 2 and start.resumed and not start.already_complete
    assert start.state.status == "running"
    es = start.state.endpoint("items")
    assert es.finished is False
    assert sorted(es.partial) == [3, 5]
    assert request_from_json(es.partial[3]).url == URL("https://api.test/items?page=3")
    dead = tmp_path / "_dead_letter" / "items" / "dead-letters.jsonl"
    assert es.dead_letter_bytes == dead.stat().st_size  # only the record's letter is left
    assert [json.loads(line)["kind"] for line in dead.read_bytes().splitlines()] == ["record"]
    assert dead_letters_left(tmp_path, start.state) == (0, 1)


def test_retry_failed_with_nothing_to_requeue_keeps_a_complete_run_complete(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path)
    save_state(tmp_path, RunState(fingerprint(cfg), status="complete"))
    start = prepare(cfg, tmp_path, fresh=False, retry_failed=True)
    assert start.already_complete and start.requeued == 0


def test_requeue_failed_refuses_a_damaged_line(tmp_path: Path) -> None:
    dead = tmp_path / "_dead_letter" / "items" / "dead-letters.jsonl"
    dead.parent.mkdir(parents=True)
    dead.write_bytes(b'{"kind":"record","reason":"x"}\n{broken\n')
    state = RunState("fp")
    state.endpoint("items").dead_letter_bytes = dead.stat().st_size
    with pytest.raises(StateCorrupt, match="line 2 cannot be read") as info:
        requeue_failed(tmp_path, state)
    assert str(dead) in str(info.value)


def test_job_plan_answers_done_part_way_or_start() -> None:
    es = EndpointState()
    plan = JobPlan(es)
    assert plan.empty
    es.done.add(2)
    assert not plan.empty  # read live
    es.partial[4] = request_to_json(_request())
    assert plan.resume_point(2) is False
    assert plan.resume_point(3) is None
    assert plan.resume_point(4) == _request()
    assert not JobPlan(EndpointState(partial={1: request_to_json(_request())})).empty


def _barrier(**kw: Any) -> BarrierResult:
    defaults: dict[str, Any] = {
        "progress": Progress(),
        "files": [],
        "journals": {},
        "dead_letter_bytes": 0,
    }
    return BarrierResult(**(defaults | kw))


def test_apply_folds_a_barrier_into_the_state() -> None:
    state = RunState("fp")
    state.endpoint("items").partial[1] = {"stale": True}
    state.endpoint("items").partial[8] = {"kept": True}
    progress = Progress()
    progress.done.add_range(0, 3)
    progress.partial[5] = _request()
    res = _barrier(
        progress=progress,
        files=["b.parquet", "a.parquet", "c.parquet"],
        journals={"child": (4, 99)},
        dead_letter_bytes=42,
        finished=True,
    )
    apply(state, "items", ["a.parquet"], res, complete=False)
    es = state.endpoint("items")
    assert es.files == ["a.parquet", "b.parquet", "c.parquet"]
    assert es.done.ranges() == [(0, 3)]
    assert sorted(es.partial) == [5, 8]  # job 1 is done now: its part-way request goes
    assert es.partial[5] == request_to_json(_request())
    assert (state.endpoint("child").journal_lines, state.endpoint("child").journal_bytes) == (
        4,
        99,
    )
    assert es.dead_letter_bytes == 42
    assert es.finished is False  # finished, but not the whole run
    apply(state, "items", es.files, _barrier(finished=True), complete=True)
    assert es.finished is True
    apply(state, "other", [], _barrier(finished=False), complete=True)
    assert state.endpoint("other").finished is False


@dataclass
class _Result:
    run_id: str
    written: int
    path: Path


def test_run_report(tmp_path: Path) -> None:
    result = _Result("run-1", 7, tmp_path)
    data = json.loads(report_json("interrupted", result))
    assert data == {
        "state": "interrupted",
        "result": {"run_id": "run-1", "written": 7, "path": str(tmp_path)},
    }
    path = write_run_report(tmp_path, "complete", result)
    assert path == tmp_path / "_asyncingest" / "runs" / "run-1.json"
    assert json.loads(path.read_bytes())["state"] == "complete"
    assert report_json("x", result).startswith(b'{\n  "state"')  # indented for people


def test_a_saved_request_is_sent_again_byte_for_byte() -> None:
    """A link the API gave (a signed query, an encoded cursor) must not be re-encoded."""
    r = Request("GET", URL("https://api.test/x?q=%7Euser&sig=a%2Bb", encoded=True))
    back = request_from_json(json.loads(json.dumps(request_to_json(r))))
    assert str(back.full_url) == "https://api.test/x?q=%7Euser&sig=a%2Bb"


def test_a_journal_never_opened_has_committed_nothing(tmp_path: Path) -> None:
    j = Journal(tmp_path, "child")
    assert j.sync() == (0, 0)
    j.close()
    assert (j.lines, j.nbytes) == (0, 0)


def test_closing_a_journal_writes_out_what_it_buffered(tmp_path: Path) -> None:
    j = Journal(tmp_path, "child")
    j.open(0, 0)
    j.append({"id": 1}, {})
    j.close()  # not synced, so not named in a state; but the file is complete and closed
    assert j.path.stat().st_size == j.nbytes


def test_a_missing_journal_the_state_names_is_corrupt_naming_it(tmp_path: Path) -> None:
    j = Journal(tmp_path, "child")
    with pytest.raises(StateCorrupt, match="0 bytes, shorter than the 1 the state names") as info:
        j.open(1, 1)
    assert str(j.path) in str(info.value)


def test_journal_damage_names_the_file(tmp_path: Path) -> None:
    j = Journal(tmp_path, "child")
    j.open(0, 0)
    j.append({"id": 0}, {})
    j.sync()
    j.close()
    with pytest.raises(StateCorrupt) as short:
        list(Journal(tmp_path, "child").replay(2))
    with j.path.open("ab") as fh:
        fh.write(b"{not json\n")
    with pytest.raises(StateCorrupt) as bad:
        list(Journal(tmp_path, "child").replay(2))
    assert str(j.path) in str(short.value) and str(j.path) in str(bad.value)


def test_run_state_repr_lists_every_endpoint() -> None:
    state = RunState("fp", endpoints={"a": EndpointState(), "b": EndpointState()})
    assert repr(state) == (
        "RunState(running, a: 0 done/0 partial/0 files, b: 0 done/0 partial/0 files)"
    )


def test_the_state_file_is_indented_for_people(tmp_path: Path) -> None:
    save_state(tmp_path, RunState("fp"))
    assert state_path(tmp_path).read_bytes().startswith(b'{\n  "version": 1,\n')


def test_a_failed_save_reports_its_cause_even_if_the_cleanup_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cp.os, "replace", full_disk)
    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "f.json", b"x")
    assert info.value.errno == 28


def test_refusals_name_the_output_and_what_to_do(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    with pytest.raises(ConfigError) as no_run:
        prepare(cfg, tmp_path, fresh=False, retry_failed=True)
    assert str(no_run.value) == f"{tmp_path}: 1 problem\n  - --retry-failed: no earlier run here"
    _part(tmp_path / "items", 0)
    with pytest.raises(ConfigError) as foreign:
        prepare(cfg, tmp_path, fresh=False, retry_failed=False)
    assert str(foreign.value) == (
        f"{tmp_path}: 1 problem\n  - output: holds Parquet files but no asyncingest state, so a "
        "run here could duplicate them; use --fresh to replace them, or another --output"
    )
    fresh = prepare(cfg, tmp_path, fresh=True, retry_failed=False)
    assert fresh.resumed is False and fresh.state.fingerprint == fingerprint(cfg)


def test_retry_failed_requeues_request_letters_only_and_every_endpoint(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    state = RunState(fingerprint(cfg), status="complete")
    state.endpoint("aaa")  # an endpoint without dead letters comes first
    es = state.endpoint("items")
    refused = DeadLetter.refused_job(job=8, reason="unsafe path value", variables={}, copy={})
    records = [DeadLetter.rejected_record({"id": i}, "no key") for i in (1, 2)]
    es.dead_letter_bytes = _letters(tmp_path, "items", refused, _failed(3), *records)
    save_state(tmp_path, state)
    start = prepare(cfg, tmp_path, fresh=False, retry_failed=True)
    assert start.requeued == 1
    assert sorted(start.state.endpoint("items").partial) == [3]
    dead = tmp_path / "_dead_letter" / "items" / "dead-letters.jsonl"
    kept = [json.loads(line) for line in dead.read_bytes().splitlines()]
    assert [(e["kind"], e.get("job")) for e in kept] == [
        ("job", 8),
        ("record", None),
        ("record", None),
    ]


def test_a_changed_config_is_refused_naming_the_output_and_the_change(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    before = pipeline("https://api.test", [{"name": "items", "path": "/things"}], tmp_path)
    save_state(tmp_path, RunState(fingerprint(before), identity=identity(before)))
    with pytest.raises(ConfigError) as info:
        prepare(cfg, tmp_path, fresh=False, retry_failed=False)
    text = str(info.value)
    assert text.startswith(f"{tmp_path}: 2 problems\n")
    assert "/things" in text and "this field changed since this output was started" in text
    save_state(tmp_path, RunState("0123456789abcdef", identity=None))  # an older asyncingest
    with pytest.raises(ConfigError, match="fingerprint 0123456789abcdef -> "):
        prepare(cfg, tmp_path, fresh=False, retry_failed=False)


def test_a_plain_resume_requeues_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    save_state(tmp_path, RunState(fingerprint(cfg), status="interrupted"))
    assert prepare(cfg, tmp_path, fresh=False, retry_failed=False).requeued == 0


def _merge_config(out: Path) -> Any:
    """One incremental endpoint with a current table (``merge: latest``): ``items_current``."""
    incremental = {
        "cursor_field": "updatedAt",
        "param": "updatedAfter",
        "initial": "2020-01-01T00:00:00Z",
    }
    items = {
        "name": "items",
        "path": "/items",
        "primary_key": "id",
        "merge": "latest",
        "incremental": incremental,
    }
    return pipeline("https://api.test", [items], out)


def test_fresh_deletes_the_current_table_and_its_hidden_versions(tmp_path: Path) -> None:
    cfg = _merge_config(tmp_path)
    assert cfg.endpoints[0].current_folder == "items_current"
    save_state(tmp_path, RunState(fingerprint(cfg), identity=identity(cfg)))
    _part(tmp_path / "items" / "increment=1", 0)
    version = tmp_path / ".items_current.v1"  # the link's target (state/current.py)
    _part(version / "data", 0)
    (tmp_path / "items_current").symlink_to(version / "data")
    start = prepare(cfg, tmp_path, fresh=True, retry_failed=False)
    assert not start.resumed
    assert not (tmp_path / "items_current").is_symlink()
    assert not version.exists()
    assert not (tmp_path / "items" / "increment=1").exists()


def test_retry_failed_reopens_the_last_increment(tmp_path: Path) -> None:
    """Same increment, same window and partition, running again until the run completes it."""
    cfg = _merge_config(tmp_path)
    state = RunState(fingerprint(cfg), status="complete", identity=identity(cfg))
    window = Window(start="2020-01-01T00:00:00Z", high="2024-05-01T00:00:00Z", current="done")
    state.increment = 1
    state.increments = [Increment(1, status="complete", windows={"items": window})]
    es = state.endpoint("items")
    es.finished, es.dead_letter_bytes = True, _letters(tmp_path, "items", _failed(2))
    save_state(tmp_path, state)
    start = prepare(cfg, tmp_path, fresh=False, retry_failed=True)
    assert start.requeued == 1 and not start.already_complete
    assert start.state.increment == 1 and len(start.state.increments) == 1
    reopened = start.state.current_increment
    assert reopened is not None
    assert reopened.status == "running"
    assert reopened.windows["items"] == window
    save_state(tmp_path, start.state)  # as the run's first checkpoint writes it
    saved = load_state(tmp_path)
    assert saved is not None and saved.increments[0].status == "running"


def test_retry_failed_with_nothing_to_requeue_leaves_the_increment_complete(
    tmp_path: Path,
) -> None:
    cfg = _merge_config(tmp_path)
    state = RunState(fingerprint(cfg), status="complete", identity=identity(cfg))
    state.increment = 1
    state.increments = [Increment(1, status="complete")]
    save_state(tmp_path, state)
    start = prepare(cfg, tmp_path, fresh=False, retry_failed=True)
    assert start.already_complete and start.state.increments[0].status == "complete"


def test_dead_requests_by_endpoint_counts_committed_failed_requests(tmp_path: Path) -> None:
    """What an increment's marks are held by (``begin_increment``, ``complete_increment``)."""
    state = RunState("fp")
    record = DeadLetter.rejected_record({"id": 1}, "no key")
    state.endpoint("items").dead_letter_bytes = _letters(
        tmp_path, "items", _failed(1), record, _failed(2), record, record
    )
    _letters(tmp_path, "items", _failed(3))  # after the last save: not committed
    state.endpoint("other").dead_letter_bytes = _letters(tmp_path, "other", record)
    state.endpoint("quiet")  # no dead letters at all
    assert dead_requests_by_endpoint(tmp_path, state) == {"items": 2, "other": 0, "quiet": 0}
    assert dead_requests_by_endpoint(tmp_path, RunState("fp")) == {}
