"""``worker``: take shards from the queue, run each with the ordinary engine into a private staging
folder, commit, publish, and only then ack (docs/scale-out.md).

N identical processes; each runs ``shards_at_once`` shards at a time and asks the broker for no
more than that (prefetch). A committed shard delivered again is published (a roll-forward) and
acked without a request. A failing shard is requeued; on its last delivery it goes to the
dead-letter queue with the reason. SIGTERM: no new shards, the ones in hand finish; a second
SIGTERM stops them and requeues them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..config.models import PipelineConfig
from ..core.crashpoints import crash_point
from ..engine.pipeline import Pipeline
from ..errors import ConfigError, EnvironmentFailure, Problem
from .broker import DELIVERY_LIMIT, QueueNames, connect, declare, declare_run_record, redact
from .budgets import Budgets
from .commit import RunFolder
from .pools import Pools
from .shards import (
    Shard,
    child_shards,
    config_json,
    message_shard,
    queue_run_id,
    shard_config,
)

if TYPE_CHECKING:
    import aio_pika.abc

log = logging.getLogger("asyncingest.scale.worker")

HEARTBEAT_SECONDS = 5.0
REASON_HEADER = "x-asyncingest-reason"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass
class WorkerStats:
    """What a worker has done since it started (also what its metrics show)."""

    committed: int = 0
    already_committed: int = 0
    requeued: int = 0
    dead_lettered: int = 0
    requests: int = 0
    durations: list[float] = field(default_factory=list)


class ShardObserver:
    """Hooks for metrics (no-ops here): a shard done, failed, its duration."""

    def shard_done(self, shard: Shard, seconds: float, requests: int, replayed: bool) -> None:
        """A shard was committed (``replayed``: it had been, by an earlier delivery)."""

    def shard_failed(self, shard: Shard | None, reason: str, dead: bool) -> None:
        """A shard failed: requeued, or dead-lettered when ``dead``."""


@dataclass(frozen=True)
class QueueSource:
    """A ``from_queue`` endpoint: the worker consumes the user's queue, each message one id."""

    endpoint: str
    queue: str
    field: str
    output: str
    config: dict[str, Any]
    rate_limits: tuple[tuple[int, float], ...] = ()

    @classmethod
    def from_config(cls, cfg: PipelineConfig, output: str) -> QueueSource:
        """The config's one ``from_queue`` endpoint (a :class:`ConfigError` if there is none,
        or more than one, or another root the queue worker would never run)."""
        queued = [e for e in cfg.endpoints if e.from_queue is not None]
        others = [e.name for e in cfg.endpoints if e.parent is None and e.from_queue is None]
        problems = []
        if len(queued) != 1:
            problems.append(Problem("endpoints", "expected exactly one endpoint with from_queue"))
        if others:
            problems.append(
                Problem(
                    "endpoints",
                    f"{', '.join(others)}: a queue worker runs only the from_queue endpoint and "
                    "its children; submit the others",
                )
            )
        problems += [
            Problem(
                f"endpoints[{e.name}].incremental",
                "not with a queue worker: a worker's messages have no increments (run it with "
                "python -m asyncingest run)",
            )
            for e in cfg.endpoints
            if e.incremental is not None
        ]
        if problems:
            raise ConfigError("--config", problems)
        spec = queued[0].from_queue
        assert spec is not None
        windows = tuple((w.requests, w.per_seconds) for w in cfg.api.rate_limits)
        return cls(queued[0].name, spec.queue, spec.field, output, config_json(cfg), windows)


class MessageFailed(Exception):
    """A queue message whose request failed (its dead letter says why)."""


def _message_key(message: aio_pika.abc.AbstractIncomingMessage) -> str:
    mid = message.message_id
    if mid and _SAFE_KEY.match(mid):
        return mid
    return hashlib.sha256(message.body).hexdigest()[:24]


def _dead_letter_reason(staging: Path) -> str:
    for f in sorted(staging.glob("_dead_letter/*/*.jsonl")):
        with f.open("rb") as fh:
            line = fh.readline()
        if line:
            try:
                return str(orjson.loads(line).get("reason", "failed"))
            except (orjson.JSONDecodeError, AttributeError):
                return line.decode(errors="replace")[:500]
    return "failed"


