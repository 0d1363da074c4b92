"""The writer's one hand-off per page: room, child-job numbers and the enqueue in one call."""

from __future__ import annotations

import asyncio
import errno
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from yarl import URL

from asyncingest.config.models import ForEach, IncrementalConfig, TransformConfig
from asyncingest.core.cursor import CursorMax
from asyncingest.core.events import RecordsRejected
from asyncingest.core.request import Request
from asyncingest.engine.tap import BatchTap
from asyncingest.engine.writer import MAX_PAGES_QUEUED, Writer
from asyncingest.errors import EnvironmentFailure
from asyncingest.sink.deadletter import DeadLetter, DeadLetters
from asyncingest.sink.parquet import ParquetSink, SinkOptions
from asyncingest.state.checkpoint import Journal
from asyncingest.state.ledger import EndpointLedger
from asyncingest.state.progress import Token
from asyncingest.transform.pool import TransformPool


def parent_writer(tmp_path: Path) -> tuple[Writer, Journal]:
    ledger = EndpointLedger("users", lambda _: None, lambda s: s)
    sink = ParquetSink(tmp_path, "users", SinkOptions())
    writer = Writer("users", sink, DeadLetters(tmp_path, "users"), {}, ledger, 1_000)
    journal = Journal(tmp_path, "posts")
    journal.open(0, 0)
    for uid in (-3, -2, -1):  # three child jobs already journaled: the next one is number 3
        journal.append({"uid": uid}, {})
    writer.link_child("posts", ForEach(endpoint="users", bind={"uid": "id"}), journal)
    return writer, journal


async def test_pages_waiting_for_room_get_child_numbers_in_the_order_they_are_journaled(
    tmp_path: Path,
) -> None:
    writer, journal = parent_writer(tmp_path)
    for i in range(MAX_PAGES_QUEUED):  # fill the inbox: the writer is not running yet
        await writer.put_page([], Token(i, None), [])
    waiting = [
        asyncio.create_task(
            writer.put_page([{"id": 10 * p + k} for k in range(2)], Token(100 + p, None), [])
        )
        for p in range(3)
    ]
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiting)  # no room: nothing numbered yet
    writer.start()
    handed = await asyncio.gather(*waiting)
    writer.finish()
    assert writer.task is not None
    await writer.task
    numbers = [job.number for children in handed for _, jobs in children for job in jobs]
    assert numbers == list(range(3, 9))
    assert journal.lines == 9  # the writer asserts each job's number is its journal line
    journaled = [v["uid"] for _, v, _ in journal.replay(9)][3:]
    assert journaled == [0, 1, 10, 11, 20, 21]


async def test_a_record_without_the_bound_field_is_a_dead_letter_not_a_job(
    tmp_path: Path,
) -> None:
    writer, _ = parent_writer(tmp_path)
    events = _rejections(writer)
    dead: list[Any] = []
    children = await writer.put_page([{"id": 1}, {"name": "x"}], Token(0, None), dead)
    assert [job.number for _, jobs in children for job in jobs] == [3]
    assert [(d.kind, d.reason, d.record) for d in dead] == [
        ("record", "no ['id'] to bind for child endpoint 'posts'", {"name": "x"})
    ]
    assert writer.ledger.stats.records_rejected == 1
    assert events == [RecordsRejected("users", 1, "no ['id'] to bind for child endpoint 'posts'")]


# -- the writer on its own (mutation testing: it was reached only through the engine) ---------


def _full_disk(records: object) -> None:
    """A sink write on a full disk (monkeypatched over ``sink.write``)."""
    raise OSError(errno.ENOSPC, "No space left on device")


def plain_writer(
    tmp_path: Path,
    row_group_rows: int = 1_000,
    *,
    files: Executor | None = None,
    max_rows_per_file: int = 1_000_000,
) -> Writer:
    ledger = EndpointLedger("users", lambda _: None, lambda s: s)
    options = SinkOptions(row_group_rows=row_group_rows, max_rows_per_file=max_rows_per_file)
    sink = ParquetSink(tmp_path, "users", options)
    dead = DeadLetters(tmp_path, "users")
    return Writer("users", sink, dead, {}, ledger, row_group_rows, files=files)


