"""A dead letter is one frozen value from where it is made to the line written for it."""

from __future__ import annotations

import dataclasses
import re
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from yarl import URL

from asyncingest.core.records import Job
from asyncingest.core.request import Request
from asyncingest.core.retry import Failure, FailureKind
from asyncingest.sink.deadletter import DeadLetter, DeadLetters, count_left
from asyncingest.state.ledger import EndpointLedger


def written(tmp_path: Path, *letters: DeadLetter) -> list[dict[str, object]]:
    dead = DeadLetters(tmp_path, "users")
    for letter in letters:
        dead.add(letter)
    dead.close()
    return [orjson.loads(line) for line in dead.path.read_bytes().splitlines()]


def test_a_dead_letter_cannot_be_changed_once_made() -> None:
    letter = DeadLetter.rejected_record({"id": 1}, "no key")
    with pytest.raises(dataclasses.FrozenInstanceError):
        letter.reason = "other"  # type: ignore[misc]


def test_the_ledger_makes_request_and_job_dead_letters_with_secrets_redacted(
    tmp_path: Path,
) -> None:
    ledger = EndpointLedger("users", lambda _: None, lambda s: s.replace("s3cret", "***"))
    job = Job(7, {"uid": 3}, {"org": 1})
    failed = ledger.gave_up(
        Request("GET", URL("https://api.test/users/3?token=s3cret")),
        job,
        Failure(FailureKind.HTTP_STATUS, "500 from s3cret host", 500),
        4,
    )
    refused = ledger.refused(job, "unsafe value s3cret")
    assert isinstance(failed, DeadLetter) and isinstance(refused, DeadLetter)
    lines = written(tmp_path, failed, refused, DeadLetter.rejected_record({"id": 1}, "no key"))
    # (the request itself never carries the secret: the client adds it, and scrubs links)
    for e in lines[:2]:
        assert "s3cret" not in f"{e.get('url')} {e['reason']}"
    # The keys and their order of every earlier version: resume and --retry-failed read them.
    assert [list(e) for e in lines] == [
        [
            "kind",
            "job",
            "method",
            "url",
            "reason",
            "attempts",
            "status",
            "variables",
            "copy",
            "request",
            "time",
        ],
        ["kind", "job", "reason", "variables", "copy", "time"],
        ["kind", "reason", "record", "time"],
    ]
    assert lines[0]["job"] == 7 and lines[0]["attempts"] == 4 and lines[0]["status"] == 500
    assert lines[1]["variables"] == {"uid": 3} and lines[1]["copy"] == {"org": 1}
    dead = DeadLetters(tmp_path, "users")
    assert count_left(dead.path, dead.nbytes) == (1, 2)


# -- edges mutation testing found unguarded (nox -s mutants -- deadletter) --------------------


def _deep(levels: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def test_a_failed_request_letter_keeps_every_field(tmp_path: Path) -> None:
    letter = DeadLetter.failed_request(
        job=4,
        url="https://api.test/x?page=2",
        method="POST",
        reason="HTTP 500",
        attempts=3,
        status=500,
        variables={"id": 7},
        copy={"parent": 1},
        request={"method": "POST", "url": "https://api.test/x?page=2"},
    )
    (line,) = written(tmp_path, letter)
    assert {k: v for k, v in line.items() if k != "time"} == {
        "kind": "request",
        "job": 4,
        "method": "POST",
        "url": "https://api.test/x?page=2",
        "reason": "HTTP 500",
        "attempts": 3,
        "status": 500,
        "variables": {"id": 7},
        "copy": {"parent": 1},
        "request": {"method": "POST", "url": "https://api.test/x?page=2"},
    }


def test_each_letter_is_stamped_with_its_utc_time(tmp_path: Path) -> None:
    (line,) = written(tmp_path, DeadLetter.rejected_record({"id": 1}, "no key"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(line["time"]))


def test_a_value_json_cannot_hold_is_written_as_its_text(tmp_path: Path) -> None:
    price = Decimal("1.50")  # from a transform: not a JSON type
    (line,) = written(tmp_path, DeadLetter.rejected_record({"price": price}, "refused"))
    assert line["record"] == {"price": "1.50"}
    assert "record_truncated" not in line and line["reason"] == "refused"


def test_every_part_too_deep_for_json_is_kept_as_truncated_text(tmp_path: Path) -> None:
    deep = _deep(300, "x" * 5_000)
    letter = DeadLetter.failed_request(
        job=1,
        url="u",
        method="GET",
        reason="",
        attempts=1,
        status=None,
        variables={"v": deep},
        copy={"c": deep},
        request={"r": deep},
    )
    (line,) = written(tmp_path, letter)
    for key in ("variables", "copy", "request"):
        assert isinstance(line[key], str) and 5_000 < len(line[key]) <= 10_010, key
    assert str(line["reason"]).startswith("not writable as JSON (")  # no leading "; "
    assert str(line["reason"]).endswith("kept as truncated text")


def test_a_second_writer_of_an_endpoint_appends(tmp_path: Path) -> None:
    """A resumed run opens the endpoint's folder again."""
    first = DeadLetters(tmp_path, "items")
    first.add(DeadLetter.rejected_record({"id": 1}, "r"))
    first.sync()
    first.close()
    again = DeadLetters(tmp_path, "items")
    again.add(DeadLetter.rejected_record({"id": 2}, "r"))
    nbytes = again.sync()
    again.close()
    assert count_left(again.path, nbytes) == (0, 2)


def test_close_is_quiet_when_the_disk_is_full(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    dl = DeadLetters(tmp_path, "items")
    dl.path.parent.mkdir(parents=True)
    dl.path.symlink_to("/dev/full")
    dl.add(DeadLetter.rejected_record({"id": 1}, "r"))  # buffered
    dl.close()  # the flush fails (ENOSPC): what was not synced is not in the state anyway


def test_count_left_reads_only_the_committed_prefix(tmp_path: Path) -> None:
    dl = DeadLetters(tmp_path, "items")
    dl.add(DeadLetter.rejected_record({"id": 1}, "r"))
    committed = dl.sync()
    dl.add(DeadLetter.rejected_record({"id": 2}, "r"))
    dl.sync()
    dl.close()
    assert count_left(dl.path, committed) == (0, 1)
    assert count_left(dl.path, 0) == (0, 0)
    assert count_left(tmp_path / "missing.jsonl", 100) == (0, 0)


def test_the_time_stamp_is_utc_whatever_the_local_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (line,) = written(tmp_path, DeadLetter.rejected_record({"id": 1}, "no key"))
        after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    finally:
        monkeypatch.undo()
        time.tzset()
    assert before <= str(line["time"]) <= after
