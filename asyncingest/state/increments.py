"""Increments: what a recurring run of an incremental config remembers between runs.

A config with an ``incremental:`` endpoint runs as numbered *increments* (1, 2, ...). Each one
has, per endpoint, a :class:`Window`: where it starts (the committed high-water mark minus the
lag, or ``initial``), where it ends (a bounded backfill), the highest cursor of its durable
records so far (``high``) and its rows. The window is fixed when the increment begins and saved
in the state, so a run killed part way resumes the *same* increment with the same window:
nothing between two windows is skipped. Files of increment ``n`` go to
``OUTPUT/<folder>/increment=<n>/`` (hive-style, readable as one dataset; ``increment=`` rather
than ``_increment=`` because dataset readers skip names starting with ``_`` or ``.``).

The checkpoint rule holds for the marks: ``high`` moves only in the state save that names the
files holding those records (a writer barrier), and the per-endpoint mark the next increment
starts from (``RunState.marks``) moves only in the save that completes the increment, and not
at all for an endpoint whose increment left failed requests (they may hold changes older than
``high``; ``--retry-failed`` or the next increment re-reads them). A token cursor's token is
committed the same way: only once every record of the increment is durable.

Non-incremental endpoints of such a config are fetched in full every increment (into their own
partition); a ``for_each`` child of an incremental parent is fetched for the parents seen in
the increment (what the walk gives), and with ``for_each: {parents: all}`` also for every other
key of the parent's current table: once the parent's own walks are done, the engine sweeps the
table published when the increment began (``Window.sweep``), and ``Window.swept`` counts the
rows swept in the saves that commit their child jobs (so a resumed sweep goes on from there).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config.models import PipelineConfig
from ..errors import Problem

if TYPE_CHECKING:
    from .checkpoint import RunState

#: The partition folder of increment ``n`` (inside each endpoint's folder).
PARTITION = "increment"


def partition_name(number: int) -> str:
    """``increment=<n>``: the folder of increment ``number`` inside an endpoint's folder."""
    return f"{PARTITION}={number}"