def _next(page: int) -> Request:
    return Request("GET", URL(f"https://api.test/users?page={page}"), page=page)


async def test_a_barrier_before_the_start_answers_at_once_with_nothing(tmp_path: Path) -> None:
    writer = plain_writer(tmp_path)
    res = await writer.barrier()
    assert (res.files, res.journals, res.dead_letter_bytes, res.finished) == ([], {}, 0, False)
    assert not res.progress
    # what the engine then tells a tap is saved (tap.saved_through): no batch yet
    assert writer.answered_batches == 0


async def test_a_barrier_commits_what_came_before_and_hands_tokens_out_once(
    tmp_path: Path,
) -> None:
    writer = plain_writer(tmp_path)
    writer.start()
    letter = DeadLetter.rejected_record({"id": None}, "no key")
    await writer.put_page([{"id": 1}, {"id": 2}], Token(0, None), [letter])
    await writer.put_page([{"id": 3}], Token(1, _next(2)), [])
    assert repr(writer).startswith("Writer(users, queued=")
    res = await writer.barrier()
    assert res.files == ["part-00000.parquet"]
    assert res.progress.done.ranges() == [(0, 1)]
    assert res.progress.partial == {1: _next(2)}
    assert res.dead_letter_bytes == writer.dead.path.stat().st_size > 0
    assert writer.ledger.stats.records_written == 3
    # announced once each (FileCommitted): the ledger lists the first file too
    assert writer.ledger.stats.files == [str(tmp_path / "users" / "part-00000.parquet")]
    again = await writer.barrier()
    assert not again.progress and again.files == ["part-00000.parquet"]
    writer.finish()
    await writer.task  # type: ignore[misc]
    final = await writer.barrier()  # after the end: the final answer, once
    assert final.finished and not final.progress
    assert repr(writer) == (
        "Writer(users, queued=0, buffered=0, pending=0 done/0 partial, files=1)"
    )


async def test_the_end_answers_a_barrier_asked_while_finishing(tmp_path: Path) -> None:
    writer = plain_writer(tmp_path)
    writer.start()
    await writer.put_page([{"id": 1}], Token(0, None), [])
    writer.finish()
    res = await writer.barrier()
    assert res.finished and res.files == ["part-00000.parquet"]
    assert res.progress.done.ranges() == [(0, 1)]


async def test_a_failed_write_fails_every_barrier_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = plain_writer(tmp_path)

    monkeypatch.setattr(writer.sink, "write", _full_disk)
    writer.start()
    await writer.put_page([{"id": 1}], Token(0, None), [])
    waiting = writer.barrier()
    behind = writer.barrier()  # still in the inbox when the writer fails
    with pytest.raises(EnvironmentFailure) as failed:
        await waiting
    # the OSError names no file: the error names the folder the writer was writing
    assert str(writer.sink.directory) in str(failed.value)
    with pytest.raises(EnvironmentFailure):
        await asyncio.wait_for(behind, 30)  # bounded: a barrier left unanswered would hang
    with pytest.raises(EnvironmentFailure):
        await writer.task  # type: ignore[misc]
    with pytest.raises(EnvironmentFailure):
        await writer.barrier()  # asked after: fails at once with the same cause


async def test_a_tap_comes_before_any_record(tmp_path: Path) -> None:
    writer = plain_writer(tmp_path)
    writer.fed = True
    with pytest.raises(RuntimeError) as fed:
        writer.attach_tap(None)  # type: ignore[arg-type]
    assert str(fed.value) == (
        "batches('users'): the endpoint has already written records; call batches() before "
        "the pipeline starts, or right after (before awaiting anything else)"
    )
    writer = plain_writer(tmp_path / "2")
    writer.keep_raw = False
    with pytest.raises(ValueError) as raw:
        writer.attach_tap(None)  # type: ignore[arg-type]
    assert str(raw.value) == (
        "batches('users'): the endpoint keeps no raw records (transform.keep_raw: false)"
    )


