"""``plan``: a few sample walks against the API, then the estimate (``_estimate.py``).

For every endpoint, up to ``sample`` walks are made (the root walk, the first ids of an
input file, children of the sampled parent records), each for at most ``MAX_PAGES`` pages;
records and pages per walk feed the estimate. Requests pass the config's own rate windows.
A walk cut short counts its reported total (``total_path``) when the API gives one, else it
is a lower bound (the estimate says so).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import orjson
from rich.console import Group

from ._clock import LoopClock
from ._config import EndpointConfig, PipelineConfig
from ._engine import credentials_from_env
from ._estimate import count_inputs, estimate
from ._http import HttpClient, Response
from ._limiter import SlidingWindowLimiter
from ._pagination import PaginationLoop, paginator_for
from ._request import (
    Page,
    WrongShape,
    base_url_of,
    build_request,
    extract_records,
    lookup,
)
from ._sources import iter_ids

MAX_PAGES = 5


async def plan_command(cfg: PipelineConfig, sample: int) -> Group:
    ids = count_inputs(cfg)
    per_walk: dict[str, float] = {}
    pages: dict[str, float] = {}
    latency = None
    if sample > 0:
        per_walk, pages, latency = await sample_walks(cfg, sample)
    est = estimate(
        cfg, sample_parents=per_walk, ids_in_files=ids, pages_per_job=pages, mean_latency=latency
    )
    return Group(est)


async def sample_walks(
    cfg: PipelineConfig, n: int
) -> tuple[dict[str, float], dict[str, float], float | None]:
    clock = LoopClock()
    windows = [(w.requests, w.per_seconds) for w in cfg.api.rate_limits]
    limiter = SlidingWindowLimiter(windows, clock, name="api") if windows else None
    base = base_url_of(str(cfg.api.base_url))
    records_per_walk: dict[str, float] = {}
    pages_per_walk: dict[str, float] = {}
    latencies: list[float] = []
    parents: dict[str, list[dict[str, Any]]] = {}
    async with HttpClient(cfg.api, credentials_from_env(cfg)) as client:
        for e in cfg.order():
            bindings = _bindings(e, parents, n)
            counts: list[float] = []
            page_counts: list[float] = []
            kept: list[dict[str, Any]] = []
            for variables, copy in bindings:
                request: Any = paginator_for(e.pagination).first(build_request(base, e, variables))
                records, walked, reported = 0, 0, None
                paginator = paginator_for(e.pagination)
                while request is not None and walked < MAX_PAGES:
                    permit = await limiter.acquire("plan") if limiter else None
                    t0 = time.monotonic()
                    # fetch releases the permit; each redirect hop takes its own slot.
                    hop = partial(limiter.acquire, "plan") if limiter else None
                    result = await client.fetch(request, permit, hop)
                    latencies.append(time.monotonic() - t0)
                    if not isinstance(result, Response):
                        break
                    try:
                        body = orjson.loads(result.body) if result.body.strip() else None
                        recs = extract_records(body, e.records, e.single_record)
                    except (orjson.JSONDecodeError, WrongShape):
                        break
                    page = Page(request, result.status, result.headers, body, recs)
                    walked += 1
                    records += len(recs)
                    total_path = getattr(e.pagination, "total_path", None)
                    if walked == 1 and total_path:
                        total = lookup(body, total_path)
                        reported = total if isinstance(total, int) else None
                    kept.extend({**copy, **r} for r in recs[: n * 4])
                    try:
                        request = paginator.next(page)
                        if request is not None:
                            request = client.scrub(request)  # no echoed secret to another host
                    except PaginationLoop:
                        break
                if walked:
                    counts.append(float(reported if reported is not None else records))
                    page_counts.append(float(walked))
            parents[e.name] = kept
            if counts:
                records_per_walk[e.name] = sum(counts) / len(counts)
                pages_per_walk[e.name] = sum(page_counts) / len(page_counts)
    mean = sum(latencies) / len(latencies) if latencies else None
    return records_per_walk, pages_per_walk, mean


def _bindings(
    e: EndpointConfig, parents: dict[str, list[dict[str, Any]]], n: int
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    if e.for_each is not None:
        spec = e.for_each
        out = []
        for r in parents.get(spec.endpoint, []):
            variables = {v: lookup(r, p) for v, p in spec.bind.items()}
            if None not in variables.values():
                out.append((variables, {k: lookup(r, p) for k, p in spec.copy_fields.items()}))
            if len(out) >= n:
                break
        return out
    if e.from_file is not None:
        ids: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for chunk in iter_ids(e.from_file, chunk=n):
            ids.extend(({e.from_file.variable: v}, {}) for _, v in chunk[:n])
            break
        return ids
    return [({}, {})]
