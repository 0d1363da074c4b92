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
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.crashpoints import crash_point
from ..engine.engine import Engine
from ..errors import EnvironmentFailure
from .broker import DELIVERY_LIMIT, QueueNames, connect, declare, redact
from .commit import RunFolder
from .shards import Shard, shard_config

if TYPE_CHECKING:
    import aio_pika.abc

log = logging.getLogger("asyncingest.scale.worker")

HEARTBEAT_SECONDS = 5.0
REASON_HEADER = "x-asyncingest-reason"


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
    ) -> None:
        self.broker = broker
        self.names = names or QueueNames()
        self.shards_at_once = shards_at_once
        self.delivery_limit = delivery_limit
        self.observer = observer or ShardObserver()
        self.engine_options = engine_options or dict
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()
        self._lost: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._engines: set[Engine] = set()
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
            for engine in list(self._engines):
                engine.stop()
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
            queue = await declare(channel, self.names, self.delivery_limit)
            connection.close_callbacks.add(self._connection_lost)
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
            with contextlib.suppress(Exception):
                await connection.close()
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
            shard = Shard.from_bytes(message.body)
        except Exception as exc:
            await self._dead_letter(message, None, f"not a shard message: {exc}", deliveries)
            return
        started = time.perf_counter()
        try:
            done = await self._run_shard(shard)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
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
        engine: Engine | None = None
        try:
            cfg = await asyncio.to_thread(shard_config, shard, staging)
            engine = Engine(cfg, output=staging, fresh=True, **self.engine_options())
            self._engines.add(engine)
            if self._hard_stop:
                engine.stop()
            result = await engine.run()
            if result.stopped or result.cancelled:
                await asyncio.to_thread(folder.discard_staging, shard.shard_id, staging)
                return None
            crash_point("scale-written")
            summary = {
                "requests": result.requests,
                "records": result.records_written,
                "dead_requests": result.dead_requests,
                "dead_records": result.dead_records,
                "exit_code": result.exit_code,
            }
            manifest = await asyncio.to_thread(
                folder.manifest_for, shard.shard_id, staging, summary
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
            if engine is not None:
                self._engines.discard(engine)
            heartbeat.cancel()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(folder.clear_inflight, shard.shard_id)

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
