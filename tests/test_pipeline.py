"""``asyncingest.Pipeline`` as a service embeds it: start, snapshot, stop, wait, result, errors,
and ``run_sync`` for scripts. Runs against the bundled mock API on the test's own loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import asyncingest
from asyncingest import Pipeline, PipelineStateError, RequestFinished
from asyncingest.mockapi import MockAPI
from asyncingest.sink import parquet
from asyncingest.state.checkpoint import load_state

from .conftest import (
    F1_ENDPOINTS,
    F1_KEYS,
    MockAPIFactory,
    assert_same_records,
    expected_f1,
    fail_once_at,
    leftovers,
    pipeline,
    read_records,
)

# meetings -> sessions -> laps: a parent, a fan-out and a paginated child.
ENDPOINTS: list[dict[str, Any]] = [*F1_ENDPOINTS[:2], F1_ENDPOINTS[3]]


def config(api: MockAPI, out: Path) -> Any:
    return pipeline(api.url, ENDPOINTS, out, concurrency={"requests_per_endpoint": 2})


class LapsAnswered(asyncio.Event):
    """Set once ``n`` laps pages have been answered (a subscriber to ``RequestFinished``)."""

    event_types = (RequestFinished,)

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def __call__(self, event: object) -> None:
        if isinstance(event, RequestFinished) and event.endpoint == "laps":
            self.left -= 1
            if self.left <= 0:
                self.set()


def assert_complete(api: MockAPI, out: Path) -> None:
    want = expected_f1(api)
    for name in ("meetings", "sessions", "laps"):
        assert_same_records(read_records(out, name), want[name], F1_KEYS[name])


async def test_async_with_runs_to_the_end_and_the_snapshot_agrees_with_the_result(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    async with Pipeline(config(mock_api, tmp_path)) as p:
        assert p.snapshot().phase == "running"
    result = p.result
    assert result.ok
    snap = p.snapshot()
    assert snap.phase == "finished" and snap.done and snap.run_id == result.run_id
    for e in result.endpoints:
        s = snap.endpoint(e.name)
        assert (s.requests, s.records_written, s.retries) == (
            e.requests,
            e.records_written,
            e.retries,
        )
        assert s.done and s.in_flight == 0 and s.queued == 0
        assert s.jobs_done == s.jobs >= 1
    assert snap.records_written == result.records_written
    assert_complete(mock_api, tmp_path)


def test_before_the_start_a_snapshot_lists_the_endpoints_and_nothing_else_works(
    tmp_path: Path,
) -> None:
    p = Pipeline(pipeline("http://127.0.0.1:9", ENDPOINTS, tmp_path))
    snap = p.snapshot()
    assert snap.phase == "new" and not snap.done and snap.elapsed == 0.0
    assert [e.name for e in snap.endpoints] == ["meetings", "sessions", "laps"]
    assert snap.endpoint("laps").parent == "sessions" and snap.requests == 0
    with pytest.raises(PipelineStateError, match="has not started"):
        _ = p.result
    with pytest.raises(PipelineStateError, match="has not started"):
        asyncio.run(p.stop())
    with pytest.raises(PipelineStateError, match="has not started"):
        asyncio.run(p.wait())


async def test_a_pipeline_starts_once_and_has_no_result_while_running(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    api = await start_mock_api(latency_ms=20)
    p = Pipeline(config(api, tmp_path))
    await p.start()
    with pytest.raises(PipelineStateError, match="still running"):
        _ = p.result
    with pytest.raises(PipelineStateError, match="started already"):
        await p.start()
    result = await p.wait()
    assert result.ok and p.result is result and (await p.wait()) is result
    with pytest.raises(PipelineStateError, match="started already"):
        await p.start()


async def test_stop_commits_what_was_fetched_and_the_same_config_resumes(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    api = await start_mock_api(latency_ms=20)
    cfg = config(api, tmp_path)
    laps_pages = LapsAnswered(5)
    async with Pipeline(cfg, subscribers=[laps_pages]) as p:
        await laps_pages.wait()  # part-way through the fan-out
        stopped = await p.stop()
    assert stopped is p.result and stopped.stopped and not stopped.ok
    assert stopped.exit_code == 3 and p.snapshot().phase == "stopped"
    assert leftovers(tmp_path) == []
    resumed = await asyncingest.run(cfg)
    assert resumed.ok and resumed.note == "resumed"
    assert_complete(api, tmp_path)


async def test_a_stop_after_the_end_returns_the_result(mock_api: MockAPI, tmp_path: Path) -> None:
    p = Pipeline(config(mock_api, tmp_path))
    await p.start()
    result = await p.wait()
    assert (await p.stop()) is result and not result.stopped


async def test_the_run_s_error_is_raised_by_start_wait_and_result(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    cfg = config(mock_api, tmp_path)
    holder = Pipeline(cfg)
    await holder.start()
    other = Pipeline(cfg)
    with pytest.raises(asyncingest.OutputLocked):
        await other.start()  # the folder is taken: said at once, not later
    assert other.snapshot().phase == "failed"
    with pytest.raises(asyncingest.OutputLocked):
        await other.wait()
    with pytest.raises(asyncingest.OutputLocked):
        _ = other.result
    assert (await holder.wait()).ok


async def test_per_request_events_are_built_only_for_subscribers_that_want_them(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    every: list[object] = []
    few: list[object] = []
    p = Pipeline(config(mock_api, tmp_path), subscribers=[every.append])
    p.subscribe(few.append, events=(asyncingest.RunStarted, asyncingest.RunFinished))
    async with p:
        pass
    assert [type(e).__name__ for e in few] == ["RunStarted", "RunFinished"]
    finished = sum(isinstance(e, RequestFinished) for e in every)
    assert finished == p.result.requests


async def test_run_sync_refuses_a_running_loop_and_runs_in_a_thread(
    mock_api: MockAPI, tmp_path: Path
) -> None:
    cfg = config(mock_api, tmp_path)
    with pytest.raises(PipelineStateError, match=r"await asyncingest\.run"):
        asyncingest.run_sync(cfg)
    with pytest.raises(asyncingest.ConfigError, match="--retry-failed: no earlier run"):
        await asyncio.to_thread(asyncingest.run_sync, cfg, retry_failed=True)
    result = await asyncio.to_thread(asyncingest.run_sync, cfg)
    assert result.ok
    assert_complete(mock_api, tmp_path)


# -- cancelling ---------------------------------------------------------------------------------


def slow_config(api: MockAPI, out: Path) -> Any:
    """Checkpoints far apart: whatever a cancel keeps, its own last checkpoint kept."""
    cfg = config(api, out)
    return cfg.model_copy(
        update={"output": cfg.output.model_copy(update={"checkpoint_seconds": 3600.0})}
    )


def assert_readable_and_clean(out: Path) -> None:
    assert leftovers(out) == []
    for path in out.rglob("*.parquet"):
        pq.read_table(path)  # every visible file is whole


async def full_run_requests(api: MockAPI, out: Path) -> int:
    return (await asyncingest.run(config(api, out))).endpoint("laps").requests


async def test_cancelling_the_host_task_keeps_what_was_fetched_and_a_rerun_completes_it(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    api = await start_mock_api(latency_ms=20)
    full = await full_run_requests(api, tmp_path / "full")
    out = tmp_path / "out"
    cfg = slow_config(api, out)
    laps = LapsAnswered(8)
    p = Pipeline(cfg, subscribers=[laps])

    async def service() -> None:
        async with p:
            await asyncio.Event().wait()  # serving until the host cancels it

    task = asyncio.create_task(service())
    await laps.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancelled = p.result
    assert cancelled.cancelled and not cancelled.stopped and cancelled.exit_code == 3
    assert p.snapshot().phase == "cancelled"
    assert_readable_and_clean(out)
    # The cancel's own checkpoint (none came before it) names the laps pages answered.
    state = load_state(out)
    assert state is not None and state.status == "interrupted"
    kept = len(read_records(out, "laps"))
    assert kept >= 8 * 10 - 2 * 10  # 8 pages answered, at most 2 of them in flight when cut
    resumed = await asyncingest.run(cfg)
    assert resumed.ok and resumed.note == "resumed"
    assert_complete(api, out)  # each record once: nothing lost, nothing twice
    # Pages committed before the cancel are not asked again (those in flight are).
    asked = cancelled.endpoint("laps").requests + resumed.endpoint("laps").requests
    assert asked <= full + 2


async def test_cancel_returns_once_saved_and_is_harmless_after_the_end(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    api = await start_mock_api(latency_ms=20)
    cfg = slow_config(api, tmp_path)
    laps = LapsAnswered(3)
    p = Pipeline(cfg, subscribers=[laps])
    with pytest.raises(PipelineStateError, match="has not started"):
        await p.cancel()
    await p.start()
    await laps.wait()
    await p.cancel()
    assert p.result.cancelled and p.snapshot().done
    with pytest.raises(asyncio.CancelledError):
        await p.wait()
    await p.cancel()  # nothing left to cancel
    assert_readable_and_clean(tmp_path)
    assert (await asyncingest.run(cfg)).ok
    assert_complete(api, tmp_path)


def run_and_leave(url: str, out: Path, pages: int) -> None:
    """A script whose loop ends while the pipeline runs: asyncio.run cancels every task at
    once, the pipeline's own too (the writers then cannot commit; the last checkpoint stands)."""
    from asyncingest.config.loading import config_from_dict

    raw = {
        "api": {"base_url": url, "concurrency": {"requests_per_endpoint": 2}},
        "output": {"directory": str(out), "row_group_rows": 50, "max_rows_per_file": 120},
        "endpoints": ENDPOINTS,
    }

    async def main() -> None:
        laps = LapsAnswered(pages)
        p = Pipeline(config_from_dict(raw), subscribers=[laps])
        await p.start()
        await laps.wait()

    asyncio.run(main())


