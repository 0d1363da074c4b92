"""Progress for people watching a long run: a live rich table on a terminal, a periodic plain
line per endpoint elsewhere (CI, cron, container logs). Both subscribe to events through a
:class:`~asyncingest.operate.progress_model.ProgressModel`; the engine knows nothing about them.
``--quiet`` means neither is created.

Rendering happens on the event loop (``LiveProgress`` refreshes from a task, not from rich's
refresh thread), so the model's sampling callbacks may read loop-owned state such as a
limiter's ``usage()`` or a runner's requests in flight.
"""

from __future__ import annotations

import asyncio
import math
from typing import IO

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..core.events import BudgetExhausted, EndpointFinished, Event
from ..core.result import RunResult
from ..limits.clock import Clock, LoopClock
from .progress_model import EndpointProgress, ProgressModel

__all__ = [
    "LiveProgress",
    "PlainProgress",
    "ProgressModel",
    "make_display",
    "plain_line",
    "render_progress",
    "schema_lines",
    "summary_table",
]

# -- rendering -------------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    """A duration for the display: ``42s``, ``3m05s``, ``2h07m``, then days."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86_400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds / 86_400:.1f}d"


def _state(row: EndpointProgress) -> str:
    if row.finished is not None:
        return "done"
    if row.breaker != "closed":
        return f"[red]breaker {row.breaker}[/]"
    if row.started is None:
        return "waiting"
    return "running"


def pause_text(pause: tuple[str, float, str]) -> str:
    """A limiter pause ``(limiter, seconds left, reason)`` as one line."""
    limiter, left, reason = pause
    return f"{limiter} paused {left:.0f}s more: {reason}"


def budget_text(model: ProgressModel) -> Text | None:
    """One line per limiter: how much of each window is used now."""
    if model.budget is None:
        return None
    lines = []
    for limiter, windows in model.budget().items():
        used = (
            f"{w.limit:,}/{w.seconds:g}s {w.used:,} used ({w.used / w.limit:.0%})" for w in windows
        )
        lines.append(f"budget {limiter}: {', '.join(used)}")
    return Text("\n".join(lines)) if lines else None


_COLUMNS = (
    "endpoint|progress||ETA|records|written|req/s|in flight|retries|429s|errors|wait/req|state"
)


def render_progress(model: ProgressModel, title: str = "asyncingest") -> Group:
    """The live display: a title with the limits, the budget lines, a pause or notice, then one
    table row per endpoint.
    """
    table = Table(title_justify="left", expand=False, box=None, pad_edge=False)
    for col in _COLUMNS.split("|"):
        left = col in ("endpoint", "progress", "state")
        table.add_column(col, justify="left" if left else "right", no_wrap=True)
    for row in list(model.rows.values()):
        p = model.progress(row)
        bar: ProgressBar | str = ""
        count = ""
        if p is not None:
            bar = ProgressBar(total=max(p.total, 1), completed=p.done, width=20)
            count = f"{p.done:,}/{p.total:,}{'' if p.final else '+'} {p.unit}"
        eta = model.eta(row)
        errors = row.failed + row.rejected
        table.add_row(
            ("  " if row.parent else "") + row.name,
            bar,
            count,
            "" if eta is None else duration_text(eta),
            f"{row.received:,}",
            f"{row.written:,}",
            f"{model.rate(row):,.1f}",
            f"{model.in_flight(row):,}",
            f"{row.retries:,}",
            f"{row.throttled:,}",
            f"[red]{errors:,}[/]" if errors else "0",
            wait_text(model.wait_per_request(row)),
            _state(row),
        )
    head = Text(title, style="bold")
    if model.limits:
        head.append(f"  limits: {', '.join(model.limits)}", style="dim")
    parts: list[Text | Table] = [head]
    if (budget := budget_text(model)) is not None:
        parts.append(budget)
    if (pause := model.paused()) is not None:
        parts.append(Text(pause_text(pause), style="yellow"))
    if model.notices:
        parts.append(Text(model.notices[-1], style="yellow"))
    parts.append(table)
    return Group(*parts)


