"""The plan's estimate: how many requests a config will make and how long its budget makes
that take, and which rate window is the bottleneck.

:func:`estimate` is pure: the counts it needs come in as arguments. Jobs (walks) per endpoint:
one for a root, one per input id for ``from_file`` (``ids_in_files``, see :func:`count_inputs`),
one per parent record for ``for_each``, where a parent's records come from its jobs times its
measured records per walk (``sample_parents``, which the engine measures on a few parent
walks). Requests are jobs times pages per walk: measured (``pages_per_job``), or derived from
records per walk and the page size, or else at least one (the estimate is then a lower bound).

Time assumes requests are sent as soon as every window allows (what the strict sliding-window
limiter does) with no latency; ``mean_latency`` adds the bound that concurrency puts on each
endpoint. For windows ``(N1, W1) ... (Nk, Wk)`` sorted by length, R requests take
``q * Wk + T_shorter(R - q * Nk)`` with ``q = ceil(R / Nk) - 1``: the longest window admits Nk
requests, then refills Wk later, while the shorter ones pace each batch of Nk. If the shorter
windows alone need at least Wk for Nk requests, the longest never binds. The window that
contributes most of the time is the bottleneck.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ._config import (
    CursorPagination,
    EndpointConfig,
    NoPagination,
    OffsetPagination,
    PagePagination,
    PipelineConfig,
)
from ._sources import count_ids as count_rows

__all__ = [
    "EndpointEstimate",
    "Estimate",
    "budget_time",
    "count_inputs",
    "count_rows",
    "estimate",
    "human_duration",
    "render_estimate",
]

Window = tuple[int, float]


@dataclass(frozen=True, slots=True)
class EndpointEstimate:
    name: str
    parent: str | None
    jobs: float | None  # walks; None when it depends on a count we do not have
    pages_per_job: float
    requests: int | None
    basis: str  # where the job count comes from
    lower_bound: bool  # pages per walk assumed 1 for lack of a measure
    seconds: float | None  # what this endpoint alone needs under its own and the API's limits
    limited_by: str | None


@dataclass(frozen=True, slots=True)
class Estimate:
    endpoints: tuple[EndpointEstimate, ...]
    requests: int  # the requests of every endpoint whose count is known
    unknown: tuple[str, ...]  # endpoints whose count is not known (sample their parent)
    lower_bound: bool
    windows: tuple[Window, ...]  # the API's shared windows
    seconds: float | None  # None: nothing bounds the time (no windows, no latency)
    bottleneck: str | None  # "170/10s", "laps: 10/1s", "laps: 16 in flight"
    window_seconds: tuple[tuple[Window, float], ...]  # each shared window's share of the time

    def __rich__(self) -> Group:
        return render_estimate(self)


def estimate(
    config: PipelineConfig,
    *,
    sample_parents: Mapping[str, float] | None,
    ids_in_files: Mapping[str, int],
    pages_per_job: Mapping[str, float] | None = None,
    mean_latency: float | None = None,
) -> Estimate:
    """Requests and time for ``config``. ``sample_parents``: records per walk measured for
    some endpoints; ``ids_in_files``: ids in each ``from_file`` endpoint's input;
    ``pages_per_job``: pages per walk measured; ``mean_latency``: seconds per request."""
    per_walk = dict(sample_parents or {})
    pages_measured = dict(pages_per_job or {})
    api = [(w.requests, w.per_seconds) for w in config.api.rate_limits]
    jobs: dict[str, float | None] = {}
    rows: list[EndpointEstimate] = []
    for e in config.order():
        count, basis = _jobs(e, jobs, per_walk, ids_in_files)
        jobs[e.name] = count
        pages, lower = _pages(e, per_walk.get(e.name), pages_measured.get(e.name))
        requests = None if count is None else math.ceil(count * pages)
        seconds, limited_by = _endpoint_time(e, requests, api, config, mean_latency)
        rows.append(
            EndpointEstimate(
                e.name, e.parent, count, pages, requests, basis, lower, seconds, limited_by
            )
        )
    total = sum(r.requests for r in rows if r.requests is not None)
    unknown = tuple(r.name for r in rows if r.requests is None)
    seconds, shares = budget_time(total, api)
    bottleneck = _largest(shares, api) if api and seconds > 0 else None
    overall: float | None = seconds if api else None
    for r in rows:
        if r.seconds is not None and (overall is None or r.seconds > overall):
            overall, bottleneck = r.seconds, f"{r.name}: {r.limited_by}"
    return Estimate(
        endpoints=tuple(rows),
        requests=total,
        unknown=unknown,
        lower_bound=any(r.lower_bound for r in rows) or bool(unknown),
        windows=tuple(api),
        seconds=overall,
        bottleneck=bottleneck,
        window_seconds=tuple(zip(sorted(api, key=lambda w: w[1]), shares, strict=True)),
    )


def _jobs(
    e: EndpointConfig,
    jobs: Mapping[str, float | None],
    per_walk: Mapping[str, float],
    ids_in_files: Mapping[str, int],
) -> tuple[float | None, str]:
    if e.from_file is not None:
        n = ids_in_files.get(e.name)
        if n is None:
            return None, f"one per id in {e.from_file.path} (not counted)"
        return float(n), f"one per id: {n:,} in {e.from_file.path}"
    parent = e.parent
    if parent is None:
        return 1.0, "one walk"
    parent_jobs, records = jobs.get(parent), per_walk.get(parent)
    if records is None:
        return None, f"one per {parent} record (sample {parent} to know)"
    if parent_jobs is None:
        return None, f"one per {parent} record (~{_num(records)} per walk; {parent} unknown)"
    return parent_jobs * records, f"one per {parent} record (~{_num(records)} per walk, sampled)"


def _pages(e: EndpointConfig, records: float | None, measured: float | None) -> tuple[float, bool]:
    """Pages per walk, and whether that is only a lower bound."""
    if measured is not None:
        return max(1.0, measured), False
    p = e.pagination
    if isinstance(p, NoPagination):
        return 1.0, False
    size = None
    stops_on_short_page = True
    if isinstance(p, OffsetPagination):
        size, stops_on_short_page = p.limit, p.total_path is None
    elif isinstance(p, PagePagination):
        size = p.size
        stops_on_short_page = p.total_path is None and p.total_pages_path is None
    elif isinstance(p, CursorPagination):
        size, stops_on_short_page = p.limit, False
    if records is None or size is None:
        return 1.0, True
    if stops_on_short_page:  # the walk ends on the first short (or empty) page
        return math.floor(records / size) + 1.0, False
    return max(1.0, math.ceil(records / size)), False


def _endpoint_time(
    e: EndpointConfig,
    requests: int | None,
    api: Sequence[Window],
    config: PipelineConfig,
    mean_latency: float | None,
) -> tuple[float | None, str | None]:
    if requests is None:
        return None, None
    best: tuple[float | None, str | None] = (None, None)
    own = [(w.requests, w.per_seconds) for w in e.rate_limits]
    if own:
        windows = [*own, *api]
        seconds, shares = budget_time(requests, windows)
        best = (seconds, _largest(shares, windows))
    if mean_latency is not None and mean_latency > 0:
        workers = e.concurrency or config.api.concurrency.requests_per_endpoint
        seconds = requests * mean_latency / workers
        if best[0] is None or seconds > best[0]:
            best = (seconds, f"{workers} in flight at {mean_latency:g}s each")
    return best


def budget_time(requests: int, windows: Sequence[Window]) -> tuple[float, list[float]]:
    """Seconds until the last of ``requests`` may be sent under all ``windows`` at once, and
    each window's share of that time (windows sorted by length, shortest first)."""
    ordered = sorted(windows, key=lambda w: w[1])
    shares = [0.0] * len(ordered)
    return _time(max(0, requests), ordered, shares), shares


