"""The plan's estimate: how many requests a config will make, how sure that is, how long its
budget and latency make it take, and what the bottleneck is.

:func:`estimate` is pure: what it needs comes in as arguments. For each endpoint, in
dependency order:

- **walks** (jobs): one for a root; one per input id for ``from_file`` (``ids_in_files``, see
  :func:`count_inputs`); one per parent record for ``for_each``, so the parent's walks times
  its records per walk (grandchildren multiply through);
- **pages per walk**: from the walks ``plan`` sampled (:class:`WalkSample`, made by
  ``operate/sample.py`` through the engine's own request path). A walk followed to its end is
  measured; a walk stopped early because the API reported its size (``total_path``,
  ``total_pages_path``) is computed from that total; a walk cut at the sampling cap without a
  total is a lower bound;
- **requests** = walks x pages per walk.

Each figure is a :class:`Span`: the value and a range. From k sampled walks out of N the range
is the mean +/- two standard errors (with the finite-population correction, so sampling every
walk leaves no uncertainty); products and sums combine the ranges' ends. The range covers the
spread the sample saw, not what it could not see; a figure with no upper bound (a walk cut
without a total) makes the whole estimate "at least".

Time is the larger of two bounds. The **window bound**: requests are sent as soon as every
window allows (what the strict sliding-window limiter does). For windows ``(N1, W1) ... (Nk,
Wk)`` sorted by length, R requests take ``q * (Wk + L) + T_shorter(R - q * Nk)`` with ``q =
ceil(R / Nk) - 1``: the longest window admits Nk requests, which hold their slots for the mean
latency L, then refill Wk later, while the shorter ones pace each batch. If the shorter windows
alone need at least Wk for Nk requests, the longest never binds. The **latency bound**: an
endpoint's requests run ``min(workers, walks)`` at a time (the pages of one walk one after the
other), each taking the latency measured while sampling.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..config.models import EndpointConfig, NoPagination, PipelineConfig
from ..config.sources import count_ids as count_rows

__all__ = [
    "EndpointEstimate",
    "EndpointSample",
    "Estimate",
    "Span",
    "WalkSample",
    "budget_time",
    "count_inputs",
    "count_rows",
    "estimate",
    "human_duration",
    "per_walk",
    "render_estimate",
]

Window = tuple[int, float]


@dataclass(frozen=True, slots=True)
class Span:
    """A figure and its range: ``low <= value``, and ``value <= high`` unless ``high`` is
    None (no upper bound known)."""

    value: float
    low: float
    high: float | None

    @classmethod
    def exact(cls, value: float) -> Span:
        """A span known exactly: low, value and high all ``value``."""
        return cls(value, value, value)

    @property
    def is_exact(self) -> bool:
        """True when low, value and high are equal."""
        return self.low == self.value == self.high

    def __mul__(self, other: Span) -> Span:
        high = None if self.high is None or other.high is None else self.high * other.high
        return Span(self.value * other.value, self.low * other.low, high)

    def __add__(self, other: Span) -> Span:
        high = None if self.high is None or other.high is None else self.high + other.high
        return Span(self.value + other.value, self.low + other.low, high)

    def to_dict(self) -> dict[str, float | None]:
        """``{"value", "low", "high"}`` for ``plan --json``."""
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True, slots=True)
class WalkSample:
    """One sampled walk: what was fetched, and whether it reached its end."""

    pages: int
    records: int
    complete: bool  # the paginator ended it (not the sampling cap, nor a reported total)
    total_records: int | None = None  # reported on its first page (``total_path``)
    total_pages: int | None = None  # reported on its first page (``total_pages_path``)


@dataclass(frozen=True, slots=True)
class EndpointSample:
    """An endpoint's sampled walks, and those that failed (after the retry policy)."""

    walks: tuple[WalkSample, ...]
    failed: int = 0
    error: str = ""  # the first failure's reason


@dataclass(frozen=True, slots=True)
class EndpointEstimate:
    """One endpoint's estimate: walks, pages per walk and requests (each a span), and where the walk
    count and the page count come from.
    """

    name: str
    parent: str | None
    jobs: Span | None  # walks; None when it depends on a count we do not have
    pages_per_job: Span
    requests: Span | None
    basis: str  # where the walk count comes from
    measured: str  # how pages per walk are known: measured, API total, extrapolated
    lower_bound: bool  # no upper bound (pages or walks unknown above)
    seconds: float | None  # what this endpoint alone needs (its windows or its latency)
    limited_by: str | None
    failed_walks: int = 0  # sampled walks that failed (after the retry policy)
    error: str = ""  # the first one's reason