def wait_text(seconds: float) -> str:
    """A mean wait: ``0.35s``, ``12ms``."""
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:,.2f}s"


def plain_line(model: ProgressModel, row: EndpointProgress, suffix: str = "") -> str:
    """One endpoint's progress as one plain line (for logs and non-terminals)."""
    line = (
        f"{row.name}: {row.received:,} records ({row.written:,} written), "
        f"{row.requests:,} req, {row.retries:,} retries, "
        f"{row.failed + row.rejected:,} failed, {model.rate(row):.1f} req/s"
    )
    if row.requests and row.waited:
        line += f", {wait_text(model.wait_per_request(row))}/req limiter wait"
    p = model.progress(row)
    if p is not None and suffix != "done":
        share = f" ({p.done / p.total:.0%})" if p.total else ""
        line += f", {p.done:,}/{p.total:,}{'' if p.final else '+'} {p.unit}{share}"
        if (eta := model.eta(row)) is not None:
            line += f", ETA {duration_text(eta)}"
    if row.breaker != "closed":
        line += f", breaker {row.breaker}"
    return line + (f", {suffix}" if suffix else "")


def summary_table(result: RunResult, model: ProgressModel | None = None) -> Table:
    """The end-of-run report (the same figures as OUTPUT/_asyncingest/runs/<run-id>.json);
    with the model, a column for endpoints whose circuit breaker opened during the run.
    Sized for an 80-column terminal; responses by status are listed under the table."""
    rows = model.rows if model is not None else {}
    breakers = any(r.breaker_opened for r in rows.values())
    table = Table(
        title=f"run {result.run_id}: {result.duration:.1f}s",
        title_justify="left",
        caption="failed: requests dead-lettered; rejected: records dead-lettered; "
        "wait/req: mean time a request waited on the rate limits",
        caption_justify="left",
        padding=(0, 1),
        box=box.SIMPLE_HEAD,
    )
    cols = "endpoint|records|req|retry|failed|rejected|wait/req|time"
    for col in cols.split("|") + (["breaker"] if breakers else []):
        left = col in ("endpoint", "breaker")
        table.add_column(col, justify="left" if left else "right", no_wrap=not left)
    for e in result.endpoints:
        cells = [e.name, f"{e.records_written:,}", f"{e.requests:,}", f"{e.retries:,}"]
        cells += [f"{e.failed_requests:,}", f"{e.records_rejected:,}"]
        mean_wait = e.limiter_wait / e.requests if e.requests else 0.0
        cells += [wait_text(mean_wait), f"{e.duration:,.1f}s"]
        if breakers:
            row = rows.get(e.name)
            opened = row.breaker_opened if row is not None else 0
            cells.append(f"{row.breaker}, opened {opened}x" if row is not None and opened else "")
        table.add_row(*cells)
    return table


def schema_lines(result: RunResult) -> list[str]:
    """What the schema did not keep as asked, per endpoint: fields dropped because they are
    not declared (``columns: only_declared``), columns written as JSON text, and why."""
    out = []
    for e in result.endpoints:
        if e.dropped_fields:
            dropped = ", ".join(f"{k} x{v:,}" for k, v in sorted(e.dropped_fields.items()))
            out.append(f"{e.name}: dropped (not in its schema, columns: only_declared): {dropped}")
        if e.json_fallbacks:
            text = ", ".join(f"{k} ({why})" for k, why in sorted(e.json_fallbacks.items()))
            out.append(f"{e.name}: written as JSON text instead of typed columns: {text}")
    return out


def compaction_lines(result: RunResult) -> list[str]:
    """``laps: 48 files merged into 3``: what each compacted folder holds after the run
    (the small files committed on the way are gone)."""
    return [str(c) for c in result.compacted]


def status_lines(result: RunResult) -> list[str]:
    """``users: 429 x2, 500 x2, 503 x1`` for endpoints that saw responses >= 300."""
    out = []
    for e in result.endpoints:
        bad = [f"{k} x{v:,}" for k, v in sorted(e.statuses.items()) if k >= 300]
        if bad:
            out.append(f"{e.name}: {', '.join(bad)}")
    return out


