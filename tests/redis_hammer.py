"""A worker process for test_redis_budget.py: requests a URL as fast as a RedisBudget allows.

    python -m tests.redis_hammer REDIS_URL PREFIX URL SECONDS WORKERS LIMIT/LENGTH...

Prints ``granted N`` at the end. ``--hold``: take one slot, print ``held``, never release it
(the test then SIGKILLs the process).
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp

from asyncingest.limits.redis_budget import RedisBudget


async def hammer(
    redis_url: str,
    prefix: str,
    url: str,
    seconds: float,
    workers: int,
    windows: list[tuple[int, float]],
) -> int:
    granted = 0
    deadline = time.monotonic() + seconds
    async with (
        RedisBudget(redis_url, windows, prefix=prefix) as budget,
        aiohttp.ClientSession() as session,
    ):

        async def worker() -> None:
            nonlocal granted
            while time.monotonic() < deadline:
                permit = await budget.acquire("hammer")
                granted += 1
                try:
                    async with session.get(url) as response:
                        await response.read()
                finally:
                    permit.release()

        await asyncio.gather(*(worker() for _ in range(workers)))
    return granted


async def hold(redis_url: str, prefix: str, windows: list[tuple[int, float]], lease: float) -> None:
    budget = RedisBudget(redis_url, windows, prefix=prefix, lease_seconds=lease)
    await budget.acquire("held")
    print("held", flush=True)
    await asyncio.sleep(3600)


def main(argv: list[str]) -> None:
    if argv[0] == "--hold":
        redis_url, prefix, lease, *spec = argv[1:]
        windows = [(int(n), float(w)) for n, w in (s.split("/") for s in spec)]
        asyncio.run(hold(redis_url, prefix, windows, float(lease)))
        return
    redis_url, prefix, url, seconds, workers, *spec = argv
    windows = [(int(n), float(w)) for n, w in (s.split("/") for s in spec)]
    n = asyncio.run(hammer(redis_url, prefix, url, float(seconds), int(workers), windows))
    print(f"granted {n}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