# -- the transform path and the final answer (mutation testing: their survivors) -------------


def _letters(writer: Writer) -> list[dict[str, Any]]:
    writer.dead.sync()
    lines = writer.dead.path.read_bytes().splitlines()
    return [{k: v for k, v in orjson.loads(line).items() if k != "time"} for line in lines]


def _rejections(writer: Writer) -> list[RecordsRejected]:
    events: list[RecordsRejected] = []
    writer.ledger = EndpointLedger(
        "users", lambda e: events.append(e) if isinstance(e, RecordsRejected) else None, str
    )
    return events


async def test_a_transform_batch_set_aside_is_dead_lettered_record_by_record_with_its_reason(
    tmp_path: Path,
) -> None:
    writer = plain_writer(tmp_path)
    events = _rejections(writer)
    # the callback the writer hands its TransformPipe for a batch whose transform failed
    writer._set_aside([{"id": 1}, {"id": 2}], "ValueError: boom")
    why = "transform: ValueError: boom"
    assert _letters(writer) == [
        {"kind": "record", "reason": why, "record": {"id": 1}},
        {"kind": "record", "reason": why, "record": {"id": 2}},
    ]
    assert events == [RecordsRejected("users", 2, why)]  # one event for the batch
    assert writer.ledger.stats.records_rejected == 2


async def test_transform_output_the_sink_refuses_is_dead_lettered_and_the_rest_counted(
    tmp_path: Path,
) -> None:
    writer = plain_writer(tmp_path)
    events = _rejections(writer)
    writer.tsink = ParquetSink(tmp_path / "stats", "users_stats", SinkOptions())
    # the callback the writer hands its TransformPipe for what a transform returned
    await writer._write_transformed([{"n": 1}, {"n": "x"}, {"n": 2}, {"n": 3}])
    reason = "field 'n': inferred int64 from earlier records, got str 'x'"
    assert _letters(writer) == [
        {"kind": "record", "reason": f"transform output: {reason}", "record": {"n": "x"}}
    ]
    assert events == [RecordsRejected("users", 1, reason)]
    assert writer.ledger.stats.records_rejected == 1
    assert writer.ledger.stats.records_transformed == 3
    # the state names the transform's committed files under its folder, or a resume would
    # take them for leftovers of a crash and delete them
    writer.tfolder = "users_stats"
    writer.tsink.flush()
    res = await writer.barrier()  # not started: answered at once
    assert res.extra_files == {"users_stats": ["part-00000.parquet"]}
    assert writer.ledger.stats.files == [
        str(tmp_path / "stats" / "users_stats" / "part-00000.parquet")
    ]


async def test_a_writer_failing_while_finishing_fails_the_barrier_asked_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = plain_writer(tmp_path)

    monkeypatch.setattr(writer.sink, "write", _full_disk)
    writer.start()
    await writer.put_page([{"id": 1}], Token(0, None), [])
    writer.finish()
    waiting = writer.barrier()  # answered when the task ends
    with pytest.raises(EnvironmentFailure) as failed:
        await writer.task  # type: ignore[misc]
    await asyncio.sleep(0)  # the task's done callbacks run (awaiting `waiting` could hang)
    assert waiting.done()
    assert waiting.exception() is failed.value


async def test_every_barrier_asked_while_finishing_gets_the_final_answer_tokens_once(
    tmp_path: Path,
) -> None:
    writer = plain_writer(tmp_path)
    writer.start()
    await writer.put_page([{"id": 1}, {"id": 2}], Token(0, None), [])
    await writer.put_page([{"id": 3}], Token(1, None), [])
    writer.finish()
    first, second = writer.barrier(), writer.barrier()
    await writer.task  # type: ignore[misc]
    await asyncio.sleep(0)
    assert first.done() and second.done()
    one, two = first.result(), second.result()
    assert one.finished and two.finished
    assert one.progress.done.ranges() == [(0, 2)]  # pages 0 and 1
    assert not two.progress
    assert one.files == two.files == ["part-00000.parquet"]