# -- displays --------------------------------------------------------------------------------


class LiveProgress:
    """``async with LiveProgress(console, model) as live:`` then subscribe ``live`` (not the
    model too: ``live`` feeds it); refreshes ``per_second`` times a second from a task on the
    loop."""

    def __init__(
        self,
        console: Console,
        model: ProgressModel | None = None,
        *,
        title: str = "asyncingest",
        per_second: float = 4.0,
        clock: Clock | None = None,
    ) -> None:
        self.model = model or ProgressModel()
        self.title = title
        self.clock = clock or LoopClock()
        self.interval = 1.0 / per_second
        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._task: asyncio.Task[None] | None = None

    @property
    def event_types(self) -> frozenset[type[Event]] | None:
        """The events its model needs (see ``ProgressModel.event_types``)."""
        return self.model.event_types

    def __call__(self, event: Event) -> None:
        self.model(event)

    def refresh(self) -> None:
        """Redraw the table from the model now."""
        self.model.refresh()
        self._live.update(render_progress(self.model, self.title), refresh=True)

    async def _tick(self) -> None:
        while True:
            self.refresh()
            await self.clock.sleep(self.interval)

    async def __aenter__(self) -> LiveProgress:
        self._live.start()
        self._task = asyncio.create_task(self._tick(), name="progress-live")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _stop(self._task)
        self.refresh()
        self._live.stop()


class PlainProgress:
    """One line per running endpoint every ``every`` seconds (even while nothing happens, so
    a stall shows), one when an endpoint finishes, plus the budget and any pause.

    Subscribe the display, not its model: it feeds the model each event itself (subscribing
    both counts every event twice)."""

    def __init__(
        self,
        stream: IO[str],
        model: ProgressModel | None = None,
        *,
        every: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if not 0 < every < math.inf:
            raise ValueError(f"every must be a finite number of seconds > 0, got {every}")
        self.model = model or ProgressModel()
        self.stream = stream
        self.every = every
        self.clock = clock or LoopClock()
        self._task: asyncio.Task[None] | None = None

    @property
    def event_types(self) -> frozenset[type[Event]] | None:
        """The events its model needs (see ``ProgressModel.event_types``)."""
        return self.model.event_types

    def __call__(self, event: Event) -> None:
        self.model(event)
        if isinstance(event, EndpointFinished):
            self.model.refresh()
            self._write([plain_line(self.model, self.model.row(event.summary.name), "done")])
        elif isinstance(event, BudgetExhausted):
            self._write([f"{event.endpoint}: {event.reason}"])  # at once: it may be hours

    def report(self) -> None:
        """Write one line per active endpoint (and the budget and pause, if any) to the stream."""
        self.model.refresh()
        lines = [plain_line(self.model, r) for r in self.model.rows.values() if _active(r)]
        if lines and (budget := budget_text(self.model)) is not None:
            lines += budget.plain.splitlines()
        if lines and (pause := self.model.paused()) is not None:
            lines.append(pause_text(pause))
        self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if lines:
            self.stream.write("".join(f"{line}\n" for line in lines))
            self.stream.flush()

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(self.every)
            self.report()

    async def __aenter__(self) -> PlainProgress:
        self._task = asyncio.create_task(self._tick(), name="progress-plain")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _stop(self._task)


def _active(row: EndpointProgress) -> bool:
    return row.started is not None and row.finished is None


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def make_display(
    console: Console,
    model: ProgressModel,
    *,
    quiet: bool = False,
    every: float = 10.0,
    title: str = "asyncingest",
) -> LiveProgress | PlainProgress | None:
    """The display for ``console``: none when quiet, live on a terminal, plain lines else."""
    if quiet:
        return None
    if console.is_terminal:
        return LiveProgress(console, model, title=title)
    return PlainProgress(console.file, model, every=every)
