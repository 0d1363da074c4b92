"""Prometheus metrics of a scale-out worker (``worker --metrics-port``): shards (queue messages)
processed, how long each took, and errors, in the names seed 004's dashboards use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..scale.shards import Shard
from ..scale.worker import ShardObserver

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class WorkerMetrics(ShardObserver):
    """``queue_messages_processed_total{outcome}``, ``queue_processing_duration_seconds``,
    ``worker_errors_total{kind}`` and ``worker_requests_total`` in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        self.processed = Counter(
            "queue_messages_processed",
            "Queue messages (shards) processed to the end, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "queue_processing_duration_seconds",
            "Seconds from taking a queue message to acking it",
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        )
        self.errors = Counter(
            "worker_errors",
            "Queue messages that failed: requeued or dead-lettered",
            ["kind"],
            registry=self.registry,
        )
        for outcome in ("committed", "already_committed", "dead_lettered"):
            self.processed.labels(outcome)  # shown at 0 from the start
        for kind in ("requeued", "dead_lettered"):
            self.errors.labels(kind)
        self.requests = Counter(
            "worker_requests", "HTTP requests made for committed shards", registry=self.registry
        )

    def shard_done(self, shard: Shard, seconds: float, requests: int, replayed: bool) -> None:
        """Count a shard processed to the end (``already_committed`` when ``replayed``), its
        duration and its requests."""
        self.processed.labels("already_committed" if replayed else "committed").inc()
        self.duration.observe(seconds)
        self.requests.inc(requests)

    def shard_failed(self, shard: Shard | None, reason: str, dead: bool) -> None:
        """Count a failed shard as an error (``dead_lettered`` or ``requeued``); a dead-lettered one
        is also processed."""
        self.errors.labels("dead_lettered" if dead else "requeued").inc()
        if dead:
            self.processed.labels("dead_lettered").inc()
