"""Sync mode: the same pipeline on a thread pool of ``requests`` sessions (``--mode sync``).

The classic way, for comparison (``benchmarks/``) and for callers without an event loop. It
shares every decision with the async engine (``_records``, ``_ledger``, ``_pagination``,
``_request``, ``_retry``, ``_sink``, ``_deadletter``) and keeps only the blocking parts here:
``_limiter`` (waiting on conditions), ``_http`` (requests), ``_scheduler`` (a bounded queue
per endpoint for one pool), ``_endpoint`` and ``_engine`` (threads). See ``_records`` for why
the parts are shared rather than generated.
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
