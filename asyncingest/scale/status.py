"""``status``: how far a run is: shards done, in flight, failed, waiting.

The run record on the broker (``<queue>.run.<id>``, read and put back) names the output folder;
the commit records, failure records and in-flight markers there give the counts, and the shard
queue's depth says how much work waits for any run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ConfigError, Problem
from .broker import QueueNames, connect
from .commit import RunFolder


@dataclass(frozen=True)
class RunStatus:
    """Counts of one run's shards, and the shard queue's depth (all runs)."""

    run_id: str
    output: str
    total: int
    done: int
    in_flight: int
    failed: int
    queue: str
    queue_ready: int
    consumers: int
    requests: int
    records: int
    dead_requests: int

    @property
    def waiting(self) -> int:
        """Shards neither done, failed nor in flight."""
        return max(0, self.total - self.done - self.failed - self.in_flight)

    def to_dict(self) -> dict[str, Any]:
        """The counts as a dict, ``waiting`` included (for ``--json``)."""
        out = dict(self.__dict__)
        out["waiting"] = self.waiting
        return out

    def __str__(self) -> str:
        return (
            f"run {self.run_id}: {self.done}/{self.total} shards done, {self.in_flight} in "
            f"flight, {self.failed} failed, {self.waiting} waiting; {self.requests:,} requests, "
            f"{self.records:,} records, {self.dead_requests:,} dead-lettered requests\n"
            f"output {self.output}\n"
            f"queue {self.queue}: {self.queue_ready} shards ready (all runs), "
            f"{self.consumers} workers consuming"
        )


async def run_status(run_id: str, broker: str, names: QueueNames | None = None) -> RunStatus:
    """The status of ``run_id`` (a :class:`ConfigError` when the broker does not know it)."""
    names = names or QueueNames()
    connection = await connect(broker)
    async with connection:
        channel = await connection.channel()
        record: dict[str, Any] | None = None
        try:
            run_queue = await channel.declare_queue(names.run_record(run_id), passive=True)
        except Exception:
            raise ConfigError(
                "status", [Problem(run_id, f"no run with this id on queue {names.shards}")]
            ) from None
        for _ in range(20):  # another status may hold the record for a moment
            message = await run_queue.get(no_ack=False, fail=False)
            if message is not None:
                record = orjson.loads(message.body)
                await message.nack(requeue=True)
                break
            await asyncio.sleep(0.1)
        if record is None:
            raise ConfigError("status", [Problem(run_id, "the run record is missing")])
        channel = await connection.channel()
        shards = await channel.declare_queue(record["queue"], passive=True)
        ready = shards.declaration_result.message_count or 0
        consumers = shards.declaration_result.consumer_count or 0
    folder = RunFolder(record["output"], run_id)
    return await asyncio.to_thread(_count, folder, record, int(ready), int(consumers))


def _count(folder: RunFolder, record: dict[str, Any], ready: int, consumers: int) -> RunStatus:
    done = folder.committed_ids()
    failed = folder.failed_ids() - done
    in_flight = folder.inflight_ids() - done - failed
    requests = records = dead = discovered = 0
    for shard_id in done:
        manifest = folder.committed(shard_id) or {}
        discovered += len(manifest.get("children", ()))
        requests += int(manifest.get("requests", 0))
        records += int(manifest.get("records", 0))
        dead += int(manifest.get("dead_requests", 0))
    return RunStatus(
        run_id=folder.run_id,
        output=str(folder.output),
        total=int(record.get("total", 0)) + discovered,
        done=len(done),
        in_flight=len(in_flight),
        failed=len(failed),
        queue=str(record["queue"]),
        queue_ready=ready,
        consumers=consumers,
        requests=requests,
        records=records,
        dead_requests=dead,
    )
