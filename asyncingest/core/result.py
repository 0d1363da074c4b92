"""What a run did: per-endpoint counters while it runs, frozen summaries when it ends."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class EndpointStats:
    """Mutable counters owned by one endpoint runner (single event loop, no locks)."""

    name: str
    jobs: int = 0
    jobs_done: int = 0  # walked to the end or given up (snapshots; not in the summary)
    requests: int = 0
    retries: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # by failure kind
    failed_requests: int = 0
    records_received: int = 0
    records_written: int = 0
    records_rejected: int = 0
    records_transformed: int = 0
    breaker_opens: int = 0
    nbytes: int = 0
    limiter_wait: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    files: list[str] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)  # a few reasons, for the summary
    dropped_fields: dict[str, int] = field(default_factory=dict)  # only_declared: name -> values
    json_fallbacks: dict[str, str] = field(default_factory=dict)  # column -> why not typed

    def note_error(self, reason: str) -> None:
        """Keep ``reason`` if fewer than five errors are kept (the summary shows the first ones)."""
        if len(self.first_errors) < 5:
            self.first_errors.append(reason)

    def summary(self) -> EndpointSummary:
        """A frozen snapshot of these counters, as the run result reports them."""
        return EndpointSummary(
            name=self.name,
            jobs=self.jobs,
            requests=self.requests,
            retries=self.retries,
            statuses=dict(self.statuses),
            failures=dict(self.failures),
            failed_requests=self.failed_requests,
            records_received=self.records_received,
            records_written=self.records_written,
            records_rejected=self.records_rejected,
            records_transformed=self.records_transformed,
            breaker_opens=self.breaker_opens,
            nbytes=self.nbytes,
            limiter_wait=self.limiter_wait,
            duration=max(0.0, self.finished - self.started),
            files=tuple(self.files),
            first_errors=tuple(self.first_errors),
            dropped_fields=dict(self.dropped_fields),
            json_fallbacks=dict(self.json_fallbacks),
        )


@dataclass(frozen=True, slots=True)
class EndpointSummary:
    """One endpoint's figures at the end of a run: jobs, requests, statuses, failures, records
    received, written and rejected, bytes, time waiting on the limits, files.
    """

    name: str
    jobs: int
    requests: int
    retries: int
    statuses: dict[int, int]
    failures: dict[str, int]
    failed_requests: int
    records_received: int
    records_written: int
    records_rejected: int
    records_transformed: int
    breaker_opens: int
    nbytes: int
    limiter_wait: float
    duration: float
    files: tuple[str, ...]
    first_errors: tuple[str, ...]
    #: Fields dropped because the schema does not declare them (``columns: only_declared``):
    #: name -> how many values were dropped.
    dropped_fields: dict[str, int] = field(default_factory=dict)
    #: Inferred columns written as JSON text instead of a typed (nested) column, and why.
    json_fallbacks: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No failed request and no rejected record."""
        return self.failed_requests == 0 and self.records_rejected == 0

    @property
    def throttled(self) -> int:
        """How many responses were 429."""
        return self.statuses.get(429, 0)