@dataclass(frozen=True, slots=True)
class Estimate:
    """What ``plan`` prints: every endpoint's estimate, the total requests with a range, and the
    time under the API's windows and the measured latency.
    """

    endpoints: tuple[EndpointEstimate, ...]
    requests: int  # the requests of every endpoint whose count is known
    requests_low: int
    requests_high: int | None  # None: no upper bound
    unknown: tuple[str, ...]  # endpoints whose count is not known (sample their parent)
    lower_bound: bool
    windows: tuple[Window, ...]  # the API's shared windows
    latency: float | None  # mean seconds per request, measured while sampling
    window_bound: float | None  # seconds the shared windows need (None: no windows)
    latency_bound: float | None  # seconds the slowest endpoint needs at its concurrency
    seconds: float | None  # the larger bound; None: nothing bounds the time
    bottleneck: str | None  # "170/10s", "laps: 10/1s", "laps: 16 in flight at 0.02s each"
    window_seconds: tuple[tuple[Window, float], ...]  # each shared window's share of the time
    # An incremental config: the increment estimated (None: the first, from ``initial``; else
    # the next one of an existing output, its windows from the saved marks, or one under way).
    increment: int | None = None

    def __rich__(self) -> Group:
        return render_estimate(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``plan --json``)."""
        return {
            "increment": self.increment,
            "requests": self.requests,
            "requests_low": self.requests_low,
            "requests_high": self.requests_high,
            "lower_bound": self.lower_bound,
            "unknown": list(self.unknown),
            "seconds": self.seconds,
            "window_bound_seconds": self.window_bound,
            "latency_bound_seconds": self.latency_bound,
            "latency": self.latency,
            "bottleneck": self.bottleneck,
            "windows": [
                {"requests": n, "per_seconds": w, "seconds": s} for (n, w), s in self.window_seconds
            ],
            "endpoints": [
                {
                    "name": r.name,
                    "parent": r.parent,
                    "walks": None if r.jobs is None else r.jobs.to_dict(),
                    "pages_per_walk": r.pages_per_job.to_dict(),
                    "requests": None if r.requests is None else r.requests.to_dict(),
                    "walks_from": r.basis,
                    "pages_from": r.measured,
                    "seconds": r.seconds,
                    "limited_by": r.limited_by,
                    "failed_walks": r.failed_walks,
                    "error": r.error,
                }
                for r in self.endpoints
            ],
        }


def per_walk(sample: EndpointSample, population: float | None) -> tuple[Span, Span, str] | None:
    """``(records, pages, how)`` per walk from ``sample``, a sample of ``population`` walks
    (None: unknown); None when no walk was sampled."""
    walks = sample.walks
    if not walks:
        return None
    records: list[float] = []
    pages: list[float] = []
    open_ended = False
    from_total = False
    for w in walks:
        if w.complete:
            records.append(w.records)
            pages.append(w.pages)
        elif w.total_pages is not None:
            from_total = True
            pages.append(max(1, w.total_pages))
            per_page = w.records / w.pages if w.pages else 0.0
            records.append(
                w.total_records if w.total_records is not None else per_page * w.total_pages
            )
        elif w.total_records is not None:
            from_total = True
            per_page = w.records / w.pages if w.pages else 0.0
            records.append(w.total_records)
            pages.append(max(1, math.ceil(w.total_records / per_page)) if per_page else 1)
        else:
            open_ended = True  # cut at the sampling cap with no total: at least this much
            records.append(w.records)
            pages.append(w.pages)
    k = len(walks)
    everything = population is not None and k >= population
    if open_ended:
        how = "at least: cut at the sampling cap, no total"
    elif everything:
        how = "API totals" if from_total else "measured"
        how += " (every walk)" if k > 1 else " (whole walk)"
    else:
        of = f" of {population:,.0f}" if population is not None else ""
        how = f"extrapolated: {k}{of} walks"
        how += ", API totals" if from_total else ""
    return (
        _mean(records, population, 0.0, open_ended),
        _mean(pages, population, 1.0, open_ended),
        how,
    )


def _mean(
    values: Sequence[float], population: float | None, floor: float, open_ended: bool
) -> Span:
    k = len(values)
    mean = statistics.fmean(values)
    if k < 2 or (population is not None and k >= population):
        se = 0.0
    else:
        se = statistics.stdev(values) / math.sqrt(k)
        if population is not None and population > 1:
            se *= math.sqrt(max(0.0, (population - k) / (population - 1)))
    low = max(floor, mean - 2 * se)
    return Span(mean, low, None if open_ended else mean + 2 * se)


def estimate(
    config: PipelineConfig,
    *,
    samples: Mapping[str, EndpointSample] | None = None,
    ids_in_files: Mapping[str, int],
    mean_latency: float | None = None,
) -> Estimate:
    """Requests and time for ``config``. ``samples``: sampled walks per endpoint;
    ``ids_in_files``: ids in each ``from_file`` endpoint's input; ``mean_latency``: seconds
    per request (measured while sampling)."""
    samples = samples or {}
    api = [(w.requests, w.per_seconds) for w in config.api.rate_limits]
    jobs: dict[str, Span | None] = {}
    records_per_walk: dict[str, Span] = {}
    rows: list[EndpointEstimate] = []
    starts: dict[str, float] = {}
    finishes: dict[str, float] = {}
    for e in config.order():
        count, basis = _jobs(e, jobs, records_per_walk, ids_in_files)
        jobs[e.name] = count
        sample = samples.get(e.name)
        measured = per_walk(sample, count.value if count else None) if sample else None
        if measured is not None:
            records_per_walk[e.name], pages, how = measured
        elif isinstance(e.pagination, NoPagination):
            pages, how = Span.exact(1.0), "one page (no pagination)"
        else:
            pages, how = Span(1.0, 1.0, None), "at least one page (not sampled)"
        requests = None if count is None else count * pages
        # Latency: a child starts when its parent's first page is in, and its last walk
        # cannot start before its parent's last page.
        after = 0.0 if e.parent is None else starts.get(e.parent, 0.0) + (mean_latency or 0.0)
        parent_done = finishes.get(e.parent, 0.0) if e.parent is not None else 0.0
        seconds, limited_by = _endpoint_time(
            e, count, pages, requests, api, config, mean_latency, after, parent_done
        )
        starts[e.name] = after
        if seconds is not None:
            finishes[e.name] = seconds
        rows.append(
            EndpointEstimate(
                e.name,
                e.parent,
                count,
                pages,
                requests,
                basis,
                how,
                requests is None or requests.high is None,
                seconds,
                limited_by,
                sample.failed if sample is not None else 0,
                sample.error if sample is not None else "",
            )
        )
    total = Span.exact(0.0)
    for r in rows:
        if r.requests is not None:
            total = total + r.requests
    unknown = tuple(r.name for r in rows if r.requests is None)
    hold = mean_latency or 0.0
    window_bound, shares = budget_time(round(total.value), api, hold=hold)
    latency_bound = max((r.seconds for r in rows if r.seconds is not None), default=None)
    bottleneck = _largest(shares, api) if api and window_bound > 0 else None
    overall: float | None = window_bound if api else None
    for r in rows:
        if r.seconds is not None and (overall is None or r.seconds > overall):
            overall, bottleneck = r.seconds, f"{r.name}: {r.limited_by}"
    return Estimate(
        endpoints=tuple(rows),
        requests=round(total.value),
        requests_low=math.floor(total.low),
        requests_high=None if total.high is None or unknown else math.ceil(total.high),
        unknown=unknown,
        lower_bound=total.high is None or bool(unknown),
        windows=tuple(api),
        latency=mean_latency,
        window_bound=window_bound if api else None,
        latency_bound=latency_bound,
        seconds=overall,
        bottleneck=bottleneck,
        window_seconds=tuple(zip(sorted(api, key=lambda w: w[1]), shares, strict=True)),
    )


def _jobs(
    e: EndpointConfig,
    jobs: Mapping[str, Span | None],
    records_per_walk: Mapping[str, Span],
    ids_in_files: Mapping[str, int],
) -> tuple[Span | None, str]:
    if e.from_file is not None:
        n = ids_in_files.get(e.name)
        if n is None:
            return None, f"one per id in {Path(e.from_file.path).name} (not counted)"
        return Span.exact(float(n)), f"one per id: {n:,} in {Path(e.from_file.path).name}"
    parent = e.parent
    if parent is None:
        return Span.exact(1.0), "one walk"
    parent_jobs, records = jobs.get(parent), records_per_walk.get(parent)
    if records is None:
        return None, f"one per {parent} record (sample {parent} to know)"
    if parent_jobs is None:
        return None, f"{_span(records)} per {parent} walk ({parent} unknown)"
    return parent_jobs * records, f"{_span(records)} per {parent} walk"


def _endpoint_time(
    e: EndpointConfig,
    jobs: Span | None,
    pages: Span,
    requests: Span | None,
    api: Sequence[Window],
    config: PipelineConfig,
    mean_latency: float | None,
    after: float,
    parent_done: float,
) -> tuple[float | None, str | None]:
    """Seconds until ``e`` is done as its own windows or its latency allow (the larger)."""
    if requests is None or jobs is None:
        return None, None
    n = round(requests.value)
    best: tuple[float | None, str | None] = (None, None)
    own = [(w.requests, w.per_seconds) for w in e.rate_limits]
    if own:
        windows = [*own, *api]
        seconds, shares = budget_time(n, windows, hold=mean_latency or 0.0)
        best = (seconds, _largest(shares, windows))
    if mean_latency is not None and mean_latency > 0 and n > 0:
        workers = e.concurrency or config.api.concurrency.requests_per_endpoint
        at_once = max(1.0, min(float(workers), jobs.value))
        # One walk's pages go one after the other; walks go `workers` at a time.
        seconds = max(
            after + max(pages.value, n / at_once) * mean_latency,
            parent_done + pages.value * mean_latency,
        )
        if best[0] is None or seconds > best[0]:
            best = (seconds, f"{workers} in flight at {mean_latency:.3g}s each")
    return best


def budget_time(
    requests: int, windows: Sequence[Window], *, hold: float = 0.0
) -> tuple[float, list[float]]:
    """Seconds until the last of ``requests`` may be sent under all ``windows`` at once, and
    each window's share of that time (windows sorted by length, shortest first). ``hold``: how
    long a request keeps its slot before the window's expiry starts (the mean latency)."""
    ordered = sorted(windows, key=lambda w: w[1])
    shares = [0.0] * len(ordered)
    return _time(max(0, requests), ordered, shares, hold), shares


