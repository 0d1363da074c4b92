"""The example service (examples/service/app.py) driven over HTTP with aiohttp's test client,
against the bundled mock API: start and poll to the end, stop and resume, one budget shared by
two pipelines (and, to show the test can fail, the same two without it), errors, shutdown."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from asyncingest.mockapi import MockAPI
from examples.service.app import SERVICE, make_app

from .conftest import F1_KEYS, MockAPIFactory, assert_same_records, read_records

# Whole crawls through the service, in both modes: the full suite runs them, the quick set not.
pytestmark = pytest.mark.slow

# The endpoints of config/f1_crawl.yaml, the service's default job.
F1_CRAWL = ("meetings", "sessions", "drivers", "laps", "weather", "pit", "stints", "race_control")
#: Where the service runs its pipelines: its own loop, or a loop of their own on a second thread.
WHERE = pytest.mark.parametrize(
    "pipelines_thread", [False, True], ids=["service-loop", "pipelines-thread"]
)
POLLS = 3000  # 50 ms apart: 150 s at most, far beyond any of these runs on a loaded machine


@asynccontextmanager
async def service(api: MockAPI, out: Path, **options: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """The example service on a free port; leaving the block shuts it down (on_cleanup)."""
    app = make_app(api.url, out, **options)
    async with TestClient(TestServer(app)) as client:
        yield client


async def start(client: TestClient[Any, Any], **body: Any) -> str:
    resp = await client.post("/ingest", json=body)
    doc = await resp.json()
    assert resp.status == 202, doc
    assert resp.headers["Location"] == f"/ingest/{doc['id']}"
    return str(doc["id"])


async def status_when(
    client: TestClient[Any, Any], id: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll ``GET /ingest/{id}`` until ``ready(status)`` (what a client of the service does)."""
    for _ in range(POLLS):
        resp = await client.get(f"/ingest/{id}")
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        if ready(doc):
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{id} never got there; last status {doc}")


def ended(doc: dict[str, Any]) -> bool:
    return doc["phase"] in ("stopped", "finished", "cancelled", "failed")