async def test_a_loop_shutting_down_mid_run_leaves_a_resumable_output(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    api = await start_mock_api(latency_ms=20)
    await asyncio.to_thread(run_and_leave, api.url, tmp_path, 6)
    assert_readable_and_clean(tmp_path)
    cfg = config(api, tmp_path)
    assert (await asyncingest.run(cfg)).ok
    assert_complete(api, tmp_path)


async def test_an_error_in_the_block_cancels_the_run_and_propagates(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    api = await start_mock_api(latency_ms=20)
    cfg = slow_config(api, tmp_path)
    laps = LapsAnswered(3)
    with pytest.raises(LookupError, match="the service's own"):
        async with Pipeline(cfg, subscribers=[laps]) as p:
            await laps.wait()
            raise LookupError("the service's own error")
    assert p.result.cancelled and p.snapshot().phase == "cancelled"
    assert_readable_and_clean(tmp_path)
    assert (await asyncingest.run(cfg)).ok
    assert_complete(api, tmp_path)


async def test_the_run_s_error_mid_run_is_raised_on_leaving_the_block(
    mock_api: MockAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parquet, "crash_point", fail_once_at(2))  # the disk fills up
    with pytest.raises(asyncingest.EnvironmentFailure, match="no space left"):
        async with Pipeline(config(mock_api, tmp_path)) as p:
            pass
    assert p.snapshot().phase == "failed"
    with pytest.raises(asyncingest.EnvironmentFailure):
        _ = p.result
    assert_readable_and_clean(tmp_path)


async def test_the_run_s_tasks_in_the_host_s_loop_are_named_after_their_endpoint(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    """A host's task dump (``asyncio.all_tasks()``, aiomonitor) says which run and which
    endpoint a task works for (docs/architecture.md, "What runs where")."""
    api = await start_mock_api(latency_ms=20)
    names: set[str] = set()

    def on_laps_page(event: object) -> None:  # runs in the engine, mid-run
        if isinstance(event, RequestFinished) and event.endpoint == "laps" and not names:
            names.update(t.get_name() for t in asyncio.all_tasks())

    on_laps_page.event_types = (RequestFinished,)  # type: ignore[attr-defined]
    async with Pipeline(config(api, tmp_path), subscribers=[on_laps_page]) as p:
        run_id = p.run_id
    assert {
        f"asyncingest-{run_id}",
        f"{run_id}-work",
        "tree-meetings",
        "endpoint-laps",
        "laps-worker-0",
        "laps-worker-1",
        "laps-writer",
    } <= names, sorted(names)
