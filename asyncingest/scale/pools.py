"""One process pool per worker process, shared by every shard it runs.

Without it, every shard's engine would start (and warm up, and run the transform's initializer
in) a pool of its own: a cost per shard, and per message of a ``from_queue`` run, that buys
nothing. :class:`Pools` starts a :class:`~asyncingest.transform.pool.TransformPool` the first
time a shard needs one and hands the same pool to every later shard (and to shards running at
once: the pool takes their batches side by side, as it does for a run's several endpoints); the
worker closes it when it exits. A worker whose runs ask for different ``cpu_workers`` keeps one
pool per size.
"""

from __future__ import annotations

import asyncio
import logging

from ..config.models import PipelineConfig
from ..transform.pool import TransformPool

__all__ = ["Pools"]

log = logging.getLogger("asyncingest.scale.worker")


class Pools:
    """The worker's transform pools, by size, started on first use and kept until
    :meth:`aclose`."""

    def __init__(self) -> None:
        self._pools: dict[int | None, TransformPool] = {}
        self._lock = asyncio.Lock()
        self.started = 0

    def __repr__(self) -> str:
        return f"Pools(started={self.started}, sizes={sorted(map(str, self._pools))})"

    async def for_config(self, cfg: PipelineConfig) -> TransformPool | None:
        """The pool for ``cfg``'s transforms (None when it has none), started if need be."""
        if not any(e.transform for e in cfg.endpoints):
            return None
        size = cfg.api.concurrency.cpu_workers
        async with self._lock:  # two shards starting at once share one new pool
            pool = self._pools.get(size)
            if pool is None:
                pool = TransformPool(size)
                await pool.__aenter__()
                self._pools[size] = pool
                self.started += 1
                log.info(
                    "transform pool of %d process(es) started; every shard of this worker "
                    "shares it",
                    pool.workers,
                )
        return pool

    async def aclose(self) -> None:
        """Close every pool (their workers finish the batch in hand)."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.aclose()