@dataclass(frozen=True, slots=True)
class Compaction:
    """One output folder's compaction at the end of a run: committed files before and after."""

    folder: str
    files: int  # committed files after
    compacted_from: int  # committed files before
    rows: int  # rows rewritten

    def __str__(self) -> str:
        """``laps: 48 files merged into 3``, as the end-of-run summary and log say it."""
        return f"{self.folder}: {self.compacted_from} files merged into {self.files}"


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """One endpoint's part of an increment: the cursor window it fetched and the rows it
    committed (over every run of the increment, a resumed one included)."""

    endpoint: str
    incremental: bool  # False: fetched in full every increment (or for its parent's records)
    start: Any  # the window's start as sent (None: no filter, the first increment)
    end: Any  # a bounded backfill's end
    high: Any  # the highest cursor committed (a token cursor: the newest token)
    rows: int
    full_refresh: bool = False
    skipped: bool = False  # a bounded backfill already done: not fetched
    held: bool = False  # failed requests: the mark did not move (the next window starts here)
    unreadable: int = 0  # records without a readable cursor (they do not move the mark)
    parent: str | None = None  # for_each: fetched for the parent records of the increment
    future: int = 0  # records with a cursor beyond the run's start + future_tolerance (idem)
    all_parents: bool = False  # for_each parents: all: for every key of the parent's table

    def __str__(self) -> str:
        """``contacts: 2024-01-01T00:00:00Z -> 2024-01-02T09:30:00Z, 120 rows``."""
        if not self.incremental and self.parent is not None and self.all_parents:
            return f"{self.endpoint}: for every {self.parent}_current key, {self.rows:,} rows"
        if not self.incremental and self.parent is not None:
            return f"{self.endpoint}: for the {self.parent} of this increment, {self.rows:,} rows"
        if not self.incremental:
            return f"{self.endpoint}: fetched in full, {self.rows:,} rows"
        if self.skipped:
            return f"{self.endpoint}: backfill through {self.end} done, not fetched"
        start = "the beginning" if self.start is None else _short(self.start)
        high = "nothing new" if self.high is None else _short(self.high)
        text = f"{self.endpoint}: {start} -> {high}, {self.rows:,} rows"
        if self.unreadable:
            text += f", {self.unreadable:,} without a readable cursor"
        if self.future:
            text += f", {self.future:,} with a cursor in the future (not moving the mark)"
        if self.full_refresh:
            text += " (full refresh)"
        if self.held:
            text += " (failed requests: its mark stays, the next increment reads this again)"
        return text


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, slots=True)
class IncrementSummary:
    """The increment a run of an incremental config ran: its number, whether it completed, and
    each endpoint's window."""

    number: int
    complete: bool
    windows: tuple[WindowSummary, ...]

    def window(self, endpoint: str) -> WindowSummary:
        """The window of ``endpoint`` (KeyError if there is none)."""
        for w in self.windows:
            if w.endpoint == endpoint:
                return w
        raise KeyError(endpoint)

    def __str__(self) -> str:
        """``increment 3: contacts: ... -> ..., 120 rows; engagements: ...``."""
        state = "" if self.complete else " (not complete)"
        return f"increment {self.number}{state}: " + "; ".join(str(w) for w in self.windows)


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run returns (and ``RunFinished`` carries): the figures per endpoint, how it ended, and
    the exit code the CLI would use.
    """

    run_id: str
    output: str
    endpoints: tuple[EndpointSummary, ...]
    duration: float
    cancelled: bool = False  # stopped at once: only the last checkpoint counts
    stopped: bool = False  # stopped gracefully: state saved, the same command resumes
    note: str = ""  # "resumed", "already complete"
    # What the output's dead-letter files hold when the run has finished, from this run and
    # every earlier one (a resumed run, or a rerun of a finished one, still exits 1 for them).
    dead_requests: int = 0  # failed requests (--retry-failed asks them again)
    dead_records: int = 0  # refused records
    compacted: tuple[Compaction, ...] = ()  # folders whose small files were merged
    increment: IncrementSummary | None = None  # an incremental config: the increment it ran

    @property
    def ok(self) -> bool:
        """Finished, and nothing failed: no dead letter in the output and every endpoint ok."""
        if self.cancelled or self.stopped or self.dead_requests or self.dead_records:
            return False
        return all(e.ok for e in self.endpoints)

    @property
    def exit_code(self) -> int:
        """0: everything fetched and written; 1: finished, but something failed;
        3: stopped before the end (state saved; run the same command to resume)."""
        if self.stopped or self.cancelled:
            return 3
        return 0 if self.ok else 1

    @property
    def records_written(self) -> int:
        """Records written to Parquet by every endpoint."""
        return sum(e.records_written for e in self.endpoints)

    @property
    def requests(self) -> int:
        """Requests sent by every endpoint (retries included)."""
        return sum(e.requests for e in self.endpoints)

    def files_after(self, name: str) -> int:
        """The committed files folder ``name`` holds after the run: what compaction left where
        it merged files, else the files this run committed (``EndpointSummary.files``)."""
        for c in self.compacted:
            if c.folder == name:
                return c.files
        return len(self.endpoint(name).files)

    def endpoint(self, name: str) -> EndpointSummary:
        """The summary of the endpoint named ``name`` (KeyError if there is none)."""
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)
