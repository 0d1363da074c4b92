"""The operator's subscribers on a real run against the bundled mock API: the metrics endpoint
scraped over HTTP while the run goes on, JSON logs, the plain progress lines. The engine runs
as it is; these subscribers only listen."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

import asyncingest
from asyncingest import Event, RequestFinished, RunFinished, config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.operate.logsub import configure_logging
from asyncingest.operate.progress import PlainProgress
from asyncingest.operate.progress_model import ProgressModel

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from asyncingest.operate.metrics import Metrics, start_metrics_server

from .conftest import F1_ENDPOINTS

# meetings -> sessions -> laps (offset pagination), as in the engine tests.
ENDPOINTS: list[dict[str, Any]] = [*F1_ENDPOINTS[:2], F1_ENDPOINTS[3]]


def queue_depths(pipeline: asyncingest.Pipeline) -> dict[str, float]:
    return {e.name: e.queued for e in pipeline.snapshot().endpoints}


def in_flight(pipeline: asyncingest.Pipeline) -> dict[str, float]:
    return {e.name: e.in_flight for e in pipeline.snapshot().endpoints}


def requests_by_endpoint(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "asyncingest_requests_total":
                out[s.labels["endpoint"]] = out.get(s.labels["endpoint"], 0) + s.value
    return out


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    logger = logging.getLogger("asyncingest")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


async def test_subscribers_follow_a_real_run(tmp_path: Path, no_proxy_env: None) -> None:
    logs, lines = io.StringIO(), io.StringIO()
    seen: list[Event] = []
    scrapes: list[tuple[bool, dict[str, float]]] = []  # (run finished yet?, requests)
    scraping: list[asyncio.Task[None]] = []

    async with MockAPI(MockSettings.small(latency_ms=10)) as api:
        cfg = config_from_dict(
            {
                "api": {"base_url": api.url, "concurrency": {"requests_per_endpoint": 2}},
                "output": {"directory": str(tmp_path)},
                "endpoints": ENDPOINTS,
            }
        )
        pipeline = asyncingest.Pipeline(cfg)
        metrics = Metrics(in_flight=lambda: in_flight(pipeline))
        metrics.sample("queue_depth", "Jobs waiting", lambda: queue_depths(pipeline))
        server = await start_metrics_server(0, metrics.registry)

        async def scrape() -> None:
            body = await _get(server.url)
            finished = any(isinstance(e, RunFinished) for e in seen)
            scrapes.append((finished, requests_by_endpoint(body)))

        def scrape_once(event: Event) -> None:
            seen.append(event)
            if isinstance(event, RequestFinished) and not scraping:
                scraping.append(asyncio.create_task(scrape()))

        plain = PlainProgress(lines, ProgressModel(), every=60.0)
        for subscriber in (
            scrape_once,
            metrics,
            configure_logging("debug", "json", logs),
            plain,
        ):
            pipeline.subscribe(subscriber)
        async with server, plain:
            async with pipeline:
                pass
            result = pipeline.result
            await asyncio.gather(*scraping)
            after = requests_by_endpoint(await _get(server.url))

    assert result.ok
    [(finished, during)] = scrapes
    assert not finished and sum(during.values()) >= 1  # scraped while the run went on
    assert after == {e.name: e.requests for e in result.endpoints}
    records = [orjson.loads(line) for line in logs.getvalue().splitlines()]
    kinds = {r["event"] for r in records}
    assert {"run_started", "request_finished", "endpoint_finished", "run_finished"} <= kinds
    assert sum(r["event"] == "request_finished" for r in records) == result.requests
    done = [line for line in lines.getvalue().splitlines() if line.endswith(", done")]
    assert sorted(line.split(":")[0] for line in done) == ["laps", "meetings", "sessions"]


async def _get(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()
