"""The ledger's books, as unit tests: what each call counts and which event it emits.

Mutation testing (``nox -s mutants``) found the ledger's counters covered only by end-to-end
runs; these pin them where a mutant is cheap to kill. Every text passes the redaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from yarl import URL

from asyncingest.core.events import (
    BreakerChanged,
    FileCommitted,
    JobsQueued,
    RecordsRejected,
    RecordsWritten,
    RequestFailed,
    RequestFinished,
    RequestRetried,
)
from asyncingest.core.records import Job
from asyncingest.core.request import Page, Request
from asyncingest.core.retry import Failure, FailureKind
from asyncingest.limits.breaker import BreakerState, Transition
from asyncingest.sink.deadletter import DeadLetter, DeadLetters
from asyncingest.state.ledger import EndpointLedger

SECRET = "s3cret"


def ledger() -> tuple[EndpointLedger, list[Any]]:
    events: list[Any] = []
    return EndpointLedger("users", events.append, lambda s: s.replace(SECRET, "***")), events


def test_a_request_that_gives_up_is_counted_reported_and_described() -> None:
    books, events = ledger()
    job = Job(3, {"uid": 7}, {"org": 1})
    request = Request("GET", URL(f"https://api.test/users/7?k={SECRET}"))
    failure = Failure(FailureKind.HTTP_STATUS, f"500 says {SECRET}", 500)
    letter = books.gave_up(request, job, failure, 4, f"gave up after 4 attempts: {SECRET}")
    s = books.summary()
    assert (s.failed_requests, s.failures) == (1, {"HTTP status": 1})
    assert s.first_errors == ("https://api.test/users/7?k=***: gave up after 4 attempts: ***",)
    assert events == [
        RequestFailed(
            "users", "https://api.test/users/7?k=***", "gave up after 4 attempts: ***", 4, 500
        )
    ]
    assert letter == DeadLetter.failed_request(
        job=3,
        url="https://api.test/users/7?k=***",
        method="GET",
        reason="gave up after 4 attempts: ***",
        attempts=4,
        status=500,
        variables={"uid": 7},
        copy={"org": 1},
        request=letter.request or {},
    )
    assert letter.request is not None and letter.request["method"] == "GET"


def test_without_a_reason_the_failure_detail_is_the_reason() -> None:
    books, events = ledger()
    failure = Failure(FailureKind.WRONG_SHAPE, f"not a list {SECRET}")
    letter = books.gave_up(Request("GET", URL("https://api.test/u")), Job(0, {}, {}), failure, 1)
    assert letter.reason == "not a list ***" and events[0].reason == "not a list ***"
    assert books.summary().failures == {"unexpected body shape": 1}


def test_a_refused_job_is_a_failed_request_of_its_own_kind() -> None:
    books, events = ledger()
    letter = books.refused(Job(5, {"id": ".."}, {}), f"unsafe {SECRET}")
    s = books.summary()
    assert (s.failed_requests, s.failures) == (1, {"unsafe path value": 1})
    assert s.first_errors == ("job 5: unsafe ***",)
    assert events == [RequestFailed("users", "job 5", "unsafe ***", 0, None)]
    assert (letter.kind, letter.job, letter.reason, letter.variables) == (
        "job",
        5,
        "unsafe ***",
        {"id": ".."},
    )


def test_records_rejected_written_and_files_committed_are_counted_once_each() -> None:
    books, events = ledger()
    books.rejected("no key", 3)
    books.rejected("bad type")
    books.written(5)
    books.written(0)  # nothing written: no event
    books.committed([Path("a/part-00000.parquet"), Path("a/part-00001.parquet")])
    s = books.summary()
    assert (s.records_rejected, s.records_written) == (4, 5)
    assert s.first_errors == ("no key", "bad type")
    assert s.files == ("a/part-00000.parquet", "a/part-00001.parquet")
    assert [type(e).__name__ for e in events] == [
        "RecordsRejected",
        "RecordsRejected",
        "RecordsWritten",
        "FileCommitted",
        "FileCommitted",
    ]
    assert events[0] == RecordsRejected("users", 3, "no key")
    assert events[2] == RecordsWritten("users", 5)


def test_only_the_first_five_errors_are_kept() -> None:
    books, _ = ledger()
    for i in range(7):
        books.rejected(f"reason {i}")
    assert books.summary().first_errors == tuple(f"reason {i}" for i in range(5))


def test_a_record_too_deep_for_json_is_kept_as_truncated_text(tmp_path: Path) -> None:
    deep: Any = 1
    for _ in range(300):  # orjson writes at most 254 levels
        deep = {"a": deep}
    dead = DeadLetters(tmp_path, "users")
    dead.add(DeadLetter.rejected_record({"id": 1, "deep": deep}, "too deep"))
    dead.add(DeadLetter.rejected_record({"id": 2}, "no key"))
    dead.close()
    first, second = (orjson.loads(line) for line in dead.path.read_bytes().splitlines())
    assert first["kind"] == "record" and first["record_truncated"] is True
    assert isinstance(first["record"], str) and first["record"].startswith('{"id":1,"deep":{"a":')
    assert first["reason"].startswith("too deep; not writable as JSON (")
    assert first["reason"].endswith("): kept as truncated text")
    assert second == {
        "kind": "record",
        "reason": "no key",
        "record": {"id": 2},
        "time": second["time"],
    }
    assert dead.count == 2 and dead.nbytes == dead.path.stat().st_size


def test_each_attempt_is_counted_and_reported_with_its_outcome() -> None:

    books, events = ledger()
    request = Request("GET", URL(f"https://api.test/u?k={SECRET}"))
    failure = Failure(FailureKind.HTTP_STATUS, f"503 {SECRET}", 503)
    page = Page(request, 200, {}, [], [{"id": 1}, {"id": 2}])
    books.attempted(request, 1, 503, 10, failure, 0.25, 0.5)
    books.attempted(request, 2, 200, 30, page, 0.125, 0.0)
    books.attempted(request, 3, None, 0, Failure(FailureKind.RESET, "reset"), 0.0, 1.0)
    s = books.summary()
    assert (s.requests, s.nbytes, s.limiter_wait) == (3, 40, 1.5)
    assert s.statuses == {503: 1, 200: 1}  # no status: not counted
    url = "https://api.test/u?k=***"
    assert events == [
        RequestFinished("users", "GET", url, 503, 1, False, 0.25, 0.5, 10, 0, "503 ***"),
        RequestFinished("users", "GET", url, 200, 2, True, 0.125, 0.0, 30, 2, None),
        RequestFinished("users", "GET", url, None, 3, False, 0.0, 1.0, 0, 0, "reset"),
    ]


def test_attempts_are_counted_even_when_nobody_listens() -> None:
    events: list[Any] = []
    books = EndpointLedger("users", events.append, str, listening=lambda: False)
    books.attempted(
        Request("GET", URL("https://api.test/u")),
        1,
        200,
        5,
        Failure(FailureKind.RESET, "x"),
        0.1,
        0.2,
    )
    assert events == [] and books.summary().requests == 1


def test_a_retry_is_counted_and_reported_redacted() -> None:

    books, events = ledger()
    request = Request("GET", URL("https://api.test/u"))
    books.retrying(request, Failure(FailureKind.HTTP_STATUS, f"echo {SECRET}", 500), 2, 0.75)
    assert books.summary().retries == 1
    assert events == [RequestRetried("users", "https://api.test/u", "echo ***", 2, 0.75, 500)]


def test_breaker_moves_are_reported_and_openings_counted() -> None:

    books, events = ledger()
    books.breaker_changed(Transition(BreakerState.CLOSED, BreakerState.OPEN, 5, 30.0))
    books.breaker_changed(Transition(BreakerState.OPEN, BreakerState.HALF_OPEN, 5, 0.0))
    assert books.summary().breaker_opens == 1
    assert events == [
        BreakerChanged("users", "open", "closed", 5, 30.0),
        BreakerChanged("users", "half-open", "open", 5, 0.0),
    ]


def test_jobs_records_and_times_are_counted() -> None:

    books, events = ledger()
    books.jobs_submitted(4)
    books.jobs_submitted(2)
    books.jobs_queued(3)
    books.jobs_queued(0)  # nothing queued: no event
    books.received(7)
    books.received(1)
    books.transformed(6)
    books.started(100.0)
    books.finished(112.5)
    s = books.summary()
    assert (s.jobs, s.records_received, s.records_transformed, s.duration) == (6, 8, 6, 12.5)
    assert events == [JobsQueued("users", 3)]
    assert repr(books) == "EndpointLedger(users, jobs=6, requests=0, records=0, failed=0)"


# -- counts over several events (mutation testing: each was seen once) ------------------------


def test_every_count_adds_up_over_several_events(tmp_path: Path) -> None:
    entered: list[int] = []

    class CountingLock:
        def __enter__(self) -> None:
            entered.append(1)

        def __exit__(self, *exc: object) -> None:
            return None

    events: list[Any] = []
    books = EndpointLedger("users", events.append, lambda s: s, lock=CountingLock())
    request = Request("GET", URL("https://api.test/u"))
    failure = Failure(FailureKind.HTTP_STATUS, "boom", 503)
    for _ in range(2):
        books.attempted(request, 1, 503, 10, failure, 0.1, 0.0)
        books.retrying(request, failure, 1, 0.5)
        books.gave_up(request, Job(0, {}, {}), failure, 2)
        books.refused(Job(1, {}, {}), "unsafe")
        books.transformed(3)
    books.breaker_changed(Transition(BreakerState.CLOSED, BreakerState.OPEN, 3, 1.0))
    books.breaker_changed(Transition(BreakerState.OPEN, BreakerState.HALF_OPEN, 3, 0.0))
    books.breaker_changed(Transition(BreakerState.HALF_OPEN, BreakerState.OPEN, 4, 2.0))
    books.schema_noted({"extra": 2}, {"blob": "a list where an object was"})
    s = books.summary()
    assert s.name == "users" and books.stats.name == "users"
    assert (s.requests, s.retries, s.failed_requests) == (2, 2, 4)
    assert s.failures == {"HTTP status": 2, "unsafe path value": 2}
    assert books.stats.statuses == {503: 2}
    assert (books.stats.breaker_opens, books.stats.records_transformed) == (2, 6)
    assert books.stats.dropped_fields == {"extra": 2}
    assert books.stats.json_fallbacks == {"blob": "a list where an object was"}
    assert entered  # the books are kept under the lock given
    books.committed([tmp_path / "part-00000.parquet"])
    assert events[-1] == FileCommitted("users", str(tmp_path / "part-00000.parquet"))
