"""Channel: the engine's FIFO hand-off (jobs to workers, pages to the writer)."""

from __future__ import annotations

import asyncio

import pytest

from asyncingest.engine.channel import Channel


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_items_come_out_in_the_order_they_went_in() -> None:
    ch: Channel[int] = Channel()
    for i in range(5):
        ch.put_nowait(i)
    assert len(ch) == 5 and ch
    assert [ch.pop() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert not ch
    with pytest.raises(IndexError):
        ch.pop()


async def test_get_waits_for_an_item_and_getters_are_served_first_come_first_served() -> None:
    ch: Channel[str] = Channel()
    got: list[tuple[int, str]] = []

    async def getter(n: int) -> None:
        got.append((n, await ch.get()))

    tasks = [asyncio.create_task(getter(n)) for n in range(3)]
    await settle()
    assert got == [] and "3 getters waiting" in repr(ch)
    for item in "abc":
        ch.put_nowait(item)
    await asyncio.gather(*tasks)
    assert got == [(0, "a"), (1, "b"), (2, "c")]


async def test_put_waits_while_full_and_each_pop_lets_one_producer_in() -> None:
    ch: Channel[int] = Channel(maxsize=2)
    await ch.put(1)
    await ch.put(2)
    assert ch.full()
    third = asyncio.create_task(ch.put(3))
    fourth = asyncio.create_task(ch.put(4))
    await settle()
    assert not third.done() and not fourth.done() and len(ch) == 2
    assert ch.pop() == 1
    await settle()
    assert third.done() and not fourth.done()
    assert [ch.pop(), ch.pop()] == [2, 3]
    await fourth
    assert ch.pop() == 4


async def test_put_nowait_ignores_the_bound() -> None:
    """A barrier or end-of-input marker must be enqueued at once, even on a full channel."""
    ch: Channel[object] = Channel(maxsize=1)
    ch.put_nowait("page")
    ch.put_nowait("barrier")
    assert len(ch) == 2 and repr(ch).startswith("Channel(2/1 items")


async def test_wait_for_room_returns_at_once_when_there_is_room() -> None:
    ch: Channel[int] = Channel(maxsize=1)
    await ch.wait_for_room()
    ch.put_nowait(1)
    waiting = asyncio.create_task(ch.wait_for_room())
    await settle()
    assert not waiting.done()
    ch.pop()
    await settle()
    assert waiting.done()


async def test_a_getter_cancelled_after_its_wake_up_passes_the_item_on() -> None:
    ch: Channel[str] = Channel()
    first = asyncio.create_task(ch.get())
    second = asyncio.create_task(ch.get())
    await settle()
    ch.put_nowait("only")  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == "only"


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    ch: Channel[int] = Channel(maxsize=1)
    ch.put_nowait(0)
    getter_ch: Channel[int] = Channel()
    tasks = [asyncio.create_task(ch.put(1)), asyncio.create_task(getter_ch.get())]
    await settle()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert "0 getters waiting, 0 putters waiting" in repr(getter_ch)
    assert "0 putters waiting" in repr(ch)


async def test_a_producer_cancelled_after_its_wake_up_passes_the_room_on() -> None:
    ch: Channel[int] = Channel(maxsize=1)
    ch.put_nowait(0)
    first = asyncio.create_task(ch.put(1))
    second = asyncio.create_task(ch.put(2))
    await settle()
    ch.pop()  # room for one: wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert ch.pop() == 2 and not ch


async def test_a_batched_getter_wakes_for_a_batch_or_a_flush() -> None:
    ch: Channel[int] = Channel(8, batch=3)
    getter = asyncio.create_task(ch.get())
    await settle()
    ch.put_nowait(1)
    ch.put_nowait(2)
    await settle()
    assert not getter.done()  # two waiting, the batch is three
    ch.put_nowait(3)
    await settle()
    assert getter.result() == 1 and [ch.pop(), ch.pop()] == [2, 3]
    getter = asyncio.create_task(ch.get())
    await settle()  # waiting on an empty channel
    ch.put_nowait(4)
    await settle()
    assert not getter.done()
    ch.flush()  # a barrier: wake now
    await settle()
    assert getter.result() == 4


async def test_a_producer_waiting_for_room_wakes_at_the_refill_mark() -> None:
    ch: Channel[int] = Channel(4, refill_at=2)
    for i in range(4):
        ch.put_nowait(i)
    producer = asyncio.create_task(ch.put(4))
    await settle()
    ch.pop()  # three left: room, but above the mark
    await settle()
    assert not producer.done()
    ch.pop()  # two left: the mark
    await settle()
    assert producer.done() and len(ch) == 3


def test_batch_must_fit_the_bound() -> None:
    with pytest.raises(ValueError, match="batch"):
        Channel(4, batch=5)