@dataclass
class Window:
    """One endpoint's part of an increment: its cursor window, what it committed so far."""

    start: Any = None  # the start sent (JSON form); None: no filter (or no token yet)
    end: Any = None  # a bounded backfill's end
    high: Any = None  # highest cursor (newest token) of the durable records so far
    rows: int = 0  # records made durable
    unreadable: int = 0  # records whose cursor was missing or unreadable
    future: int = 0  # records whose cursor was beyond the run's start + future_tolerance
    future_limit: float | None = None  # that limit, seconds since the epoch (time cursors)
    incremental: bool = True  # False: fetched in full each increment (or for_each: parent)
    parent: str | None = None  # for_each: fetched for the parent records of the increment
    all_parents: bool = False  # for_each parents: all: for every key of the parent's table too
    full_refresh: bool = False  # fetched from initial (--full-refresh)
    skipped: bool = False  # a bounded backfill already done: not fetched
    held: bool = False  # completed with failed requests: the mark did not move
    dead_at_start: int = 0  # failed requests in its dead letters when the increment began
    current: str | None = None  # merge: latest: "pending" until the current table is rebuilt
    revision: int = 0  # current-table rebuilds of this increment after --retry-failed reopened it
    built_rows: int | None = None  # rows when the current table was last rebuilt for it
    # A parent of for_each children with parents: all: the current-table version folder swept
    # for them (the one published when the sweep began), its rows, and how many are swept.
    sweep: str | None = None
    sweep_rows: int = 0
    swept: int = 0

    def to_json(self) -> dict[str, Any]:
        """This window as JSON data (what :meth:`from_json` reads)."""
        return {
            "start": self.start,
            "end": self.end,
            "high": self.high,
            "rows": self.rows,
            "unreadable": self.unreadable,
            "future": self.future,
            "future_limit": self.future_limit,
            "incremental": self.incremental,
            "parent": self.parent,
            "all_parents": self.all_parents,
            "full_refresh": self.full_refresh,
            "skipped": self.skipped,
            "held": self.held,
            "dead_at_start": self.dead_at_start,
            "current": self.current,
            "revision": self.revision,
            "built_rows": self.built_rows,
            "sweep": self.sweep,
            "sweep_rows": self.sweep_rows,
            "swept": self.swept,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Window:
        """The window :meth:`to_json` wrote."""
        return cls(**{k: d[k] for k in cls().to_json() if k in d})


@dataclass
class Increment:
    """One increment: its number, whether it is complete, its windows by endpoint, and (once
    the next one has begun) the files it committed, by folder."""

    number: int
    status: str = "running"  # running | complete
    windows: dict[str, Window] = field(default_factory=dict)
    files: dict[str, list[str]] | None = None  # folder -> names in its partition, once archived

    @property
    def folder(self) -> str:
        """``increment=<n>``."""
        return partition_name(self.number)

    @property
    def full_refresh(self) -> list[str]:
        """The endpoints refetched from ``initial`` in this increment."""
        return [n for n, w in self.windows.items() if w.full_refresh]

    def to_json(self) -> dict[str, Any]:
        """This increment as JSON data."""
        return {
            "number": self.number,
            "status": self.status,
            "windows": {k: w.to_json() for k, w in self.windows.items()},
            "files": self.files,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Increment:
        """The increment :meth:`to_json` wrote."""
        return cls(
            number=int(d["number"]),
            status=str(d["status"]),
            windows={k: Window.from_json(v) for k, v in d["windows"].items()},
            files=d.get("files"),
        )


def check_full_refresh(
    cfg: PipelineConfig, names: Iterable[str], running: Increment | None
) -> list[Problem]:
    """Problems with ``--full-refresh`` names: unknown or not incremental endpoints, or one
    the increment under way (``running``, resumed) did not begin with."""
    problems = []
    by_name = {e.name: e for e in cfg.endpoints}
    for name in names:
        e = by_name.get(name)
        if e is None:
            problems.append(
                Problem(
                    f"--full-refresh {name}",
                    f"no such endpoint (endpoints: {', '.join(by_name)})",
                )
            )
        elif e.incremental is None:
            problems.append(
                Problem(
                    f"--full-refresh {name}",
                    "not incremental: it is fetched in full every increment already",
                )
            )
        elif running is not None and name not in running.full_refresh:
            problems.append(
                Problem(
                    f"--full-refresh {name}",
                    f"increment {running.number} is under way (interrupted) without it; run "
                    "without --full-refresh to finish it first, then ask again",
                )
            )
    return problems


def plan_increment(
    cfg: PipelineConfig,
    state: RunState,
    number: int,
    full_refresh: Iterable[str],
    dead_requests: dict[str, int],
) -> Increment:
    """Increment ``number``'s windows from the committed marks (``state.marks``) and the
    config: start at ``mark - lag`` (never before ``initial``), or ``initial`` the first
    time or with ``full_refresh``."""
    refresh = set(full_refresh)
    windows: dict[str, Window] = {}
    for e in cfg.endpoints:
        w = Window(dead_at_start=dead_requests.get(e.name, 0))
        inc = e.incremental
        if inc is None:
            w.incremental = False
            w.parent = e.parent
            w.all_parents = e.for_each is not None and e.for_each.parents == "all"
        else:
            kind = inc.kind
            w.full_refresh = e.name in refresh
            mark = None if w.full_refresh else state.marks.get(e.name)
            if not kind.ordered:
                w.start = mark if mark is not None else inc.initial
            else:
                start = None
                if mark is not None:
                    start = kind.back(kind.from_json(mark), inc.lag)
                if inc.initial is not None:
                    initial = kind.parse(inc.initial)
                    start = initial if start is None or start < initial else start
                w.start = None if start is None else kind.to_json(start)
                w.end = inc.end
                done_through = state.backfilled.get(e.name)
                w.skipped = inc.end is not None and not w.full_refresh and done_through == inc.end
        if e.current_folder is not None:
            w.current = None
        windows[e.name] = w
    return Increment(number, windows=windows)


def upcoming_increment(cfg: PipelineConfig, state: RunState | None) -> Increment | None:
    """What the next run of ``cfg`` on an output with ``state`` fetches, without changing
    anything: the increment under way (its saved windows, a resume), or the next one planned
    from the committed marks (``plan_increment``, no ``--full-refresh``). None when there is
    no state (the first increment: windows from ``initial``), or ``cfg`` is not incremental."""
    if state is None or not cfg.incremental:
        return None
    last = state.current_increment
    if last is not None and state.status != "complete":
        return last
    return plan_increment(cfg, state, state.increment + 1, (), {})


def begin_increment(
    cfg: PipelineConfig,
    state: RunState,
    full_refresh: Iterable[str],
    dead_requests: dict[str, int],
) -> Increment:
    """Start the next increment in ``state`` (saved by the caller): the last one's files are
    archived in its record, every endpoint's progress starts again (no done jobs, empty
    journals, no files in the new partition), and the new windows are planned."""
    last = state.current_increment
    if last is not None:
        last.files = {name: list(es.files) for name, es in state.endpoints.items()}
    for es in state.endpoints.values():
        es.files = []
        es.done = type(es.done)()
        es.partial = {}
        es.journal_lines = es.journal_bytes = 0
        es.finished = False
        es.compaction = None
    number = state.increment + 1
    new = plan_increment(cfg, state, number, full_refresh, dead_requests)
    state.increment = number
    state.increments.append(new)
    state.status = "running"
    state.note = ""
    return new


def complete_increment(
    cfg: PipelineConfig, state: RunState, dead_requests: dict[str, int]
) -> Increment:
    """Mark the increment under way complete and move each endpoint's mark to the highest
    cursor it committed (a full refresh replaces the mark; a token replaces it), unless
    the endpoint's increment left failed requests (``held``). Merge endpoints get their
    current table rebuild marked pending (an increment completed again after
    ``--retry-failed`` reopened it: as its next revision, ``state/current.py``). Call in the
    save that completes the run."""
    inc = state.current_increment
    assert inc is not None
    for e in cfg.endpoints:
        w = inc.windows.get(e.name)
        if w is None:
            continue
        if e.current_folder is not None:
            if w.current is not None:  # completed before: --retry-failed reopened it
                w.revision += 1  # its table is rebuilt as a new revision of this version
            w.current = "pending"
        spec = e.incremental
        if spec is None or w.skipped:
            continue
        if dead_requests.get(e.name, 0) > w.dead_at_start:
            w.held = True
            continue
        w.held = False
        kind = spec.kind
        old = state.marks.get(e.name)
        if w.high is None:
            if w.full_refresh:
                state.marks.pop(e.name, None)
        elif w.full_refresh or not kind.ordered or old is None:
            state.marks[e.name] = w.high
        else:
            best = kind.newer(kind.from_json(old), kind.from_json(w.high))
            state.marks[e.name] = kind.to_json(best)
        if w.end is not None:
            state.backfilled[e.name] = w.end
    inc.status = "complete"
    return inc


def fold_high(cfg: PipelineConfig, window: Window, name: str, value: Any, rows: int) -> None:
    """Fold a barrier's cursor (a key of the endpoint's cursor kind, or None) and rows into its
    window; in the save that names the files holding those records."""
    window.rows += rows
    if value is None:
        return
    spec = cfg.endpoint(name).incremental
    if spec is None:
        return
    kind = spec.kind
    old = None if window.high is None else kind.from_json(window.high)
    window.high = kind.to_json(kind.newer(old, value))