def requests_answered(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: sum(e["requests"] for e in doc["endpoints"]) >= n


def assert_complete(api: MockAPI, out: Path) -> None:
    """Every record of every endpoint exactly once (by its key), as the server has it."""
    for name in F1_CRAWL:
        assert_same_records(read_records(out, name), getattr(api.dataset, name), F1_KEYS[name])


@WHERE
async def test_a_pipeline_started_over_http_runs_to_the_end_and_its_status_shows_it(
    mock_api: MockAPI, tmp_path: Path, pipelines_thread: bool
) -> None:
    options: dict[str, Any] = {"rate_limits": [(200, 1.0)], "pipelines_thread": pipelines_thread}
    async with service(mock_api, tmp_path, **options) as client:
        id = await start(client, job="f1", output="f1-full")
        doc = await status_when(client, id, ended)
        health = await (await client.get("/health")).json()
        listed = await (await client.get("/ingest")).json()
    assert doc["phase"] == "finished" and doc["error"] is None
    assert doc["run_id"] == id and doc["output"] == str(tmp_path / "f1-full")
    assert doc["result"]["ok"] and doc["result"]["exit_code"] == 0
    by_name = {e["name"]: e for e in doc["endpoints"]}
    assert set(by_name) == set(F1_CRAWL)
    assert all(e["done"] and e["in_flight"] == 0 for e in by_name.values())
    laps = by_name["laps"]
    assert laps["records_written"] == len(mock_api.dataset.laps) and laps["parent"] == "sessions"
    assert [(w["limit"], w["seconds"]) for w in doc["windows"]["api"]] == [(200, 1.0)]
    assert health == {"status": "ok", "running": 0, "pipelines": 1}
    assert listed == [{"id": id, "job": "f1", "output": doc["output"], "phase": "finished"}]
    assert_complete(mock_api, tmp_path / "f1-full")


@WHERE
async def test_a_stopped_pipeline_keeps_its_output_and_a_new_one_on_it_resumes_without_duplicates(
    mock_api: MockAPI, tmp_path: Path, pipelines_thread: bool
) -> None:
    # 20 requests/s: the crawl's 27 requests take over a second, so the stop lands mid-run.
    options: dict[str, Any] = {"rate_limits": [(4, 0.2)], "pipelines_thread": pipelines_thread}
    async with service(mock_api, tmp_path, **options) as client:
        first = await start(client, output="laps")
        await status_when(client, first, requests_answered(5))
        locked = await client.post("/ingest", json={"output": "laps"})
        assert locked.status == 409, "a second pipeline on a running one's output"
        assert "another run" in (await locked.json())["error"]
        resp = await client.post(f"/ingest/{first}/stop")
        stopped = await resp.json()
        assert resp.status == 200 and stopped["phase"] == "stopped"
        assert stopped["result"]["stopped"] and stopped["result"]["exit_code"] == 3
        partial = sum(len(read_records(tmp_path / "laps", n)) for n in F1_CRAWL)
        assert 0 < partial < sum(len(getattr(mock_api.dataset, n)) for n in F1_CRAWL)

        second = await start(client, output="laps")
        resumed = await status_when(client, second, ended)
    assert second != first
    assert resumed["phase"] == "finished" and resumed["result"]["note"] == "resumed"
    assert resumed["result"]["ok"]
    assert_complete(mock_api, tmp_path / "laps")  # each key exactly once: nothing fetched twice


async def shared_or_not(
    start_mock_api: MockAPIFactory, tmp_path: Path, *, share_budget: bool, **options: Any
) -> tuple[MockAPI, list[dict[str, Any]]]:
    """Two pipelines of the same service at once against a server allowing 10 requests per
    250 ms, each run's config asking for that same window. The server counts (and serves)
    every arrival beyond its window: its referee's violations are the figure to read."""
    window = (10, 0.25)
    api = await start_mock_api(rate_limits=(window,), enforce_rate_limit=False)
    options |= {"rate_limits": [window], "share_budget": share_budget}
    async with service(api, tmp_path, **options) as client:
        ids = await asyncio.gather(start(client, output="a"), start(client, output="b"))
        docs = [await status_when(client, id, ended) for id in ids]
    return api, docs


@WHERE
async def test_two_pipelines_sharing_the_app_s_budget_never_break_the_api_s_window(
    start_mock_api: MockAPIFactory, tmp_path: Path, pipelines_thread: bool
) -> None:
    api, docs = await shared_or_not(
        start_mock_api, tmp_path, share_budget=True, pipelines_thread=pipelines_thread
    )
    assert [d["result"]["ok"] for d in docs] == [True, True]
    assert api.stats.requests == sum(d["result"]["requests"] for d in docs) > 40
    assert api.stats.violations == 0, api.stats
    assert api.stats.max_in_window[0] > 5, "together they used more than one's share"
    for name in ("a", "b"):
        assert_complete(api, tmp_path / name)


async def test_the_same_two_pipelines_each_with_its_own_limiter_break_the_window(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    """The control for the test above: without the shared budget, each pipeline keeps to the
    window on its own and together they exceed it (so the test above can fail)."""
    api, docs = await shared_or_not(start_mock_api, tmp_path, share_budget=False)
    assert [d["result"]["ok"] for d in docs] == [True, True]
    assert api.stats.violations > 0 and api.stats.max_in_window[0] > 10, api.stats


async def test_errors_are_json_with_their_status(mock_api: MockAPI, tmp_path: Path) -> None:
    async with service(mock_api, tmp_path) as client:
        for body, status, says in [
            (b"{not json", 400, "not JSON"),
            (b"[1, 2]", 400, "JSON object"),
            (b'{"job": "nope"}', 400, "job: expected one of f1, demo"),
            (b'{"output": "../elsewhere"}', 400, "output: expected a folder name"),
            (b'{"output": ""}', 400, "output: expected a folder name"),
            (b'{"job": "f1", "fresh": true}', 400, "unknown field(s) fresh"),
        ]:
            resp = await client.post("/ingest", data=body)
            doc = await resp.json()
            assert (resp.status, doc["status"]) == (status, status) and says in doc["error"], doc
        for method, path, status in [
            ("GET", "/ingest/20261130T000000Z-abcdef", 404),
            ("POST", "/ingest/nope/stop", 404),
            ("GET", "/nothing/here", 404),
            ("DELETE", "/ingest", 405),
        ]:
            resp = await client.request(method, path)
            doc = await resp.json()
            assert resp.status == doc["status"] == status and doc["error"], (path, doc)
        assert (await (await client.get("/ingest")).json()) == []
    assert os.listdir(tmp_path) == [], "no pipeline was started"


@WHERE
async def test_shutting_the_service_down_stops_its_pipelines_gracefully_and_they_resume(
    mock_api: MockAPI, tmp_path: Path, pipelines_thread: bool
) -> None:
    app_options: dict[str, Any] = {"rate_limits": [(4, 0.2)], "pipelines_thread": pipelines_thread}
    async with service(mock_api, tmp_path, **app_options) as client:
        id = await start(client, output="f1")
        await status_when(client, id, requests_answered(5))
        assert client.app is not None
        (ingestion,) = client.app[SERVICE].ingestions.values()
    # The test client's close ran the app's on_cleanup: a graceful stop, state saved.
    assert ingestion.pipeline.snapshot().phase == "stopped"
    assert ingestion.pipeline.result.stopped
    async with service(mock_api, tmp_path, **app_options) as client:
        again = await start(client, output="f1")
        doc = await status_when(client, again, ended)
    assert doc["result"]["ok"] and doc["result"]["note"] == "resumed"
    assert_complete(mock_api, tmp_path / "f1")
