"""A dead letter is one frozen value from where it is made to the line written for it."""

from __future__ import annotations

import dataclasses
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
