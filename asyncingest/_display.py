"""Progress for people: a live rich table on a terminal, plain lines elsewhere.

Both are event subscribers; the engine knows nothing about them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ._events import (
    EndpointFinished,
    EndpointStarted,
    Event,
    JobsQueued,
    BudgetExhausted,
    RecordsRejected,
    RecordsWritten,
    RequestFailed,
    RequestFinished,
    RequestRetried,
    RunFinished,
    RunStarted,
)
from ._result import RunResult


@dataclass(slots=True)
class _Row:
    name: str
    parent: str | None = None
    jobs: int = 0
    total_jobs: int | None = None
    jobs_done: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    failed: int = 0
    records: int = 0
    rejected: int = 0
    waited: float = 0.0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def rate(self) -> float:
        end = self.finished or time.monotonic()
        return self.requests / max(end - self.started, 1e-6)


class ProgressModel:
    """Counts what the events say, per endpoint. Displays render it."""

    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}
        self.run_id = ""
        self.output = ""
        self.limits: tuple[str, ...] = ()
        self.result: RunResult | None = None
        self.notices: list[str] = []

    def __call__(self, event: Event) -> None:
        match event:
            case RequestFinished(endpoint=name, status=status):
                row = self.rows[name]
                row.requests += 1
                row.waited += event.limiter_wait
                if status == 429:
                    row.throttled += 1
            case RecordsWritten(endpoint=name, count=n):
                self.rows[name].records += n
            case RequestRetried(endpoint=name):
                self.rows[name].retries += 1
            case RequestFailed(endpoint=name):
                self.rows[name].failed += 1
            case BudgetExhausted(reason=reason):
                self.notices.append(reason)
            case RecordsRejected(endpoint=name, count=n):
                self.rows[name].rejected += n
            case JobsQueued(endpoint=name, count=n):
                self.rows[name].jobs += n
            case EndpointStarted(endpoint=name):
                row = self.rows.setdefault(name, _Row(name))
                row.parent, row.total_jobs, row.started = (
                    event.parent,
                    event.total_jobs,
                    time.monotonic(),
                )
            case EndpointFinished(summary=s):
                self.rows[s.name].finished = time.monotonic()
            case RunStarted():
                self.run_id, self.output, self.limits = (
                    event.run_id,
                    event.output,
                    event.rate_limits,
                )
                for name in event.endpoints:
                    self.rows.setdefault(name, _Row(name))
            case RunFinished(result=r):
                self.result = r


def progress_table(model: ProgressModel, title: str = "asyncingest") -> Table:
    limits = f"  limits: {', '.join(model.limits)}" if model.limits else ""
    notice = f"\n[yellow]{model.notices[-1]}[/]" if model.notices else ""
    table = Table(title=f"{title}{limits}{notice}", title_justify="left", expand=False)
    for col in (
        "endpoint",
        "records",
        "requests",
        "retries",
        "429s",
        "failed",
        "req/s",
        "waited",
        "state",
    ):
        table.add_column(
            col, justify="left" if col in ("endpoint", "state") else "right", no_wrap=True
        )
    for row in model.rows.values():
        state = "done" if row.finished else ("waiting" if row.requests == 0 else "running")
        name = f"  {row.name}" if row.parent else row.name
        table.add_row(
            name,
            f"{row.records:,}",
            f"{row.requests:,}",
            f"{row.retries:,}",
            f"{row.throttled:,}",
            f"[red]{row.failed + row.rejected:,}[/]" if row.failed + row.rejected else "0",
            f"{row.rate():,.1f}",
            f"{row.waited:,.1f}s",
            state,
        )
    return table


def summary_table(result: RunResult) -> Table:
    """The end-of-run report (the same figures as OUTPUT/_asyncingest/runs/<run-id>.json)."""
    table = Table(title=f"run {result.run_id}: {result.duration:.1f}s", title_justify="left")
    for col in (
        "endpoint",
        "records",
        "requests",
        "retries",
        "errors by status",
        "failed",
        "rejected",
        "MB",
        "waited",
        "time",
        "files",
    ):
        table.add_column(
            col, justify="left" if col in ("endpoint", "statuses") else "right", no_wrap=True
        )
    for e in result.endpoints:
        errors = " ".join(f"{k}:{v:,}" for k, v in sorted(e.statuses.items()) if k >= 300)
        table.add_row(
            e.name,
            f"{e.records_written:,}",
            f"{e.requests:,}",
            f"{e.retries:,}",
            errors,
            f"{e.failed_requests:,}",
            f"{e.records_rejected:,}",
            f"{e.nbytes / 1e6:,.1f}",
            f"{e.limiter_wait:,.1f}s",
            f"{e.duration:,.1f}s",
            f"{len(e.files)}",
        )
    return table


class LiveDisplay:
    """A rich Live table refreshed a few times a second (a subscriber plus a context manager)."""

    def __init__(self, console: Console, title: str = "asyncingest") -> None:
        self.console = console
        self.model = ProgressModel()
        self.title = title
        self._live = Live(
            console=console,
            refresh_per_second=4,
            transient=False,
            get_renderable=lambda: progress_table(self.model, self.title),
        )

    def __call__(self, event: Event) -> None:
        self.model(event)

    def __enter__(self) -> LiveDisplay:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)


class PlainDisplay:
    """When output is not a terminal: one line per endpoint every ``every`` seconds."""

    def __init__(self, stream: IO[str] | None = None, every: float = 10.0) -> None:
        self.model = ProgressModel()
        self.stream = stream or sys.stderr
        self.every = every
        self._last = time.monotonic()

    def __call__(self, event: Event) -> None:
        self.model(event)
        now = time.monotonic()
        if isinstance(event, BudgetExhausted):
            self.stream.write(f"{event.endpoint}: {event.reason}\n")
            self.stream.flush()
        if isinstance(event, EndpointFinished):
            self._line(self.model.rows[event.summary.name], "done")
        elif now - self._last >= self.every:
            self._last = now
            for row in self.model.rows.values():
                if not row.finished:
                    self._line(row, "")

    def _line(self, row: _Row, suffix: str) -> None:
        self.stream.write(
            f"{row.name}: {row.records:,} records, {row.requests:,} req, {row.retries:,} retries, "
            f"{row.failed + row.rejected:,} failed, {row.rate():.1f} req/s"
            f"{', ' + suffix if suffix else ''}\n"
        )
        self.stream.flush()