class Worker:
    """One worker process's consumer: ``await Worker(url).run()`` until :meth:`stop` or SIGTERM."""

    def __init__(
        self,
        broker: str,
        *,
        names: QueueNames | None = None,
        shards_at_once: int = 1,
        delivery_limit: int = DELIVERY_LIMIT,
        observer: ShardObserver | None = None,
        engine_options: Callable[[], dict[str, Any]] | None = None,
        source: QueueSource | None = None,
        budgets: Budgets | None = None,
        pools: Pools | None = None,
    ) -> None:
        self.broker = broker
        self.budgets = budgets or Budgets()
        self.pools = pools or Pools()
        self.source = source
        self.names = QueueNames(source.queue) if source is not None else (names or QueueNames())
        self.shards_at_once = shards_at_once
        self.delivery_limit = delivery_limit
        self.observer = observer or ShardObserver()
        self.engine_options = engine_options or dict
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()
        self._lost: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pipelines: set[Pipeline] = set()
        self._hard_stop = False
        self._channel: aio_pika.abc.AbstractChannel | None = None

    def __repr__(self) -> str:
        return (
            f"Worker({redact(self.broker)}, queue={self.names.shards}, "
            f"in hand={len(self._tasks)}, stopping={self._stopping.is_set()})"
        )

    def stop(self) -> None:
        """First call: take no new shards, finish the ones in hand. Second: stop those too
        (their staging is deleted, they are requeued)."""
        if self._stopping.is_set():
            self._hard_stop = True
            for pipeline in list(self._pipelines):
                self._stop_soon(pipeline)
            log.warning("stopping the shards in hand; they go back to the queue")
            return
        log.warning("stopping: no new shards; finishing %d in hand", len(self._tasks))
        self._stopping.set()

    async def run(self, *, install_signals: bool = True) -> int:
        """Consume until stopped; returns the exit code (0; a lost broker raises
        :class:`EnvironmentFailure`)."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        connection = await connect(self.broker)
        try:
            channel = await connection.channel(publisher_confirms=True)
            self._channel = channel
            await channel.set_qos(prefetch_count=self.shards_at_once)
            if self.source is None:
                queue = await declare(channel, self.names, self.delivery_limit)
            else:
                queue = await self._users_queue(connection, channel)
                await self._announce(connection, channel)
            connection.close_callbacks.add(self._connection_lost)
            # The broker closes a channel whose delivery was held past its consumer_timeout
            # (30 min by default): size shards to take minutes.
            channel.close_callbacks.add(self._connection_lost)
            tag = await queue.consume(self._on_message)
            log.info(
                "worker pid %d consuming %s (%d shard(s) at once)",
                os.getpid(),
                self.names.shards,
                self.shards_at_once,
            )
            await self._stopping.wait()
            if self._lost is None:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            connection.close_callbacks.discard(self._connection_lost)
            if self._channel is not None:
                self._channel.close_callbacks.discard(self._connection_lost)
            with contextlib.suppress(Exception):
                await connection.close()
            await self.pools.aclose()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        if self._lost is not None:
            raise EnvironmentFailure(
                redact(self.broker),
                f"lost the connection to RabbitMQ: {self._lost}",
                "shards in hand go back to the queue; restart the worker",
            )
        return 0

    async def _users_queue(
        self, connection: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel
    ) -> aio_pika.abc.AbstractQueue:
        """The user's own queue (it must exist; never redeclared with other arguments) and a
        dead-letter queue ``<queue>.dead`` beside it."""
        try:
            probe = await connection.channel()
            await probe.declare_queue(self.names.shards, passive=True)
            await probe.close()
        except Exception:
            raise ConfigError(
                "--config", [Problem("from_queue.queue", f"no queue {self.names.shards!r}")]
            ) from None
        await channel.declare_queue(
            self.names.dead, durable=True, arguments={"x-queue-type": "quorum"}
        )
        return await channel.declare_queue(self.names.shards, passive=True)

    async def _announce(
        self, connection: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel
    ) -> None:
        """The record of a ``from_queue`` run (``queue-<queue>``: output, queue, rate windows),
        in the output and on the broker as ``submit`` makes it, so ``status`` finds the run."""
        import aio_pika

        assert self.source is not None
        run_id = queue_run_id(self.source.queue)
        record = {
            "run_id": run_id,
            "output": self.source.output,
            "queue": self.names.shards,
            "source": "from_queue",
            "rate_limits": [list(w) for w in self.source.rate_limits],
            "total": 0,
        }
        folder = RunFolder(self.source.output, run_id)
        if await asyncio.to_thread(folder.read_record) is None:
            await asyncio.to_thread(folder.write_record, record)
        run_queue = await declare_run_record(connection, self.names, run_id)
        if not run_queue.declaration_result.message_count:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    orjson.dumps(record),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                ),
                routing_key=run_queue.name,
            )

    def _connection_lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        if not self._stopping.is_set():
            self._lost = exc or ConnectionError("closed by the broker")
            self._stopping.set()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            await message.nack(requeue=True)
            return
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        deliveries = int((message.headers or {}).get("x-delivery-count", 0) or 0)  # type: ignore[arg-type]
        try:
            shard = self._shard_of(message)
        except Exception as exc:
            await self._dead_letter(message, None, f"not a shard message: {exc}", deliveries)
            return
        folder = RunFolder(shard.output, shard.run_id)
        if self.source is not None:  # a plain queue may not count deliveries
            failures = await asyncio.to_thread(folder.failed_attempts, shard.shard_id)
            deliveries = max(deliveries, failures)
        started = time.perf_counter()
        try:
            done = await self._run_shard(shard)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, MessageFailed) else f"{type(exc).__name__}: {exc}"
            if self.source is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(folder.count_failure, shard.shard_id)
            if deliveries + 1 >= self.delivery_limit:
                await self._dead_letter(message, shard, reason, deliveries)
            else:
                log.warning(
                    "shard %s of run %s failed (delivery %d of %d), requeued: %s",
                    shard.shard_id,
                    shard.run_id,
                    deliveries + 1,
                    self.delivery_limit,
                    reason,
                )
                self.stats.requeued += 1
                self.observer.shard_failed(shard, reason, dead=False)
                await message.nack(requeue=True)
            return
        if done is None:  # stopped before the end: back to the queue, nothing committed
            self.stats.requeued += 1
            await message.nack(requeue=True)
            return
        requests, replayed = done
        await message.ack()
        seconds = time.perf_counter() - started
        self.stats.durations.append(seconds)
        self.stats.requests += requests
        if replayed:
            self.stats.already_committed += 1
        else:
            self.stats.committed += 1
        self.observer.shard_done(shard, seconds, requests, replayed)
        log.info(
            "shard %s of run %s %s (delivery %d, %d requests, %.1f s)",
            shard.shard_id,
            shard.run_id,
            "was committed already" if replayed else "committed",
            deliveries + 1,
            requests,
            seconds,
        )

    def _shard_of(self, message: aio_pika.abc.AbstractIncomingMessage) -> Shard:
        if self.source is None:
            return Shard.from_bytes(message.body)
        body = orjson.loads(message.body)
        value = body.get(self.source.field) if isinstance(body, dict) else None
        if value is None or value == "" or isinstance(value, dict | list):
            raise ValueError(f"expected a JSON object with the field {self.source.field!r}")
        return message_shard(
            self.source.config,
            self.source.endpoint,
            self.source.output,
            self.source.queue,
            _message_key(message),
            value,
        )

    async def _run_shard(self, shard: Shard) -> tuple[int, bool] | None:
        """Commit ``shard`` (or find it committed) and publish its files: (requests made,
        whether it had been committed before); None when stopped before the end."""
        folder = RunFolder(shard.output, shard.run_id)
        manifest = await asyncio.to_thread(folder.committed, shard.shard_id)
        if manifest is not None:
            await asyncio.to_thread(folder.publish, manifest)
            crash_point("scale-published")
            return 0, True
        staging = await asyncio.to_thread(folder.new_staging, shard.shard_id)
        heartbeat = asyncio.create_task(self._heartbeat(folder, shard.shard_id))
        pipeline: Pipeline | None = None
        try:
            cfg = await asyncio.to_thread(shard_config, shard, staging)
            options = {
                "budget": self.budgets.for_run(shard.run_id, cfg),
                "pool": await self.pools.for_config(cfg),
                **self.engine_options(),
            }
            pipeline = Pipeline(cfg, output=staging, fresh=True, **options)
            await pipeline.start()
            self._pipelines.add(pipeline)
            if self._hard_stop:
                self._stop_soon(pipeline)
            result = await pipeline.wait()
            if result.stopped or result.cancelled:
                await asyncio.to_thread(folder.discard_staging, shard.shard_id, staging)
                return None
            if self.source is not None and (result.dead_requests or result.dead_records):
                reason = await asyncio.to_thread(_dead_letter_reason, staging)
                raise MessageFailed(reason)
            crash_point("scale-written")
            children = await self._publish_children(folder, shard, staging)
            summary = {
                "children": children,
                "requests": result.requests,
                "records": result.records_written,
                "dead_requests": result.dead_requests,
                "dead_records": result.dead_records,
                "exit_code": result.exit_code,
            }
            manifest = await asyncio.to_thread(
                folder.manifest_for, shard.shard_id, staging, summary, cfg.output.compression
            )
            won = await asyncio.to_thread(folder.commit, manifest)
            if not won:  # another delivery of this shard committed first: use its files
                await asyncio.to_thread(folder.discard_staging, shard.shard_id, staging)
                manifest = await asyncio.to_thread(folder.committed, shard.shard_id)
                assert manifest is not None
            await asyncio.to_thread(folder.publish, manifest)
            crash_point("scale-published")
            return result.requests, False
        except BaseException:
            await asyncio.shield(asyncio.to_thread(folder.discard_staging, shard.shard_id, staging))
            raise
        finally:
            if pipeline is not None:
                self._pipelines.discard(pipeline)
            heartbeat.cancel()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(folder.release, staging)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(folder.clear_inflight, shard.shard_id)

    async def _publish_children(self, folder: RunFolder, shard: Shard, staging: Path) -> list[str]:
        """Publish (confirmed) the child shards of ``shard``'s records, once: before the commit,
        so a crash cannot lose them; a marker keeps a rerun from publishing them again (but for
        the instant between the confirms and the marker; a duplicate then finds its commit)."""
        if self.source is not None or not shard.split:
            return []
        done = await asyncio.to_thread(folder.children_published, shard.shard_id)
        if done is not None:
            return done
        import aio_pika

        kids = await asyncio.to_thread(child_shards, shard, staging)
        if not kids:
            return []
        assert self._channel is not None
        exchange = self._channel.default_exchange
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        kid.to_bytes(),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json",
                        message_id=kid.message_id,
                        headers={"run_id": kid.run_id, "shard_id": kid.shard_id},
                    ),
                    routing_key=self.names.shards,
                )
                for kid in kids
            )
        )
        crash_point("scale-children-published")
        ids = [kid.shard_id for kid in kids]
        await asyncio.to_thread(folder.record_children, shard.shard_id, ids)
        crash_point("scale-children-recorded")
        return ids

    def _stop_soon(self, pipeline: Pipeline) -> None:
        task = asyncio.get_running_loop().create_task(pipeline.stop())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _heartbeat(self, folder: RunFolder, shard_id: str) -> None:
        while True:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(folder.touch_inflight, shard_id)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _dead_letter(
        self,
        message: aio_pika.abc.AbstractIncomingMessage,
        shard: Shard | None,
        reason: str,
        deliveries: int,
    ) -> None:
        """Record the failure, publish the message to the dead-letter queue with the reason
        (confirmed), then ack it."""
        import aio_pika

        log.error(
            "shard %s dead-lettered after %d deliveries: %s",
            shard.message_id if shard else message.message_id,
            deliveries + 1,
            reason,
        )
        if shard is not None:
            with contextlib.suppress(OSError):
                folder = RunFolder(shard.output, shard.run_id)
                await asyncio.to_thread(
                    folder.record_failure, shard.shard_id, reason, deliveries + 1
                )
        assert self._channel is not None
        headers = dict(message.headers or {})
        headers[REASON_HEADER] = reason[:1000]
        await self._channel.default_exchange.publish(
            aio_pika.Message(
                message.body,
                headers=headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type=message.content_type,
                message_id=message.message_id,
            ),
            routing_key=self.names.dead,
        )
        await message.ack()
        self.stats.dead_lettered += 1
        self.observer.shard_failed(shard, reason, dead=True)
