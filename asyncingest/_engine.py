"""The engine: wires config into runners and runs the endpoint graph on one event loop.

Data flow (docs/architecture.md): config -> limits + HTTP client -> one EndpointRunner per
endpoint, linked parent -> children -> roots fed (one root call, or ids streamed from an
input file) -> records stream to each endpoint's Parquet sink -> a RunResult.

Endpoints form trees (a root and everything that iterates over it, transitively). A tree
runs as a unit: a child starts with its parent and takes jobs as the parent's records
arrive. ``concurrency.endpoints`` caps how many trees run at once; counting trees rather
than single endpoints is what keeps a bounded parent->child queue from deadlocking.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from ._clock import Clock, LoopClock
from ._config import EndpointConfig, PipelineConfig, RetryConfig
from ._deadletter import DeadLetters
from ._endpoint import EndpointRunner, Job
from ._errors import ConfigError, Problem
from ._events import (
    EndpointFinished,
    EndpointStarted,
    EventBus,
    JobsQueued,
    RunFinished,
    RunStarted,
    Subscriber,
)
from ._http import Credentials, HttpClient
from ._limiter import Limit, Limits, SlidingWindowLimiter
from ._request import base_url_of
from ._result import RunResult
from ._retry import RetryPolicy
from ._sink import ParquetSink, SinkOptions
from ._sources import check_ids_file, count_ids, iter_ids


def credentials_from_env(cfg: PipelineConfig) -> Credentials | None:
    auth = cfg.api.auth
    if auth is None:
        return None
    secret = os.environ.get(auth.env)
    if not secret:
        raise ConfigError(
            "environment", [Problem("api.auth.env", f"environment variable {auth.env} is not set")]
        )
    return Credentials(auth.type, auth.name, secret)


def retry_policy(c: RetryConfig) -> RetryPolicy:
    all_5xx = frozenset(range(500, 600)) if c.retry_all_5xx else frozenset()
    return RetryPolicy(
        max_attempts=c.max_attempts,
        max_time=c.max_time,
        backoff_base=c.backoff_base,
        backoff_max=c.backoff_max,
        jitter=c.jitter,
        retry_statuses=c.retry_statuses | all_5xx,
        max_retry_after=c.max_retry_after,
    )


class Engine:
    """Runs one pipeline. ``await Engine(cfg).run()`` inside any running event loop."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        output: str | os.PathLike[str] | None = None,
        subscribers: Iterable[Subscriber] = (),
        clock: Clock | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.output = Path(output if output is not None else config.output.directory)
        self.events = EventBus(subscribers)
        self.clock: Clock = clock or LoopClock()
        self.rng = random.Random(seed)
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self.runners: dict[str, EndpointRunner] = {}
        api = config.api
        self.global_limiter = (
            SlidingWindowLimiter(
                [(w.requests, w.per_seconds) for w in api.rate_limits], self.clock, name="api"
            )
            if api.rate_limits
            else None
        )

    def __repr__(self) -> str:
        runners = list(self.runners.values())
        return f"Engine(run_id={self.run_id}, output={self.output}, runners={runners!r})"

    def _limits_for(self, e: EndpointConfig) -> Limit:
        parts: list[Limit] = []
        if e.rate_limits:
            parts.append(
                SlidingWindowLimiter(
                    [(w.requests, w.per_seconds) for w in e.rate_limits], self.clock, name=e.name
                )
            )
        if self.global_limiter is not None:
            parts.append(self.global_limiter)
        return parts[0] if len(parts) == 1 else Limits(parts)

    async def run(self) -> RunResult:
        cfg = self.config
        credentials = credentials_from_env(cfg)
        for e in cfg.endpoints:
            if e.from_file is not None:
                check_ids_file(e.from_file)
        self.output.mkdir(parents=True, exist_ok=True)
        started = self.clock.time()
        policy = retry_policy(cfg.api.retry)
        options = SinkOptions(
            compression=cfg.output.compression,
            row_group_rows=cfg.output.row_group_rows,
            max_rows_per_file=cfg.output.max_rows_per_file,
        )
        base = base_url_of(str(cfg.api.base_url))
        cancelled = False
        async with HttpClient(cfg.api, credentials) as client:
            for e in cfg.order():
                workers = e.concurrency or cfg.api.concurrency.requests_per_endpoint
                self.runners[e.name] = EndpointRunner(
                    e,
                    base_url=base,
                    client=client,
                    limits=self._limits_for(e),
                    policy=policy,
                    sink=ParquetSink(self.output, e.name, options, e.schema_),
                    dead_letters=DeadLetters(self.output, e.name),
                    events=self.events,
                    clock=self.clock,
                    workers=workers,
                    rng=random.Random(self.rng.random()),
                    row_group_rows=cfg.output.row_group_rows,
                )
            for name, runner in self.runners.items():
                runner.link([self.runners[c.name] for c in cfg.children(name)])
            self.events.emit(
                RunStarted(
                    self.run_id,
                    tuple(self.runners),
                    str(self.output),
                    tuple(str(w) for w in cfg.api.rate_limits),
                )
            )
            trees = asyncio.Semaphore(cfg.api.concurrency.endpoints)
            roots = [e for e in cfg.order() if e.parent is None]
            try:
                async with asyncio.TaskGroup() as tg:
                    for root in roots:
                        tg.create_task(self._run_tree(root, trees), name=f"tree-{root.name}")
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                result = RunResult(
                    run_id=self.run_id,
                    output=str(self.output),
                    endpoints=tuple(r.stats.summary() for r in self.runners.values()),
                    duration=self.clock.time() - started,
                    cancelled=cancelled,
                )
        self.events.emit(RunFinished(result))
        return result

    async def _run_tree(self, root: EndpointConfig, trees: asyncio.Semaphore) -> None:
        async with trees, asyncio.TaskGroup() as tg:
            for runner in self._tree(root.name):
                tg.create_task(self._run_endpoint(runner), name=f"endpoint-{runner.name}")
            tg.create_task(self._feed_root(self.runners[root.name]))

    def _tree(self, name: str) -> list[EndpointRunner]:
        runner = self.runners[name]
        out = [runner]
        for child in runner.children:
            out.extend(self._tree(child.name))
        return out

    async def _run_endpoint(self, runner: EndpointRunner) -> None:
        total = None
        if runner.endpoint.from_file is not None:
            total = await asyncio.to_thread(count_ids, runner.endpoint.from_file)
        self.events.emit(EndpointStarted(runner.name, runner.endpoint.parent, total))
        await runner.run()
        # Everything this endpoint will ever produce has been handed to its children.
        for child in runner.children:
            await child.close_input()
        self.events.emit(EndpointFinished(runner.stats.summary()))

    async def _feed_root(self, runner: EndpointRunner) -> None:
        spec = runner.endpoint.from_file
        if spec is None:
            await runner.submit(Job({}))
        else:
            copy_field = spec.variable if spec.copy_id else None
            chunks = iter_ids(spec)
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                for _row, value in chunk:
                    copy = {copy_field: value} if copy_field else {}
                    await runner.submit(Job({spec.variable: value}, copy))
                self.events.emit(JobsQueued(runner.name, len(chunk)))
        # Not in a `finally`: on cancellation the workers are gone and nobody would drain it.
        await runner.close_input()


async def run(
    config: PipelineConfig,
    *,
    output: str | os.PathLike[str] | None = None,
    subscribers: Iterable[Subscriber] = (),
    clock: Clock | None = None,
) -> RunResult:
    """Run a pipeline to completion in the current event loop and return what it did."""
    return await Engine(config, output=output, subscribers=subscribers, clock=clock).run()