async def test_a_writer_cancelled_before_its_first_step_does_not_answer_finished(
    tmp_path: Path,
) -> None:
    """Cancelled before it ran (a run stopped as it began), the writer closed nothing: a
    barrier asked while finishing is cancelled with it, never answered ``finished``."""
    writer = plain_writer(tmp_path)
    writer.start()
    assert writer.task is not None
    writer.task.cancel()  # before its first step: _run's body never runs
    writer.finish()
    waiting = writer.barrier()
    with pytest.raises(asyncio.CancelledError):
        await writer.task
    await asyncio.sleep(0)  # the task's done callbacks run
    assert waiting.cancelled()


def _counts(res: Any) -> tuple[Any, ...]:
    return (res.rows, res.swept, res.unreadable, res.future, res.future_value, res.cursor)


NOTHING = (0, 0, 0, 0, None, None)


async def test_barrier_answers_hand_out_record_and_swept_row_counts_once(tmp_path: Path) -> None:
    """The engine adds each answer's ``rows`` to the increment's count and ``swept`` to how
    far a ``parents: all`` sweep has gone (a resumed sweep skips that many rows): a count
    answered twice, or never, would skip parents' children or sweep them again."""
    writer, journal = parent_writer(tmp_path)
    assert _counts(await writer.barrier()) == NOTHING  # not started
    writer.start()
    await writer.put_page([{"id": 1}, {"id": 2}], Token(0, None), [])
    first = await writer.put_children([{"id": 7}, {"name": "no id"}], 2, {"posts"})
    assert [job.number for _, jobs in first for job in jobs] == [5]  # after the page's 3, 4
    await writer.put_children([], 3, {"posts"})  # rows swept add up until the barrier
    res = await writer.barrier()
    assert (res.rows, res.swept) == (2, 5)  # swept rows are not records: nothing written
    await writer.put_page([{"id": 3}], Token(1, None), [])
    await writer.put_children([{"id": 8}], 1, {"posts"})
    res = await writer.barrier()
    assert (res.rows, res.swept) == (1, 1)
    assert _counts(await writer.barrier()) == NOTHING  # nothing since
    writer.finish()
    await writer.task  # type: ignore[misc]
    final, again = await writer.barrier(), await writer.barrier()
    assert final.finished and again.finished
    assert _counts(final) == _counts(again) == NOTHING
    assert writer.ledger.stats.records_written == 3
    assert [v["uid"] for _, v, _ in journal.replay(journal.lines)][3:] == [1, 2, 7, 3, 8]


async def test_swept_parents_bind_only_the_named_children_and_wait_for_room(
    tmp_path: Path,
) -> None:
    writer, posts = parent_writer(tmp_path)
    likes = Journal(tmp_path, "likes")
    likes.open(0, 0)
    writer.link_child("likes", ForEach(endpoint="users", bind={"user": "id"}), likes)
    for i in range(MAX_PAGES_QUEUED):  # fill the inbox: the writer is not running yet
        await writer.put_page([], Token(i, None), [])
    sweeping = asyncio.create_task(writer.put_children([{"id": 5}, {"id": 6}], 2, {"likes"}))
    await asyncio.sleep(0)
    assert not sweeping.done()  # no room: nothing numbered yet
    writer.start()
    ((link, jobs),) = await sweeping
    assert link.name == "likes" and [(j.number, j.variables) for j in jobs] == [
        (0, {"user": 5}),
        (1, {"user": 6}),
    ]
    writer.finish()
    await writer.task  # type: ignore[misc]
    assert (posts.lines, likes.lines) == (3, 2)  # posts is not among the children swept


