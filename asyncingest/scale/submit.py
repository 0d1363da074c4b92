"""``submit``: cut a job into shards and publish them, with publisher confirms, to the shard queue.

Shards already committed under this run id are not published again, so submitting the same run
id after a crash (or after losing the queue) publishes exactly the work not done.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..config.models import PipelineConfig
from .broker import QueueNames, connect, declare
from .commit import RunFolder
from .shards import DEFAULT_SHARD_SIZE, Shard, cut

PUBLISH_WINDOW = 64
"""Publishes awaiting their confirm at once."""


@dataclass(frozen=True)
class Submitted:
    """What ``submit`` did: the run, its shard count, how many were published and how many
    were skipped as committed already."""

    run_id: str
    output: str
    shards: int
    published: int
    skipped: int
    queue: str


def new_run_id() -> str:
    import uuid

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


async def submit(
    cfg: PipelineConfig,
    broker: str,
    *,
    run_id: str,
    output: Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    names: QueueNames | None = None,
    split_children: bool = True,
) -> Submitted:
    """Publish every shard of ``cfg`` not yet committed under ``run_id``; wait for the broker's
    confirm of each (a publish the broker refuses raises); write the run record. With
    ``split_children``, children found at run time are published as shards by the workers."""
    import aio_pika

    names = names or QueueNames()
    if not output.is_absolute():
        raise ValueError(f"output must be an absolute path, got {output}")
    folder = RunFolder(output, run_id)
    committed = await asyncio.to_thread(folder.committed_ids)
    connection = await connect(broker)
    shard_ids: list[str] = []
    published = skipped = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare(channel, names)
        exchange = channel.default_exchange
        pending: set[asyncio.Future[None]] = set()

        async def publish(shard: Shard) -> None:
            message = aio_pika.Message(
                shard.to_bytes(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
                message_id=shard.message_id,
                headers={"run_id": shard.run_id, "shard_id": shard.shard_id},
            )
            await exchange.publish(message, routing_key=names.shards)

        shards = iter(cut(cfg, run_id, output, shard_size, split=split_children))
        while (shard := await asyncio.to_thread(next, shards, None)) is not None:
            shard_ids.append(shard.shard_id)
            if shard.shard_id in committed:
                skipped += 1
                continue
            pending.add(asyncio.ensure_future(publish(shard)))
            published += 1
            if len(pending) >= PUBLISH_WINDOW:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a refused publish (nack, unroutable) raises here
        for task in asyncio.as_completed(pending):
            await task
        record = {
            "run_id": run_id,
            "output": str(output),
            "queue": names.shards,
            "shards": shard_ids,
            "shard_size": shard_size,
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        await asyncio.to_thread(folder.write_record, record)
        # The same record on the broker, so `status ID --broker` finds the output folder.
        run_queue = await channel.declare_queue(names.run_record(run_id), durable=True)
        await run_queue.purge()
        small = {k: v for k, v in record.items() if k != "shards"} | {"total": len(shard_ids)}
        await exchange.publish(
            aio_pika.Message(
                orjson.dumps(small),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
            ),
            routing_key=run_queue.name,
        )
    return Submitted(run_id, str(output), len(shard_ids), published, skipped, names.shards)
