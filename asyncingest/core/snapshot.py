"""What a run looks like right now: frozen figures per endpoint and per rate window.

``Pipeline.snapshot()`` (and ``Engine.snapshot()``) build a :class:`Snapshot` on demand from the
runners' own counters: O(endpoints + windows), no I/O, safe at any moment (before the start, while
stopping, after the end). The progress display, the Prometheus samplers and the example service's
status page read these instead of the engine's internals; they poll at their own pace, so the
engine pays nothing per request for them. See docs/architecture.md, "Watching a run".

:class:`WindowUsage` lives here (the lowest layer that needs it) and the limiters build it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["ENDED", "EndpointSnapshot", "RunPhase", "Snapshot", "WindowUsage"]

#: Where a run is: made but not started, running, stopping (a graceful stop, or a cancel saving what
#: it can), then one of the ends: stopped (gracefully, resumable), finished, cancelled (resumable)
#: or failed (``wait()`` raises its error).
RunPhase = Literal["new", "running", "stopping", "stopped", "finished", "cancelled", "failed"]
ENDED: frozenset[RunPhase] = frozenset({"stopped", "finished", "cancelled", "failed"})


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """One rate window's state: its limit and length, the slots occupied now, the entries stored and
    the bucket width.
    """

    limit: int
    seconds: float
    used: int  # occupied slots: in flight, or released less than `seconds` ago
    stored: int  # entries held in memory for this window
    bucket: float  # bucket width in seconds; 0.0 for an exact window


@dataclass(frozen=True, slots=True)
class EndpointSnapshot:
    """One endpoint's figures now. Counters only grow during a run; ``in_flight`` and ``queued``
    are gauges."""

    name: str
    parent: str | None = None
    in_flight: int = 0  # requests sent and not answered yet
    queued: int = 0  # jobs waiting in the endpoint's queue
    queue_size: int = 0  # how many jobs the queue holds at most (0 before the start)
    workers: int = 0
    jobs: int = 0  # jobs (walks) queued so far
    jobs_done: int = 0  # jobs finished (walked to the end or given up)
    requests: int = 0  # attempts answered (retries included)
    retries: int = 0
    failures: int = 0  # requests that gave up (dead-lettered)
    throttled: int = 0  # answers with status 429
    records_received: int = 0  # records on usable pages
    records_written: int = 0  # records taken by the Parquet writer
    records_rejected: int = 0  # records refused (dead-lettered)
    limiter_wait: float = 0.0  # seconds requests waited on the limits, summed
    started: bool = False
    done: bool = False  # everything it will do is done (or it stopped)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A run's state at one moment: its phase, per endpoint figures and each limiter's windows
    (``windows``: limiter name -> its windows, ``api`` for the API-wide one)."""

    run_id: str
    phase: RunPhase
    elapsed: float  # seconds since the run started (0.0 before)
    endpoints: tuple[EndpointSnapshot, ...]
    windows: Mapping[str, tuple[WindowUsage, ...]] = field(default_factory=dict)

    def endpoint(self, name: str) -> EndpointSnapshot:
        """The endpoint named ``name`` (KeyError if there is none)."""
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def in_flight(self) -> int:
        """Requests in flight, every endpoint together."""
        return sum(e.in_flight for e in self.endpoints)

    @property
    def requests(self) -> int:
        """Requests answered so far, every endpoint together (retries included)."""
        return sum(e.requests for e in self.endpoints)

    @property
    def records_written(self) -> int:
        """Records taken by the Parquet writers so far, every endpoint together."""
        return sum(e.records_written for e in self.endpoints)

    @property
    def done(self) -> bool:
        """The run is over: stopped, finished, cancelled or failed."""
        return self.phase in ENDED

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (a status page, a log line)."""
        return {
            "run_id": self.run_id,
            "phase": self.phase,
            "elapsed": self.elapsed,
            "endpoints": [asdict(e) for e in self.endpoints],
            "windows": {k: [asdict(w) for w in ws] for k, ws in self.windows.items()},
        }
