"""RabbitMQ for the scale-out commands: the URL checked, the connection made (errors a user can act
on, never a password), the shard queue, its dead-letter queue and a run's record queue declared.

aio-pika is imported here only, and only when a scale-out command runs: it is the optional
extra ``asyncingest[scale]``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError, EnvironmentFailure, Problem

if TYPE_CHECKING:
    import aio_pika.abc

DEFAULT_QUEUE = "asyncingest.shards"
DELIVERY_LIMIT = 5
"""Deliveries of one shard before the broker dead-letters it (x-delivery-limit)."""
CONNECT_TIMEOUT = 10.0
RUN_RECORD_TTL_MS = 7 * 24 * 3600 * 1000
"""A run-record queue unused this long (no submit, no status, no worker of a from_queue run
starting) is deleted by the broker (``x-expires``); the record stays in the output."""


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_broker_url(url: str, option: str = "--broker") -> str:
    """``url`` if it is an ``amqp://`` or ``amqps://`` URL with a host, else a :class:`ConfigError`
    (exit 2) naming the option, never the password."""
    expected = "expected amqp://USER:PASSWORD@HOST:PORT/VHOST (or amqps://)"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError:
        raise ConfigError(option, [Problem(redact(url), expected)]) from None
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ConfigError(option, [Problem(redact(url), expected)])
    del port
    return url


@dataclass(frozen=True)
class QueueNames:
    """The shard queue and its dead-letter queue (``--queue``)."""

    shards: str = DEFAULT_QUEUE

    @property
    def dead(self) -> str:
        """The dead-letter queue of the shard queue: ``<shards>.dead``."""
        return f"{self.shards}.dead"

    def run_record(self, run_id: str) -> str:
        """The queue that holds run ``run_id``'s record: ``<shards>.run.<run_id>``."""
        return f"{self.shards}.run.{run_id}"


class _Reported(logging.Filter):
    """Drops aiormq's own line for a failed connect: :func:`connect` reports it, once, as an
    :class:`EnvironmentFailure`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


def _unreachable(url: str, exc: BaseException) -> EnvironmentFailure:
    cause = str(exc) or type(exc).__name__
    parts = urlsplit(url)
    if parts.password:
        cause = cause.replace(parts.password, "***")
    return EnvironmentFailure(
        redact(url),
        f"cannot connect to RabbitMQ: {cause}",
        "check that the broker runs and the URL, user and password are right",
    )


async def connect(url: str, *, wait: float = CONNECT_TIMEOUT) -> aio_pika.abc.AbstractConnection:
    """A connection to the broker at ``url``; :class:`ConfigError` for a bad URL or a missing
    aio-pika, :class:`EnvironmentFailure` (exit 4) when the broker cannot be reached."""
    check_broker_url(url)
    try:
        import aio_pika
    except ImportError:
        raise ConfigError(
            "--broker",
            [Problem("aio-pika", "the scale-out commands need: pip install 'asyncingest[scale]'")],
        ) from None
    aiormq_log = logging.getLogger("aiormq.connection")
    if not any(isinstance(f, _Reported) for f in aiormq_log.filters):
        aiormq_log.addFilter(_Reported())
    try:
        return await asyncio.wait_for(aio_pika.connect(url, timeout=wait), wait)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        raise _unreachable(url, exc) from None


async def declare(
    channel: aio_pika.abc.AbstractChannel, names: QueueNames, delivery_limit: int = DELIVERY_LIMIT
) -> aio_pika.abc.AbstractQueue:
    """Declare the dead-letter queue and the shard queue (both durable quorum queues; idempotent
    with the same arguments) and return the shard queue."""
    import aio_pika

    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": names.dead,
    }
    try:
        await channel.declare_queue(names.dead, durable=True, arguments={"x-queue-type": "quorum"})
        return await channel.declare_queue(names.shards, durable=True, arguments=arguments)
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigError(
            "--queue",
            [
                Problem(
                    names.shards,
                    f"the queue exists with other settings ({exc}); use the same "
                    "--delivery-limit everywhere, or another --queue",
                )
            ],
        ) from None


async def declare_run_record(
    connection: aio_pika.abc.AbstractConnection, names: QueueNames, run_id: str
) -> aio_pika.abc.AbstractQueue:
    """Declare run ``run_id``'s record queue, which the broker deletes once unused for
    :data:`RUN_RECORD_TTL_MS` (a record queue made before that policy is replaced: its one
    message is published again by the caller)."""
    import aio_pika

    name = names.run_record(run_id)
    arguments: dict[str, Any] = {"x-expires": RUN_RECORD_TTL_MS}
    channel = await connection.channel()
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aio_pika.exceptions.ChannelPreconditionFailed:  # declared without the expiry
        channel = await connection.channel()
        await channel.queue_delete(name)
        return await channel.declare_queue(name, durable=True, arguments=arguments)