async def test_batches_cut_at_barriers_wait_for_one_once_full(tmp_path: Path) -> None:
    """``output: none`` with a state: a full batch asks for a checkpoint and waits for its
    barrier (so a batch never outruns what the state can name), then goes on."""
    writer = plain_writer(tmp_path, row_group_rows=2)
    writer.cut_at_barriers = True
    asked: list[int] = []
    writer.request_checkpoint = lambda: asked.append(len(asked))
    writer.start()
    await writer.put_page([{"id": 1}, {"id": 2}], Token(0, None), [])
    for _ in range(5):
        await asyncio.sleep(0)
    assert asked == [0] and writer.sink.files == []  # full: waiting, nothing written yet
    first = await writer.barrier()
    assert first.files == ["part-00000.parquet"] and first.progress.done.ranges() == [(0, 1)]
    again = await writer.barrier()  # not waiting now: an ordinary barrier
    assert again.files == first.files and not again.progress
    await writer.put_page([{"id": 3}], Token(1, None), [])
    writer.finish()  # the end cuts the last batch: no barrier needed
    await writer.task  # type: ignore[misc]
    assert asked == [0] and len(writer.sink.files) == 2


async def test_a_failing_writer_fails_the_barriers_waiting_for_a_tap_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tap, a barrier's answer waits until the consumer has taken the batches before
    it; if the writer dies meanwhile, that answer fails with the writer's own error."""
    writer = plain_writer(tmp_path)
    writer.attach_tap(BatchTap("users"))
    writer.start()
    await writer.put_page([{"id": 1}], Token(0, None), [])
    delivered = writer.barrier()  # its batch is never taken: the answer waits
    for _ in range(5):
        await asyncio.sleep(0)
    assert not delivered.done()

    monkeypatch.setattr(writer.sink, "write", _full_disk)
    await writer.put_page([{"id": 2}], Token(1, None), [])
    failing = writer.barrier()
    with pytest.raises(EnvironmentFailure) as failed:
        await writer.task  # type: ignore[misc]
    await asyncio.sleep(0)
    assert failing.exception() is failed.value
    assert delivered.done() and delivered.exception() is failed.value


async def test_an_incremental_writers_answers_hand_out_the_mark_and_its_counts_once(
    tmp_path: Path,
) -> None:
    """The mark (the highest cursor applied), the unreadable and future counts and the first
    future cursor go out with the barrier that made their records durable, then start over:
    the engine moves the increment's high-water mark by them."""
    writer = plain_writer(tmp_path)
    spec = IncrementalConfig(cursor_field="t", cursor_type="epoch_s", future_tolerance=3600)
    writer.cursor = CursorMax(spec, now=1_700_000_000.0)
    writer.start()
    page = [{"id": 1, "t": 1_699_990_000}, {"id": 2}, {"id": 3, "t": 1_700_000_000_123}]
    await writer.put_page(page, Token(0, None), [])
    res = await writer.barrier()
    assert (res.cursor, res.rows, res.unreadable) == (1_699_990_000, 3, 1)
    assert (res.future, res.future_value) == (1, 1_700_000_000_123)
    assert writer.cursor.unreadable == 0  # handed out: the next answer starts from zero
    await writer.put_page([{"id": 4, "t": 1_699_990_500}], Token(1, None), [])
    res = await writer.barrier()
    assert (res.cursor, res.rows, res.unreadable, res.future, res.future_value) == (
        1_699_990_500,
        1,
        0,
        0,
        None,
    )
    writer.finish()
    await writer.task  # type: ignore[misc]
    assert _counts(await writer.barrier()) == NOTHING


async def test_records_the_sink_refuses_are_dead_lettered_with_why_and_not_counted_written(
    tmp_path: Path,
) -> None:
    writer = plain_writer(tmp_path)
    events = _rejections(writer)
    writer.start()
    await writer.put_page([{"n": 1}], Token(0, None), [])
    await writer.barrier()
    await writer.put_page([{"n": "x"}, {"n": 2}], Token(1, None), [])
    await writer.barrier()
    reason = "field 'n': inferred int64 from earlier records, got str 'x'"
    assert _letters(writer) == [{"kind": "record", "reason": reason, "record": {"n": "x"}}]
    assert events == [RecordsRejected("users", 1, reason)]
    stats = writer.ledger.stats
    assert (stats.records_written, stats.records_rejected) == (2, 1)
    writer.finish()
    await writer.task  # type: ignore[misc]


