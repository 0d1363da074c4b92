"""``asyncingest.PipelineThread``: pipelines in an event loop of their own on a second thread,
driven from the test's loop (as a service's handlers would), against the bundled mock API on
the test's loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import asyncingest
from asyncingest import Pipeline, PipelineThread
from asyncingest.mockapi import MockAPI

from .conftest import (
    F1_ENDPOINTS,
    F1_KEYS,
    assert_same_records,
    expected_f1,
    pipeline,
    read_records,
)

# meetings -> sessions -> laps: a parent, a fan-out and a paginated child.
ENDPOINTS: list[dict[str, Any]] = [*F1_ENDPOINTS[:2], F1_ENDPOINTS[3]]


def config(api: MockAPI, out: Path) -> Any:
    return pipeline(api.url, ENDPOINTS, out, concurrency={"requests_per_endpoint": 2})


async def test_pipelines_sharing_a_budget_run_in_the_thread_s_loop_to_the_end(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    here = threading.get_ident()
    seen: list[int] = []
    async with PipelineThread() as pipelines:

        async def ingest(out: Path, budget: asyncingest.Budget) -> asyncingest.RunResult:
            seen.append(threading.get_ident())
            async with Pipeline(config(mock_api, out), budget=budget) as p:
                return await p.wait()

        async def both() -> list[asyncingest.RunResult]:
            budget = asyncingest.Budget([(50, 1.0)])  # made in the loop that uses it
            outs = (tmp_path / "a", tmp_path / "b")
            return await asyncio.gather(*(ingest(out, budget) for out in outs))

        results = await pipelines.run(both)
    assert [r.ok for r in results] == [True, True]
    assert seen and all(t != here for t in seen)
    want = expected_f1(mock_api)
    for out in (tmp_path / "a", tmp_path / "b"):
        for name in ("meetings", "sessions", "laps"):
            assert_same_records(read_records(out, name), want[name], F1_KEYS[name])


async def test_a_caller_cancelled_does_not_cancel_the_work_and_errors_come_back() -> None:
    async with PipelineThread() as pipelines:
        release = threading.Event()
        finished = threading.Event()

        async def slow() -> str:
            await asyncio.to_thread(release.wait, 10)
            finished.set()
            return "done"

        caller = asyncio.create_task(pipelines.run(slow))
        await asyncio.sleep(0.05)
        caller.cancel()  # a client hanging up
        with pytest.raises(asyncio.CancelledError):
            await caller
        release.set()
        assert await asyncio.to_thread(finished.wait, 10)  # it ran to its end all the same

        async def broken() -> None:
            raise ValueError("no such job")

        with pytest.raises(ValueError, match="no such job"):
            await pipelines.run(broken)


async def test_close_cancels_what_still_runs_ends_the_thread_and_refuses_more() -> None:
    pipelines = PipelineThread(name="test-pipelines")
    assert pipelines.loop is None and "not started" in repr(pipelines)
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def launch() -> None:
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)

    await pipelines.run(launch)
    names = [t.name for t in threading.enumerate()]
    assert "test-pipelines" in names
    await pipelines.close()
    assert cancelled.is_set()
    assert "test-pipelines" not in [t.name for t in threading.enumerate()]
    assert pipelines.loop is None and "closed" in repr(pipelines)
    await pipelines.close()  # idempotent

    async def nothing() -> None:
        return None

    with pytest.raises(RuntimeError, match="closed"):
        await pipelines.run(nothing)


def test_tune_gc_freezes_start_up_and_keeps_young_collections_short() -> None:
    """The thresholds tune_gc sets (operate/tuning.py says why); put back afterwards."""
    import gc

    before = gc.get_threshold()
    try:
        asyncingest.tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (20_000, 5, max(before[2], 400))
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