def _time(requests: int, windows: Sequence[Window], shares: list[float]) -> float:
    if not windows or requests <= 0:
        return 0.0
    *shorter, (limit, seconds) = windows
    if _time(limit, shorter, [0.0] * len(shorter)) >= seconds:
        return _time(requests, shorter, shares)  # the shorter windows keep this one from binding
    refills = math.ceil(requests / limit) - 1
    shares[len(shorter)] += refills * seconds
    return refills * seconds + _time(requests - refills * limit, shorter, shares)


def _largest(shares: Sequence[float], windows: Sequence[Window]) -> str:
    ordered = sorted(windows, key=lambda w: w[1])
    i = max(range(len(ordered)), key=lambda k: (shares[k], ordered[k][1]))
    return _window_text(ordered[i])


def _window_text(w: Window) -> str:
    return f"{w[0]:,}/{w[1]:g}s"


# -- input files -----------------------------------------------------------------------------


def count_inputs(config: PipelineConfig) -> dict[str, int]:
    """Ids in each ``from_file`` endpoint's input that could be counted (for ``estimate``)."""
    out: dict[str, int] = {}
    for e in config.endpoints:
        if e.from_file is not None and (n := count_rows(e.from_file)) is not None:
            out[e.name] = n
    return out


# -- for people ------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:,.0f}" if x == int(x) or x >= 100 else f"{x:,.1f}"


def human_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.2f} days"


def render_estimate(est: Estimate) -> Group:
    table = Table(title="estimate", title_justify="left")
    for col in ("endpoint", "walks", "pages/walk", "requests", "from"):
        table.add_column(col, justify="left" if col in ("endpoint", "from") else "right")
    for r, depth in _tree(est.endpoints):
        table.add_row(
            "  " * depth + r.name,
            "?" if r.jobs is None else f"{r.jobs:,.0f}",
            f"{'>=' if r.lower_bound else ''}{_num(r.pages_per_job)}",
            "?" if r.requests is None else f"{r.requests:,}",
            r.basis,
        )
    text = Text()
    more = "at least " if est.lower_bound else ""
    text.append(f"requests: {more}{est.requests:,}")
    if est.unknown:
        text.append(f" (not counting {', '.join(est.unknown)})", style="yellow")
    if est.seconds is None:
        text.append("\ntime: no rate limits or latency to bound it")
    else:
        about = more or "about "
        text.append(f"\ntime: {about}{human_duration(est.seconds)}", style="bold")
        if est.bottleneck:
            text.append(f"; bottleneck: {est.bottleneck}")
    for window, seconds in est.window_seconds:
        rate = window[0] / window[1]
        share = f"{seconds / est.seconds:.0%} of the time" if est.seconds else "never binds"
        used = est.requests / window[0]
        times = f"{used:,.0f}" if used >= 10 else f"{used:.2f}"
        text.append(
            f"\n  {_window_text(window)} ({rate:,.1f} req/s): {share}; "
            f"the job fills it {times} times"
        )
    return Group(table, text)


def _tree(rows: Sequence[EndpointEstimate]) -> list[tuple[EndpointEstimate, int]]:
    """Each root followed by its descendants, depth first, for an indented table."""
    children: dict[str | None, list[EndpointEstimate]] = {}
    for r in rows:
        children.setdefault(r.parent, []).append(r)
    out: list[tuple[EndpointEstimate, int]] = []

    def visit(r: EndpointEstimate, depth: int) -> None:
        out.append((r, depth))
        for child in children.get(r.name, []):
            visit(child, depth + 1)

    for root in children.get(None, []):
        visit(root, 0)
    return out