async def test_a_token_cursors_mark_is_the_last_token_a_page_carried(tmp_path: Path) -> None:
    writer = plain_writer(tmp_path)
    spec = IncrementalConfig(cursor_type="token", token_path="next_since", param="since")
    writer.cursor = CursorMax(spec)
    writer.start()
    await writer.put_page([{"id": 1}], Token(0, None), [], mark="t1")
    await writer.put_page([{"id": 2}], Token(1, None), [], mark=None)  # carried none
    res = await writer.barrier()
    assert res.cursor == "t1"
    writer.finish()
    await writer.task  # type: ignore[misc]


async def test_a_write_failing_between_barriers_fails_the_writer_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full row group is written without a barrier; if that write fails after an earlier
    barrier was answered, the writer ends with the disk's error (no barrier in hand)."""
    writer = plain_writer(tmp_path, row_group_rows=1)
    writer.start()
    await writer.put_page([{"id": 1}], Token(0, None), [])
    assert (await writer.barrier()).files == ["part-00000.parquet"]

    monkeypatch.setattr(writer.sink, "write", _full_disk)
    await writer.put_page([{"id": 2}], Token(1, None), [])  # full: written when applied
    writer.finish()  # wakes the writer (a lone page waits for company): the write fails
    with pytest.raises(EnvironmentFailure):
        await writer.task  # type: ignore[misc]
    with pytest.raises(EnvironmentFailure):
        await writer.barrier()


# -- what the writer's last survivors changed: each test names the mutant it kills ------------


async def test_pages_wake_a_waiting_writer_a_quarter_of_the_bound_at_a_time(
    tmp_path: Path,
) -> None:
    """One task switch per several pages (``__init__``'s inbox ``batch``): a writer waiting
    for pages is woken by the quarter-bound-th page, or by a barrier, not by each page."""
    writer = plain_writer(tmp_path)
    writer.start()
    await asyncio.sleep(0)  # the writer waits for its inbox
    quarter = MAX_PAGES_QUEUED // 4
    for i in range(quarter - 1):
        await writer.put_page([{"id": i}], Token(i, None), [])
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(writer._inbox) == quarter - 1  # not woken: every page still waits
    await writer.put_page([{"id": quarter}], Token(quarter - 1, None), [])
    await asyncio.sleep(0)
    assert len(writer._inbox) == 0  # woken once, it applied them all in one step
    writer.finish()
    await writer.task  # type: ignore[misc]
    assert writer.ledger.stats.records_written == quarter


async def test_a_page_waiting_for_room_is_let_in_once_the_inbox_is_down_to_half(
    tmp_path: Path,
) -> None:
    """Producers waiting for room (``__init__``'s inbox ``refill_at``) are woken when the
    writer has applied half the bound, not at each free slot."""
    writer = plain_writer(tmp_path, row_group_rows=1)  # a file write, so a yield, per page
    for i in range(MAX_PAGES_QUEUED):
        await writer.put_page([{"id": i}], Token(i, None), [])
    writer.start()
    await writer.put_page([{"id": -1}], Token(MAX_PAGES_QUEUED, None), [])
    assert len(writer._inbox) == MAX_PAGES_QUEUED // 2 + 1  # let in at half, then put
    writer.finish()
    await writer.task  # type: ignore[misc]
    assert writer.ledger.stats.records_written == MAX_PAGES_QUEUED + 1


