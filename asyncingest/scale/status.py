"""``status``: how far a run is: shards done, in flight, failed, waiting; and, given the Redis
of the shared budget, each rate window's use.

The run record on the broker (``<queue>.run.<id>``, read and put back; for a ``from_queue``
run ``queue-<queue>``, the worker's) names the output; the commit records, failure records and
in-flight markers there give the counts, and the shard queue's depth says how much work waits
for any run. Without the broker's record (it expires a week after its last use) ``--output``
reads the record the output keeps.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import ConfigError, Problem
from .broker import QueueNames, connect, redact
from .commit import RunFolder


@dataclass(frozen=True)
class WindowUse:
    """One rate window of the shared budget as Redis counts it: slots in flight plus releases
    still inside the window (``used``), of ``limit`` per ``seconds``."""

    limit: int
    seconds: float
    used: int


@dataclass(frozen=True)
class BudgetUse:
    """The shared budget of a run, read from Redis (``error``: why it could not be)."""

    where: str
    windows: tuple[WindowUse, ...] = ()
    in_flight: int = 0
    paused: float = 0.0
    error: str | None = None

    def __str__(self) -> str:
        if self.error is not None:
            return f"budget {self.where}: {self.error}"
        windows = ", ".join(f"{w.used}/{w.limit} per {w.seconds:g} s" for w in self.windows)
        pause = f"; paused {self.paused:.1f} s more" if self.paused > 0 else ""
        return f"budget {self.where}: {windows}; {self.in_flight} in flight{pause}"


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
    source: str = "submit"
    budget: BudgetUse | None = field(default=None)

    @property
    def waiting(self) -> int:
        """Shards neither done, failed nor in flight."""
        return max(0, self.total - self.done - self.failed - self.in_flight)

    def to_dict(self) -> dict[str, Any]:
        """The counts as a dict, ``waiting`` and the budget included (for ``--json``)."""
        import dataclasses

        out = dataclasses.asdict(self)
        out["waiting"] = self.waiting
        return out

    def __str__(self) -> str:
        return (
            f"run {self.run_id}: {self.done}/{self.total} shards done, {self.in_flight} in "
            f"flight, {self.failed} failed, {self.waiting} waiting; {self.requests:,} requests, "
            f"{self.records:,} records, {self.dead_requests:,} dead-lettered requests\n"
            f"output {self.output}\n"
            f"queue {self.queue}: {self.queue_ready} {self._ready} ready, "
            f"{self.consumers} workers consuming"
            + (f"\n{self.budget}" if self.budget is not None else "")
        )

    @property
    def _ready(self) -> str:
        return "messages" if self.source == "from_queue" else "shards (all runs)"


async def run_status(
    run_id: str,
    broker: str,
    names: QueueNames | None = None,
    *,
    budget: str | None = None,
    output: str | None = None,
) -> RunStatus:
    """The status of ``run_id`` (a :class:`ConfigError` when neither the broker nor
    ``output`` knows it); with ``budget`` (a Redis URL), the shared budget's window use."""
    names = names or QueueNames()
    connection = await connect(broker)
    async with connection:
        record = await _broker_record(connection, names, run_id)
        if record is None and output is not None:
            record = await asyncio.to_thread(RunFolder(output, run_id).read_record)
        if record is None:
            raise ConfigError(
                "status",
                [
                    Problem(
                        run_id,
                        f"no run with this id on queue {names.shards} (a from_queue run is "
                        "queue-<its queue>; give --output for a run whose record expired)",
                    )
                ],
            )
        channel = await connection.channel()
        try:
            shards = await channel.declare_queue(record["queue"], passive=True)
            ready = int(shards.declaration_result.message_count or 0)
            consumers = int(shards.declaration_result.consumer_count or 0)
        except Exception:  # the queue is gone (deleted with the run)
            ready = consumers = 0
    folder = RunFolder(record["output"], run_id)
    use = await _budget_use(budget, run_id, record) if budget is not None else None
    counted = await asyncio.to_thread(_count, folder, record, ready, consumers)
    return counted if use is None else _with_budget(counted, use)


async def _broker_record(connection: Any, names: QueueNames, run_id: str) -> dict[str, Any] | None:
    """The run record on the broker: ``<queue>.run.<id>``, or for ``queue-<name>`` the
    record a from_queue worker keeps beside its queue; None when there is none."""
    candidates = [names.run_record(run_id)]
    if run_id.startswith("queue-"):
        candidates.append(QueueNames(run_id[len("queue-") :]).run_record(run_id))
    for name in candidates:
        channel = await connection.channel()
        try:
            run_queue = await channel.declare_queue(name, passive=True)
        except Exception:
            continue
        for _ in range(20):  # another status may hold the record for a moment
            message = await run_queue.get(no_ack=False, fail=False)
            if message is not None:
                record: dict[str, Any] = orjson.loads(message.body)
                await message.nack(requeue=True)
                return record
            await asyncio.sleep(0.1)
    return None


async def _budget_use(url: str, run_id: str, record: dict[str, Any]) -> BudgetUse:
    """The run's shared budget as Redis counts it now (one peek: nothing granted)."""
    where = redact(url)
    windows = [(int(n), float(w)) for n, w in record.get("rate_limits") or ()]
    if not windows:
        return BudgetUse(where, error="the run record names no rate windows")
    try:
        from ..limits.redis_budget import RedisBudget
    except ImportError:
        return BudgetUse(where, error="redis-py is not installed (asyncingest[scale])")
    budget = RedisBudget(url, windows, name=f"run-{run_id}")
    try:
        await budget.peek()
    except ConnectionError as exc:
        return BudgetUse(where, error=str(exc))
    finally:
        await budget.aclose()
    return BudgetUse(
        where,
        tuple(WindowUse(u.limit, u.seconds, u.used) for u in budget.usage()),
        budget.in_flight,
        budget.pause_left() or 0.0,
    )


def _with_budget(status: RunStatus, use: BudgetUse) -> RunStatus:
    import dataclasses

    return dataclasses.replace(status, budget=use)


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
    source = str(record.get("source", "submit"))
    total = int(record.get("total", len(record.get("shards", ())))) + discovered
    if source == "from_queue":  # no fixed total: what was taken, plus what waits
        total = len(done) + len(failed) + len(in_flight) + ready
    return RunStatus(
        run_id=folder.run_id,
        output=str(folder.output),
        total=total,
        done=len(done),
        in_flight=len(in_flight),
        failed=len(failed),
        queue=str(record["queue"]),
        queue_ready=ready,
        consumers=consumers,
        requests=requests,
        records=records,
        dead_requests=dead,
        source=source,
    )
