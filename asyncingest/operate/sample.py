"""``plan``: sample walks against the API through the engine's own request path, then the
estimate (``operate/estimate.py``).

A sampled request goes the way the engine sends it: the endpoint's :class:`RequestTemplate`,
its paginator (``core/pagination.py``), the :class:`HttpClient` with the config's credentials,
the config's rate windows (the API's and the endpoint's own), ``parse_page`` and the retry
policy (``core/records.py``, ``core/retry.py``); children are bound from the sampled records with
``bind_children``, parent fields copied as the engine copies them.

What is sampled, per endpoint (endpoints run as soon as their parent's sample is in):

- a root: its one walk, followed to the end (at most ``max_pages`` pages);
- ``from_file``: the first ``walks`` ids of the input;
- ``for_each``: ``walks`` children of the parent records sampled, spread evenly over them.

A walk stops early once the API has reported its size on the first page (``total_path`` or
``total_pages_path``): the page count follows from it. Requests and their latency are counted
(:class:`Sampled`), so the estimate can use the latency actually measured.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..config.identity import fingerprint
from ..config.models import EndpointConfig, PipelineConfig
from ..config.sources import iter_ids
from ..core.cursor import bind_window
from ..core.pagination import (
    PaginationLoop,
    Paginator,
    PaginatorFailed,
    number_or_none,
    paginator_for,
)
from ..core.records import Job, bind_children, copy_parent_fields, parse_page
from ..core.request import (
    Page,
    Record,
    Request,
    RequestTemplate,
    UnsafePathValue,
    base_url_of,
    lookup,
)
from ..core.retry import Failure, retry_policy
from ..http.client import HttpClient, Response, credentials_from_env, scrub_next
from ..limits.clock import Clock, LoopClock
from ..limits.limiter import Limit, Limits, SlidingWindowLimiter
from ..state.checkpoint import load_state
from ..state.increments import Increment, upcoming_increment
from .estimate import EndpointSample, Estimate, WalkSample, count_inputs, estimate

WALKS = 5
"""Walks sampled per endpoint that has more than one (``plan --sample``)."""
MAX_PAGES = 100
"""Pages followed per sampled walk (``plan --sample-pages``); a longer walk without a reported
total makes the estimate a lower bound."""


@dataclass
class Sampled:
    """What sampling found: per endpoint its walks, and every request's latency."""

    endpoints: dict[str, EndpointSample] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """How many requests the sample sent (one latency each)."""
        return len(self.latencies)

    @property
    def mean_latency(self) -> float | None:
        """Mean seconds per request, or None when nothing was sent."""
        return statistics.fmean(self.latencies) if self.latencies else None


async def plan(cfg: PipelineConfig, *, walks: int = WALKS, max_pages: int = MAX_PAGES) -> Estimate:
    """The estimate for ``cfg``: sample (unless ``walks`` is 0), then :func:`estimate`.

    An incremental config whose output already holds increments is sampled with the windows
    the next run would fetch (the increment under way, or the next one from the saved marks:
    :func:`asyncingest.state.increments.upcoming_increment`), not the first increment's."""
    ids = count_inputs(cfg)
    upcoming = _upcoming(cfg)
    number = None if upcoming is None else upcoming.number
    if walks <= 0:
        return replace(estimate(cfg, ids_in_files=ids), increment=number)
    windows = None
    if upcoming is not None:
        windows = {n: (w.start, w.end) for n, w in upcoming.windows.items() if w.incremental}
    sampled = await sample(cfg, walks=walks, max_pages=max_pages, windows=windows)
    est = estimate(
        cfg, samples=sampled.endpoints, ids_in_files=ids, mean_latency=sampled.mean_latency
    )
    return replace(est, increment=number)


def _upcoming(cfg: PipelineConfig) -> Increment | None:
    """The increment a run on ``cfg``'s output would fetch next, when the output holds a state
    of this config (a state of another config: a run would refuse it; estimate the first)."""
    if not cfg.incremental:
        return None
    output = Path(cfg.output.directory)
    state = load_state(output) if output.is_dir() else None
    if state is None or state.fingerprint != fingerprint(cfg):
        return None
    return upcoming_increment(cfg, state)


async def sample(
    cfg: PipelineConfig,
    *,
    walks: int = WALKS,
    max_pages: int = MAX_PAGES,
    clock: Clock | None = None,
    windows: Mapping[str, tuple[Any, Any]] | None = None,
) -> Sampled:
    """Sample every endpoint of ``cfg`` (see the module docstring). ``windows``: an incremental
    endpoint's ``(start, end)`` to sample (default: the first increment's, from ``initial``)."""
    clock = clock or LoopClock()
    async with HttpClient(cfg.api, credentials_from_env(cfg), clock=clock) as client:
        sampler = _Sampler(cfg, client, clock, walks, max_pages)
        sampler.windows = dict(windows or {})
        tasks: dict[str, asyncio.Task[list[Record]]] = {}
        for e in cfg.order():
            parent = tasks.get(e.parent) if e.parent is not None else None
            tasks[e.name] = asyncio.create_task(sampler.endpoint(e, parent), name=f"plan-{e.name}")
        try:
            await asyncio.gather(*tasks.values())
        except BaseException:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
    return sampler.sampled


