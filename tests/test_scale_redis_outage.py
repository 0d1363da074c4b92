"""Issue 13, test 4: the shared budget's Redis is SIGSTOPped for 5 s, then killed and restarted
without its state, while three worker processes (``tests.redis_hammer``) send through one
:class:`RedisBudget` to the mock API's referee.

The test starts its OWN ``redis-server`` on a free loopback port with no persistence
(``--save '' --appendonly no``): the machine's shared Redis on 6379 is never touched. Skipped
when the binary is absent, unless CI=true (then it fails).

What the referee's arrival times must show (the server's clock is this process's loop clock,
which SIGSTOP/SIGCONT and the restart are timed on):

* no request arrives while Redis is stopped (after a grace for requests granted just before the
  stop, at most one in-flight set);
* after the restart, nothing for the longest window (the budget cannot know what was sent in it,
  so it waits it out), then sending resumes;
* over the whole run, no window the server counts ever holds more than its limit.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asyncingest.mockapi import MockSettings

from .conftest import MockAPIFactory, most_in_any_window, service_required, spawn_hammer

pytestmark = pytest.mark.slow  # spawns processes and waits out real seconds

pytest.importorskip("redis", reason="redis-py (the scale extra)")

BURST, LONG = (10, 0.25), (34, 2.0)  # 100/1 s + 170/10 s scaled down, as in test_redis_budget
STOPPED = 5.0
GRACE = 0.5  # requests granted just before a stop or a kill may still arrive this late


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A ``redis-server`` of this test's, without persistence, restartable on its port."""

    def __init__(self, binary: str, port: int, folder: Path) -> None:
        self.binary = binary
        self.port = port
        self.folder = folder
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
            "--daemonize",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(200):
            if await self.ping():
                return
            await asyncio.sleep(0.025)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    async def ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 0.5
            )
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return await asyncio.wait_for(reader.readline(), 0.5) == b"+PONG\r\n"
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process must run to die cleanly
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        if service_required():
            pytest.fail("CI=true: the redis-server binary is required")
        pytest.skip("no redis-server binary")
    server = OwnRedis(binary, _free_port(), tmp_path)
    assert server.port != 6379
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


async def test_redis_stopped_then_restarted_empty_no_request_and_no_window_over(
    own_redis: OwnRedis, start_mock_api: MockAPIFactory
) -> None:
    api = await start_mock_api(MockSettings.small(rate_limits=(BURST, LONG), latency_ms=2.0))
    loop = asyncio.get_running_loop()
    url = f"{api.url}/partner/users/1001"
    spec = [f"{n}/{w}" for n, w in (BURST, LONG)]
    key = f"asyncingest-outage-{os.getpid()}"
    procs = [await spawn_hammer(own_redis.url, key, url, "15", "6", *spec) for _ in range(3)]
    readers = [asyncio.create_task(p.communicate()) for p in procs]
    try:
        for _ in range(400):  # until the workers send
            if api.stats.requests >= 20:
                break
            await asyncio.sleep(0.025)
        await asyncio.sleep(1.5)

        own_redis.signal(signal.SIGSTOP)
        t_stop = loop.time()
        await asyncio.sleep(STOPPED)
        t_cont = loop.time()
        own_redis.signal(signal.SIGCONT)

        await asyncio.sleep(2.5)
        await own_redis.kill()  # restarted without its state: no persistence
        t_kill = loop.time()
        await own_redis.start()
        t_up = loop.time()
        outputs = [(await r)[0].decode() for r in readers]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert all(p.returncode == 0 for p in procs), outputs

    arrivals = sorted(e.time for e in api.stats.log if e.path.startswith("/partner/users"))

    def between(a: float, b: float) -> int:
        return sum(a <= t < b for t in arrivals)

    stopped = between(t_stop + GRACE, t_cont)
    after_loss = between(t_kill + GRACE, t_kill + LONG[1] - 0.05)
    summary = (
        f"{len(arrivals)} arrivals; stop {t_stop:.2f}-{t_cont:.2f}: {between(t_stop, t_cont)} "
        f"({stopped} after the grace); {between(t_cont, t_kill)} between SIGCONT and the kill "
        f"({between(t_stop - (t_kill - t_cont), t_stop)} in as long before the stop); "
        f"kill {t_kill:.2f}, up {t_up:.2f}: {after_loss} in the "
        f"longest window after; after it {between(t_up + LONG[1], arrivals[-1] + 1)}; "
        f"max in window {api.stats.max_in_window}, violations {api.stats.violations}"
    )
    print(summary)
    assert stopped == 0, summary
    assert between(t_stop, t_stop + GRACE) <= BURST[0], summary  # one in-flight set at most
    assert after_loss == 0, summary
    assert between(t_cont, t_kill) > 0, summary  # Redis back: sending resumed
    assert between(t_up + LONG[1], arrivals[-1] + 1) > 0, summary  # and after the loss too
    assert (api.stats.violations, api.stats.sent_429) == (0, 0), summary
    assert most_in_any_window(arrivals, BURST[1]) <= BURST[0], summary
    assert most_in_any_window(arrivals, LONG[1]) <= LONG[0], summary
    text = "\n".join(outputs)
    assert "does not answer" in text and "lost its state" in text, text


async def test_asks_a_stopped_redis_runs_late_are_given_back(own_redis: OwnRedis) -> None:
    """A SIGSTOPped Redis runs the asks it had received once it resumes, after the worker gave
    up on them: each would hold a slot, granted to nobody, until its lease ran out. The worker
    gives them back, so no slot stays held once Redis answers again."""
    from asyncingest.limits.redis_budget import RedisBudget

    windows = [(10, 1.0)]
    budget = RedisBudget(own_redis.url, windows, prefix="orphans", timeout=0.2)
    await budget.peek()
    own_redis.signal(signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(budget.acquire("k"), 1.5)
    finally:
        own_redis.signal(signal.SIGCONT)
    await budget.aclose()  # the give-backs reach Redis
    async with RedisBudget(own_redis.url, windows, prefix="orphans") as check:
        assert check.in_flight == 0