async def test_file_work_runs_on_the_executor_the_writer_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine gives every writer one file thread, and after a failure shuts it down
    (waiting) before it deletes staging files: file work run anywhere else (``_in_files``,
    ``__init__``'s ``files``) could still be writing a file being deleted."""
    threads: list[str] = []
    with ThreadPoolExecutor(1, thread_name_prefix="files-of-the-test") as files:
        writer = plain_writer(tmp_path, row_group_rows=1, files=files)
        write = writer.sink.write

        def recording_write(records: Any) -> Any:
            threads.append(threading.current_thread().name)
            return write(records)

        monkeypatch.setattr(writer.sink, "write", recording_write)
        writer.start()
        await writer.put_page([{"id": 1}], Token(0, None), [])
        await writer.barrier()
        writer.finish()
        await writer.task  # type: ignore[misc]
    assert threads and all(t.startswith("files-of-the-test") for t in threads), threads


async def test_a_file_committed_by_the_first_write_is_announced(tmp_path: Path) -> None:
    """The ledger announces each committed file once (``__init__``'s ``_committed``), also one
    the very first write completes (``max_rows_per_file`` reached at once)."""
    writer = plain_writer(tmp_path, row_group_rows=2, max_rows_per_file=2)
    ledger = writer.ledger
    writer.start()
    await writer.put_page([{"id": 1}, {"id": 2}], Token(0, None), [])
    await writer.put_page([{"id": 3}, {"id": 4}], Token(1, None), [])
    res = await writer.barrier()
    assert res.files == ["part-00000.parquet", "part-00001.parquet"]
    assert ledger.stats.files == [str(tmp_path / "users" / f) for f in res.files]
    writer.finish()
    await writer.task  # type: ignore[misc]
    assert ledger.stats.files == [str(tmp_path / "users" / f) for f in res.files]  # once


async def test_a_second_barrier_queued_lets_a_cut_batch_through_without_asking_again(
    tmp_path: Path,
) -> None:
    """``cut_at_barriers``: with two barriers queued (``barrier``'s count), the batch filled
    between them waits for the second, already there; asking for another checkpoint instead
    would wait on one that cannot start while the engine waits for the second answer."""
    writer = plain_writer(tmp_path, row_group_rows=2)
    writer.cut_at_barriers = True
    asked = asyncio.Event()
    writer.request_checkpoint = asked.set
    writer.start()  # its task takes its first step at the first yield: after all of these
    await writer.put_page([{"id": 1}], Token(0, None), [])
    first = writer.barrier()
    await writer.put_page([{"id": 2}, {"id": 3}], Token(1, None), [])
    second = writer.barrier()  # both barriers are in the inbox
    asking = asyncio.ensure_future(asked.wait())
    await asyncio.wait([second, asking], return_when=asyncio.FIRST_COMPLETED)
    assert not asked.is_set()  # no checkpoint asked for: a barrier was already queued
    asking.cancel()
    assert [r.progress.done.ranges() for r in (await first, await second)] == [[(0, 1)], [(1, 2)]]
    assert writer._barriers_queued == 0
    writer.finish()
    await writer.task  # type: ignore[misc]


async def test_a_transformed_page_releases_its_token_once_its_output_is_written(
    tmp_path: Path,
) -> None:
    """With a transform, a page's token rides with its batch (``_apply_until_done`` feeds it
    to the pipe) and is done once the batch's output is durable: a barrier names it. A token
    lost there would leave every transformed job undone, refetched after a kill."""
    writer = plain_writer(tmp_path)
    tsink = ParquetSink(tmp_path, "users_out", SinkOptions())
    spec = TransformConfig(function="tests.transform_helpers:identity", batch_size=2)
    async with TransformPool(workers=1) as pool:
        writer.attach_transform(pool, spec, tsink, "users_out")
        writer.start()
        await writer.put_page([{"id": 1}, {"id": 2}], Token(0, None), [])
        await writer.put_page([{"id": 3}], Token(1, _next(2)), [])
        res = await writer.barrier()
        assert res.progress.done.ranges() == [(0, 1)]
        assert res.progress.partial == {1: _next(2)}
        assert res.extra_files == {"users_out": ["part-00000.parquet"]}
        writer.finish()
        await writer.task  # type: ignore[misc]
    assert writer.ledger.stats.records_transformed == 3
    assert writer.ledger.stats.records_written == 3  # keep_raw (the default): raw ones too
