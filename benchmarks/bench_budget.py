"""What one grant costs: the in-process ``Budget`` against ``RedisBudget`` (one Lua script call).

    python benchmarks/bench_budget.py [--n 3000] [--redis redis://127.0.0.1:6379/0]

One process, one waiter at a time, windows far too large to ever make anyone wait, so every
figure is the cost of the call itself: ``await budget.acquire(...)`` timed around, then
``release()`` (which for Redis records the release in the background, as in a run). Printed:
p50, p99 and max in microseconds, and grants per second of one sequential waiter. Benchmarks
report; they do not assert (see STYLE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
import uuid

from asyncingest.limits.clock import BoundLoopClock
from asyncingest.limits.limiter import SlidingWindowLimiter
from asyncingest.limits.rate_budget import Budget, BudgetShare, RateBudget

WINDOWS = [(1_000_000_000, 1.0), (1_000_000_000, 60.0)]  # two windows, as a real API has


async def measure(budget: RateBudget | BudgetShare | SlidingWindowLimiter, n: int) -> list[float]:
    """Seconds per acquire, ``n`` times (after 200 warm-up grants)."""
    out: list[float] = []
    clock = time.perf_counter
    for i in range(n + 200):
        t0 = clock()
        permit = await budget.acquire("laps")
        took = clock() - t0
        permit.release()
        if i >= 200:
            out.append(took)
    return out


def row(name: str, samples: list[float]) -> str:
    us = sorted(s * 1e6 for s in samples)
    p50 = statistics.median(us)
    p99 = us[int(len(us) * 0.99) - 1]
    rate = len(us) / (sum(us) / 1e6)
    return f"| {name} | {p50:,.1f} | {p99:,.1f} | {us[-1]:,.1f} | {rate:,.0f} |"


async def main(n: int, redis_url: str | None) -> None:
    lines = [
        "| budget | acquire p50 (µs) | p99 (µs) | max (µs) | grants/s, one waiter |",
        "|:---|---:|---:|---:|---:|",
        row(
            "`SlidingWindowLimiter` (the engine's before `Budget`)",
            await measure(
                SlidingWindowLimiter(WINDOWS, BoundLoopClock(asyncio.get_running_loop())), n
            ),
        ),
        row(
            "in-process `Budget`, one pipeline's share",
            await measure(BudgetShare(Budget(WINDOWS), "p"), n),
        ),
    ]
    if redis_url is not None:
        from asyncingest.limits.redis_budget import RedisBudget

        prefix = f"asyncingest-bench-{uuid.uuid4().hex[:8]}"
        async with RedisBudget(redis_url, WINDOWS, prefix=prefix) as budget:
            lines.append(
                row("`RedisBudget` (local Redis)", await measure(BudgetShare(budget, "p"), n))
            )
    print(f"{n} grants each; Python {platform.python_version()}, {platform.machine()}")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.redis or None))