def _time(requests: int, windows: Sequence[Window], shares: list[float], hold: float) -> float:
    if not windows or requests <= 0:
        return 0.0
    *shorter, (limit, seconds) = windows
    if _time(limit, shorter, [0.0] * len(shorter), hold) >= seconds:
        # the shorter windows keep this one from binding
        return _time(requests, shorter, shares, hold)
    refills = math.ceil(requests / limit) - 1
    shares[len(shorter)] += refills * (seconds + hold)
    return refills * (seconds + hold) + _time(requests - refills * limit, shorter, shares, hold)


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


def _span(s: Span) -> str:
    """``3``, ``2.5 (2.1-2.9)`` or ``>=5``."""
    if s.high is None:
        return f">={_num(s.value)}"
    if s.is_exact or (_num(s.low) == _num(s.value) == _num(s.high)):
        return _num(s.value)
    return f"{_num(s.value)} ({_num(s.low)}-{_num(s.high)})"


def human_duration(seconds: float) -> str:
    """Seconds as a person reads them: ``4.2 s``, ``35 s``, ``12.5 min``, hours or days."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.2f} days"


def render_estimate(est: Estimate) -> Group:
    """The estimate as rich renderables: a table with a row per endpoint (children under their
    parents), failed sample walks, then the total requests with their range and the time.
    """
    table = Table(title="estimate", title_justify="left")
    for col in ("endpoint", "walks", "pages/walk", "requests", "walks from", "pages from"):
        table.add_column(col, justify="left" if "from" in col or col == "endpoint" else "right")
    for r, depth in _tree(est.endpoints):
        table.add_row(
            "  " * depth + r.name,
            "?" if r.jobs is None else _span(r.jobs),
            _span(r.pages_per_job),
            "?" if r.requests is None else _span(r.requests),
            r.basis,
            r.measured,
        )
    text = Text()
    if est.increment is not None:
        text.append(
            f"increment {est.increment}: the windows the next run fetches (from the output's "
            "saved marks)\n"
        )
    for r in est.endpoints:
        if r.failed_walks:
            text.append(
                f"sampling {r.name}: {r.failed_walks} walk(s) failed: {r.error}\n", style="yellow"
            )
    if est.lower_bound:
        text.append(f"requests: at least {est.requests_low:,} (about {est.requests:,})")
    elif est.requests_high == est.requests_low:
        known = [r.measured for r in est.endpoints if r.requests is not None]
        if all(m.startswith(("measured", "API totals", "one page")) for m in known):
            text.append(f"requests: {est.requests:,} (exact)")
        else:
            text.append(f"requests: about {est.requests:,} (+/-0%: the sampled walks agree)")
    else:
        high = est.requests_high or est.requests
        pct = max(high - est.requests, est.requests - est.requests_low) / max(1, est.requests)
        text.append(
            f"requests: about {est.requests:,} ({est.requests_low:,}-{high:,}, +/-{pct:.0%})"
        )
    text.append(", retries come on top")
    if est.unknown:
        text.append(f" (not counting {', '.join(est.unknown)})", style="yellow")
    if est.seconds is None:
        text.append("\ntime: no rate limits or latency to bound it")
    else:
        about = "at least " if est.lower_bound else "about "
        text.append(f"\ntime: {about}{human_duration(est.seconds)}", style="bold")
        if est.bottleneck:
            text.append(f"; bottleneck: {est.bottleneck}")
        bounds = []
        if est.window_bound is not None:
            bounds.append(f"rate windows {human_duration(est.window_bound)}")
        if est.latency_bound is not None and est.latency is not None:
            bounds.append(
                f"latency {human_duration(est.latency_bound)} "
                f"({est.latency * 1000:.0f} ms a request, measured)"
            )
        if bounds:
            text.append(f" (the larger of: {'; '.join(bounds)})")
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
