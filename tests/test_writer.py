"""The writer's one hand-off per page: room, child-job numbers and the enqueue in one call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from asyncingest.config.models import ForEach
from asyncingest.engine.writer import MAX_PAGES_QUEUED, Writer
from asyncingest.sink.deadletter import DeadLetters
from asyncingest.sink.parquet import ParquetSink, SinkOptions
from asyncingest.state.checkpoint import Journal
from asyncingest.state.ledger import EndpointLedger
from asyncingest.state.progress import Token


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
    dead: list[Any] = []
    children = await writer.put_page([{"id": 1}, {"name": "x"}], Token(0, None), dead)
    assert [job.number for _, jobs in children for job in jobs] == [3]
    assert len(dead) == 1
    assert writer.ledger.stats.records_rejected == 1
