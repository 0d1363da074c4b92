"""``submit``: cut a job into shards and publish them, with publisher confirms, to the shard queue.

Shards already committed under this run id are not published again, so submitting the same run
id after a crash (or after losing the queue) publishes exactly the work not done.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config.identity import changes, fingerprint, identity
from ..config.models import PipelineConfig
from ..errors import ConfigError, Problem
from .broker import QueueNames, connect, declare, declare_run_record
from .commit import RunFolder
from .shards import DEFAULT_SHARD_SIZE, Shard, cut
from .store import check_output, is_uri

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
    """A fresh run id: the UTC time to the second and six random hex digits
    (``20261130T090000Z-1a2b3c``)."""
    import uuid

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


async def submit(
    cfg: PipelineConfig,
    broker: str,
    *,
    run_id: str,
    output: str | Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    names: QueueNames | None = None,
    split_children: bool = True,
) -> Submitted:
    """Publish every shard of ``cfg`` not yet committed under ``run_id``; wait for the broker's
    confirm of each (a publish the broker refuses raises); write the run record. With
    ``split_children``, children found at run time are published as shards by the workers."""
    import aio_pika

    incremental = [e.name for e in cfg.endpoints if e.incremental is not None]
    if incremental:
        raise ConfigError(
            f"run {run_id}",
            [
                Problem(
                    f"endpoints[{incremental[0]}].incremental",
                    "scale-out runs have no increments yet (each shard would fetch from "
                    "initial, and no high-water mark is kept); run an incremental config with "
                    "python -m asyncingest run",
                )
            ],
        )
    names = names or QueueNames()
    output = str(output)
    if not is_uri(output) and not Path(output).is_absolute():
        raise ValueError(f"output must be an absolute path or a URI, got {output}")
    check_output(output, "--output")
    folder = RunFolder(output, run_id)
    previous = await asyncio.to_thread(folder.read_record)
    if previous is not None:
        _same_job(run_id, previous, cfg, shard_size, split_children)
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
            "output": output,
            "queue": names.shards,
            "shards": shard_ids,
            "shard_size": shard_size,
            "split_children": split_children,
            "source": "submit",
            "rate_limits": rate_windows(cfg),
            "fingerprint": fingerprint(cfg),
            "identity": identity(cfg),
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        await asyncio.to_thread(folder.write_record, record)
        # The same record on the broker, so `status ID --broker` finds the output folder.
        run_queue = await declare_run_record(connection, names, run_id)
        await run_queue.purge()
        small = {k: v for k, v in record.items() if k not in ("shards", "identity")}
        small["total"] = len(shard_ids)
        await exchange.publish(
            aio_pika.Message(
                orjson.dumps(small),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
            ),
            routing_key=run_queue.name,
        )
    return Submitted(run_id, output, len(shard_ids), published, skipped, names.shards)


def rate_windows(cfg: PipelineConfig) -> list[list[float]]:
    """The config's rate windows as ``[[requests, seconds], ...]`` (the run record keeps them,
    so ``status`` can read the shared budget's use without the config)."""
    return [[w.requests, w.per_seconds] for w in cfg.api.rate_limits]


def _same_job(
    run_id: str, previous: dict[str, Any], cfg: PipelineConfig, shard_size: int, split: bool
) -> None:
    """Refuse to resubmit ``run_id`` as another job: a changed config or input file, another
    shard size or child policy would cut other shards under the same ids."""
    problems = []
    old_fp = previous.get("fingerprint")
    if old_fp is not None and old_fp != fingerprint(cfg):
        old = previous.get("identity")
        found = changes(old, identity(cfg)) if isinstance(old, dict) else []
        problems += [Problem(where, what) for where, what in found]
        if not found:
            problems.append(Problem("config", f"fingerprint {old_fp} -> {fingerprint(cfg)}"))
    if previous.get("shard_size", shard_size) != shard_size:
        problems.append(Problem("--shard-size", f"{previous['shard_size']} -> {shard_size}"))
    if previous.get("split_children", split) != split:
        problems.append(Problem("--inline-children", "changed"))
    if problems:
        problems.append(
            Problem(
                "--run-id",
                f"run {run_id} was submitted as another job; resubmitting it would mix two "
                "jobs' shards: undo the change, or submit with a new --run-id",
            )
        )
        raise ConfigError(f"run {run_id}", problems)
