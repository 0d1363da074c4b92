"""Two pipelines, one API, one Budget: against the bundled mock API, whose referee counts every
arrival that would break the server's window. The same two pipelines without the shared budget
break it (so these tests can fail)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncingest
from asyncingest import Budget, Event, RatePaused, RequestFinished, RequestStarted
from asyncingest.mockapi import MockSettings

from .conftest import MockAPIFactory, pipeline

WINDOW = (20, 0.25)  # 80 requests/s: small, so the tests take a few seconds
SERVER = MockSettings.small(rate_limits=(WINDOW,), latency_ms=2.0)


def users(name: str, ids: list[int], folder: Path, workers: int) -> dict[str, Any]:
    path = folder / f"{name}.csv"
    path.write_text("user_id\n" + "".join(f"{i}\n" for i in ids))
    return {
        "name": name,
        "path": "/partner/users/{user_id}",
        "primary_key": "user_id",
        "single_record": True,
        "from_file": {"path": str(path), "column": "user_id"},
        "concurrency": workers,
    }


def two_pipelines(url: str, tmp_path: Path, *, n: int = 30) -> tuple[Any, Any]:
    """Pipeline a: one endpoint of n ids. Pipeline b: four endpoints of n ids each. Each
    endpoint has 12 workers: more than half the window's limit, so both can saturate it."""
    window = [{"requests": WINDOW[0], "per_seconds": WINDOW[1]}]
    a = pipeline(
        url,
        [users("users", list(range(1000, 1000 + n)), tmp_path, 12)],
        tmp_path / "a",
        rate_limits=window,
    )
    b_endpoints = [
        users(f"users_{k}", list(range(2000 + 100 * k, 2000 + 100 * k + n)), tmp_path, 12)
        for k in range(4)
    ]
    b = pipeline(url, b_endpoints, tmp_path / "b", rate_limits=window)
    return a, b


class Starts:
    """When each pipeline's requests were sent (the loop's clock, shared by both)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {"a": [], "b": []}
        self.b_going = asyncio.Event()

    def of(self, pipeline: str) -> Any:
        loop = asyncio.get_running_loop()

        def seen(event: Event) -> None:
            if isinstance(event, RequestStarted):
                self.times[pipeline].append(loop.time())
                if len(self.times["b"]) >= 10:
                    self.b_going.set()

        return seen

    def split_while_both_ran(self) -> tuple[int, int]:
        a, b = self.times["a"], self.times["b"]
        start, end = max(a[0], b[0]), min(a[-1], b[-1])
        return (
            sum(start <= t <= end for t in a),
            sum(start <= t <= end for t in b),
        )


async def test_two_pipelines_sharing_a_budget_never_break_the_window_and_split_it_fairly(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    api = await start_mock_api(SERVER)
    cfg_a, cfg_b = two_pipelines(api.url, tmp_path)
    budget = Budget(cfg_a.api.rate_limits)
    starts = Starts()

    async def a_once_b_is_going() -> asyncingest.RunResult:
        # b (120 requests) is under way before a (30) starts: a runs all along inside b's run,
        # however long each takes to start on a loaded machine.
        await asyncio.wait_for(starts.b_going.wait(), 30)
        return await asyncingest.run(cfg_a, budget=budget, subscribers=[starts.of("a")])

    result_b, result_a = await asyncio.gather(
        asyncingest.run(cfg_b, budget=budget, subscribers=[starts.of("b")]), a_once_b_is_going()
    )
    assert result_a.ok and result_b.ok
    assert (result_a.records_written, result_b.records_written) == (30, 120)
    stats = api.stats
    assert (stats.violations, stats.sent_429) == (0, 0)
    # While both ran (all of a's run), a (1 endpoint) and b (4 endpoints) took turns: about
    # half each. Turns per endpoint would have given a a fifth (a:b = 1:4).
    a, b = pipeline_split = starts.split_while_both_ran()
    print("split while both ran (a, b):", pipeline_split)
    assert a >= 20 and 0.6 <= a / b <= 1.67, pipeline_split


async def test_the_same_pipelines_each_with_its_own_budget_break_the_window(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    """The control: each pipeline alone keeps the window, the two together do not."""
    api = await start_mock_api(SERVER.model_copy(update={"enforce_rate_limit": False}))
    cfg_a, cfg_b = two_pipelines(api.url, tmp_path)
    results = await asyncio.gather(asyncingest.run(cfg_a), asyncingest.run(cfg_b))
    assert all(r.ok for r in results)
    stats = api.stats
    assert stats.violations > 0 and stats.max_in_window[0] > WINDOW[0]


async def test_a_429_seen_by_one_pipeline_pauses_the_other(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    # No windows configured: the shared budget only pauses. The server answers the first
    # request for user 1001 with 429 and Retry-After: 1.
    api = await start_mock_api(
        MockSettings.small(
            latency_ms=2.0,
            fault_retry_after=1.0,  # small() says 0.2: too short to see b held back for sure
            forced_faults={"/partner/users/1001": ("status_429",)},
        )
    )
    a_cfg = pipeline(api.url, [users("users", [1000, 1001, 1002], tmp_path, 2)], tmp_path / "a")
    b_ids = list(range(5000, 20_000))  # more than b will fetch: stopped once a is done
    b_cfg = pipeline(api.url, [users("other", b_ids, tmp_path, 4)], tmp_path / "b")
    budget = Budget()
    b_started = asyncio.Event()
    b_waits: list[float] = []

    def b_seen(event: Event) -> None:
        if isinstance(event, RequestFinished):
            b_waits.append(event.limiter_wait)
            if len(b_waits) >= 20:
                b_started.set()

    a_events: list[Event] = []
    b = asyncingest.Engine(b_cfg, budget=budget, subscribers=[b_seen])
    b_run = asyncio.create_task(b.run())
    await asyncio.wait_for(b_started.wait(), 30)
    result_a = await asyncingest.run(a_cfg, budget=budget, subscribers=[a_events.append])
    b.stop()
    result_b = await b_run
    assert result_a.ok and result_b.stopped
    [paused] = [e for e in a_events if isinstance(e, RatePaused)]
    assert paused.throttled and paused.seconds == 1.0
    # b never waited on the budget but for a's pause: its requests held back waited for it.
    assert max(b_waits) >= 0.5
