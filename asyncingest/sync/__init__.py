"""Sync mode: the same pipeline on a thread pool of ``requests`` sessions (``--mode sync``).

The classic way, for comparison (``benchmarks/``) and for callers without an event loop. It
shares every decision with the async engine (``core.records``, ``state.ledger``,
``core.pagination``, ``core.request``, ``core.retry``, ``sink.parquet``, ``sink.deadletter``)
and keeps only the blocking parts here: ``limiter`` (waiting on conditions), ``http``
(requests), ``scheduler`` (a bounded queue per endpoint for one pool), ``endpoint`` and
``engine`` (threads). See ``core.records`` for why the parts are shared rather than generated.

A sibling of :mod:`asyncingest.engine` in the layers: the two engines never import each other;
what they share lives below them (``state``, ``sink``, ``http``, ``limits``, ``core``,
``config``). It never imports :mod:`asyncingest.operate` or :mod:`asyncingest.cli`. Private:
everything below the public API in :mod:`asyncingest` may change.
"""

from .engine import SyncEngine, default_workers, run_sync
from .limiter import (
    LimiterClosed,
    ThreadConcurrencyLimit,
    ThreadLimits,
    ThreadSlidingWindowLimiter,
)

__all__ = [
    "LimiterClosed",
    "SyncEngine",
    "ThreadConcurrencyLimit",
    "ThreadLimits",
    "ThreadSlidingWindowLimiter",
    "default_workers",
    "run_sync",
]
