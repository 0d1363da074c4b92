"""RedisBudget against the Redis at 127.0.0.1:6379 (skipped when it is absent, unless CI=true)
and the mock API's referee, which counts every arrival that would break the server's windows.

Each test uses its own key prefix and touches no other key: the Redis is shared by the
test processes of ``pytest -n`` (and by whatever else runs on the machine), so the state-loss
test deletes its own prefix's keys instead of FLUSHDB, which would empty the budgets of tests
running beside it."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import uuid
from pathlib import Path

import pytest

import asyncingest
from asyncingest.mockapi import MockSettings

from .conftest import (
    F1_ENDPOINTS,
    MockAPIFactory,
    most_in_any_window,
    pipeline,
    service_required,
    spawn_hammer,
)

REDIS = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        import redis  # noqa: F401  -- the optional extra asyncingest[scale]
    except ImportError:
        return False
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


if not _redis_up():
    if service_required():
        raise RuntimeError("CI=true: the Redis at 127.0.0.1:6379 (and redis-py) are required")
    pytest.skip("no Redis at 127.0.0.1:6379 (or no redis-py)", allow_module_level=True)

from redis.asyncio import Redis  # noqa: E402  -- after the skip: an optional dependency

from asyncingest.limits.redis_budget import RedisBudget  # noqa: E402


def prefix() -> str:
    return f"asyncingest-test-{uuid.uuid4().hex[:10]}"


# 100/1 s + 170/10 s, scaled down: bursts of 10 per 0.25 s, 34 per 2 s (17/s) in the long run.
BURST, LONG = (10, 0.25), (34, 2.0)


@pytest.mark.slow  # spawns processes, or waits out windows in real time
async def test_three_processes_share_one_budget_never_over_and_use_it_all(
    start_mock_api: MockAPIFactory,
) -> None:
    api = await start_mock_api(MockSettings.small(rate_limits=(BURST, LONG), latency_ms=2.0))
    url = f"{api.url}/partner/users/1001"
    spec = [f"{n}/{w}" for n, w in (BURST, LONG)]
    key = prefix()
    procs = [await spawn_hammer(REDIS, key, url, "7", "6", *spec) for _ in range(3)]
    outputs = [(await p.communicate())[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    stats = api.stats
    arrivals = [e.time for e in stats.log if e.path.startswith("/partner/users")]
    granted = sum(int(o.split("granted")[-1]) for o in outputs)
    print(f"granted {granted}, served {len(arrivals)}, max in window {stats.max_in_window}")
    assert (stats.violations, stats.sent_429) == (0, 0), outputs
    assert most_in_any_window(arrivals, BURST[1]) <= BURST[0]
    assert most_in_any_window(arrivals, LONG[1]) <= LONG[0]
    # Throughput: the first three whole long windows from the first arrival hold at most
    # 3 x 34; at least 90% of that was used.
    t0 = min(arrivals)
    used = sum(t0 <= t < t0 + 3 * LONG[1] for t in arrivals)
    print(f"used {used} of {3 * LONG[0]} in the first 3 long windows")
    assert used >= 0.9 * 3 * LONG[0]


async def test_unreachable_redis_grants_nothing_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = RedisBudget("redis://127.0.0.1:1/0", [(100, 1.0)], prefix=prefix(), timeout=0.2)
    caplog.set_level(logging.WARNING, logger="asyncingest.budget")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(budget.acquire("k"), 1.5)
    assert not budget.reachable and budget.in_flight == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "does not answer" in lines[0] and "no request" in lines[0]
    await budget.aclose()


async def test_a_hung_redis_times_out_and_grants_nothing() -> None:
    """A server that accepts and never answers (a SIGSTOPped Redis, as clients see it)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    budget = RedisBudget(f"redis://127.0.0.1:{port}/0", [(5, 1.0)], prefix=prefix(), timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(budget.acquire("k"), 1.5)
        assert not budget.reachable
    finally:
        await budget.aclose()
        server.close()


@pytest.mark.slow  # spawns processes, or waits out windows in real time
async def test_state_lost_mid_run_keeps_every_window(
    start_mock_api: MockAPIFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The window is full when Redis loses the history: the next slots wait a whole window
    instead of going at once (which the server would count as over its limit)."""
    import aiohttp

    window = (5, 2.0)
    api = await start_mock_api(MockSettings.small(rate_limits=(window,)))
    key = prefix()
    caplog.set_level(logging.WARNING, logger="asyncingest.budget")
    async with (
        RedisBudget(REDIS, [window], prefix=key) as budget,
        aiohttp.ClientSession() as session,
    ):

        async def request() -> None:
            permit = await budget.acquire("k")
            try:
                async with session.get(f"{api.url}/partner/users/7") as response:
                    await response.read()
            finally:
                permit.release()

        await asyncio.gather(*(request() for _ in range(window[0])))  # the window is full
        async with Redis.from_url(REDIS) as admin:
            # The history is gone, as after a restart without persistence (or a FLUSHDB): every
            # key of this budget, and only those.
            lost = [k async for k in admin.scan_iter(match=f"{key}:*")]
            assert lost
            await admin.delete(*lost)
        await asyncio.gather(*(request() for _ in range(window[0])))
    stats = api.stats
    assert stats.requests == 2 * window[0]
    assert (stats.violations, stats.sent_429) == (0, 0)
    assert any("lost its state" in r.getMessage() for r in caplog.records)


async def test_a_newcomer_first_to_find_redis_empty_does_not_hide_the_loss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis loses its state; a fresh client (a new worker, ``status``) asks first and starts a
    new history. A worker that was sending before still learns of the loss (its epoch is not
    the one there) and counts every window full, instead of starting from empty windows."""
    window = (3, 30.0)
    url = REDIS
    key = prefix()
    caplog.set_level(logging.WARNING, logger="asyncingest.budget")
    async with RedisBudget(url, [window], prefix=key) as old:
        for _ in range(window[0]):
            (await old.acquire("k")).release()
        await old.aclose()  # the releases recorded
        async with Redis.from_url(url) as admin:
            # the state lost: this budget's keys, and only those (the Redis is shared)
            lost = [k async for k in admin.scan_iter(match=f"{key}:*")]
            assert lost
            await admin.delete(*lost)
        async with RedisBudget(url, [window], prefix=key) as newcomer:
            assert newcomer.usage()[0].used == 0  # it cannot tell
        await old.peek()
        assert old.usage()[0].used == window[0]  # full again, for a whole window
        assert old.time_until_capacity() == pytest.approx(window[1], abs=1.0)
    assert any("lost its state" in r.getMessage() for r in caplog.records)


@pytest.mark.slow  # spawns processes, or waits out windows in real time
async def test_a_killed_holders_slot_returns_when_its_lease_runs_out() -> None:
    key = prefix()
    holder = await spawn_hammer("--hold", REDIS, key, "0.6", "1/0.2")
    assert holder.stdout is not None
    assert (await asyncio.wait_for(holder.stdout.readline(), 30)).strip() == b"held"
    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    async with RedisBudget(REDIS, [(1, 0.2)], prefix=key) as budget:
        assert budget.in_flight == 1  # the dead worker's lease, still counted
        permit = await asyncio.wait_for(budget.acquire("k"), 10)
        permit.release()


async def test_engines_with_a_redis_budget_each_keep_the_server_window(
    start_mock_api: MockAPIFactory, tmp_path: Path
) -> None:
    """Two pipelines in one process, each with its own RedisBudget instance (as two worker
    processes would have), against one server window."""
    window = (10, 0.25)
    api = await start_mock_api(MockSettings.small(rate_limits=(window,)))
    key = prefix()
    rate = [{"requests": window[0], "per_seconds": window[1]}]
    cfgs = [pipeline(api.url, F1_ENDPOINTS[:4], tmp_path / n, rate_limits=rate) for n in "ab"]
    budgets = [RedisBudget(REDIS, [window], prefix=key) for _ in cfgs]
    results = await asyncio.gather(
        *(asyncingest.run(c, budget=b) for c, b in zip(cfgs, budgets, strict=True))
    )
    for b in budgets:
        await b.aclose()
    assert all(r.ok for r in results)
    assert (api.stats.violations, api.stats.sent_429) == (0, 0)