class _Sampler:
    def __init__(
        self, cfg: PipelineConfig, client: HttpClient, clock: Clock, walks: int, max_pages: int
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.clock = clock
        self.walks = walks
        self.max_pages = max_pages
        self.policy = retry_policy(cfg.api.retry)
        self.rng = random.Random()
        self.base = base_url_of(str(cfg.api.base_url))
        windows = [(w.requests, w.per_seconds) for w in cfg.api.rate_limits]
        self.api_limit = SlidingWindowLimiter(windows, clock, name="api") if windows else None
        self.sampled = Sampled()
        self.windows: dict[str, tuple[Any, Any]] = {}  # incremental endpoint -> (start, end)

    def _limits(self, e: EndpointConfig) -> Limit | None:
        parts: list[Limit] = []
        if e.rate_limits:
            own = [(w.requests, w.per_seconds) for w in e.rate_limits]
            parts.append(SlidingWindowLimiter(own, self.clock, name=e.name))
        if self.api_limit is not None:
            parts.append(self.api_limit)
        return None if not parts else parts[0] if len(parts) == 1 else Limits(parts)

    async def endpoint(
        self, e: EndpointConfig, parent: asyncio.Task[list[Record]] | None
    ) -> list[Record]:
        """Sample ``e``'s walks; returns their records (parent fields copied) for children."""
        jobs = self._jobs(e, await parent if parent is not None else [])
        paginator = paginator_for(e.pagination)
        if e.incremental is not None:
            # The next increment's window on an existing output; else the first increment's.
            start, end = self.windows.get(e.name, (e.incremental.initial, e.incremental.end))
            e = bind_window(e, start, end)
        template = RequestTemplate(self.base, e)
        limits = self._limits(e)
        done = await asyncio.gather(
            *(self._walk(e, paginator, template, limits, job) for job in jobs)
        )
        walks: list[WalkSample] = []
        records: list[Record] = []
        errors: list[str] = []
        for got in done:
            if isinstance(got, str):
                errors.append(got)
            else:
                walks.append(got[0])
                records.extend(got[1])
        self.sampled.endpoints[e.name] = EndpointSample(
            tuple(walks), len(errors), errors[0] if errors else ""
        )
        return records

    def _jobs(self, e: EndpointConfig, parent_records: list[Record]) -> list[Job]:
        if e.for_each is not None:
            jobs, _ = bind_children(parent_records, e.for_each, e.name, itertools.count())
            return spread(jobs, self.walks)
        if e.from_file is not None:
            for chunk in iter_ids(e.from_file, chunk=self.walks):
                return [Job(row, {e.from_file.variable: v}) for row, v in chunk[: self.walks]]
            return []
        return [Job(0, {})]

    async def _walk(
        self,
        e: EndpointConfig,
        paginator: Paginator,
        template: RequestTemplate,
        limits: Limit | None,
        job: Job,
    ) -> tuple[WalkSample, list[Record]] | str:
        """One walk, as the engine walks it; or why it failed."""
        try:
            request: Request | None = paginator.first(template.build(job.variables))
        except (UnsafePathValue, PaginatorFailed) as exc:  # the job cannot start
            return str(exc)  # the run refuses this job too
        pages = records = 0
        total_records = total_pages = None
        kept: list[Record] = []
        p = e.pagination
        total_path: str | None = getattr(p, "total_path", None)
        total_pages_path: str | None = getattr(p, "total_pages_path", None)
        while request is not None and pages < self.max_pages:
            page = await self._fetch(e, limits, request)
            if isinstance(page, Failure):
                return page.detail
            pages += 1
            records += len(page.records)
            copy_parent_fields(page.records, job.copy)
            kept.extend(page.records)
            try:
                # No echoed secret kept, or sent to another host.
                request = scrub_next(self.client.credentials, page, paginator.next(page))
            except PaginationLoop:
                request = None
            if pages == 1:
                total_records = (
                    number_or_none(lookup(page.body, total_path)) if total_path else None
                )
                total_pages = (
                    number_or_none(lookup(page.body, total_pages_path))
                    if total_pages_path
                    else None
                )
                if request is not None and (total_records is not None or total_pages is not None):
                    break  # its size is known: no need to walk the rest
        complete = request is None
        return WalkSample(pages, records, complete, total_records, total_pages), kept

    async def _fetch(
        self, e: EndpointConfig, limits: Limit | None, request: Request
    ) -> Page | Failure:
        """One page under the limits and the retry policy, as ``EndpointRunner`` fetches it."""
        clock = self.clock
        started = clock.time()
        attempt = 0
        while True:
            attempt += 1
            permit = await limits.acquire(e.name) if limits is not None else None
            t0 = clock.time()
            # fetch releases the permit; each redirect hop takes its own slot.
            hop = partial(limits.acquire, e.name) if limits is not None else None
            result = await self.client.fetch(request, permit, hop)
            self.sampled.latencies.append(clock.time() - t0)
            outcome: Page | Failure
            if isinstance(result, Response):
                outcome = parse_page(request, result.status, result.headers, result.body, e)
            else:
                outcome = result
            if isinstance(outcome, Page):
                return outcome
            decision = self.policy.decide(attempt, clock.time() - started, outcome, self.rng)
            if not decision.retry:
                return Failure(outcome.kind, self.client.redact(decision.reason), outcome.status)
            await clock.sleep(decision.wait)


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (first and last included), or all of them."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[0]]
    last = len(items) - 1
    return [items[round(i * last / (n - 1))] for i in range(n)]
