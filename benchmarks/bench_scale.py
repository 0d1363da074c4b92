"""Benchmark scale-out (docs/scale-out.md): throughput with 1, 2 and 4 worker processes.

    python benchmarks/bench_scale.py [--quick] [--broker amqp://guest:guest@127.0.0.1:5672/]

Two workloads, each submitted once per worker count to a fresh queue with the workers already
consuming (their start-up is not timed; the clock runs from the submit to the last commit):

1. I/O-bound: one request per id (``/partner/users/{id}``) at 50 ms latency, no rate limit,
   8 requests in flight per worker, shards of 50 ids;
2. CPU-bound: the telemetry example (``asyncingest.examples.telemetry:lap_stats``) over the laps
   of every session, one session per shard, a pool of one process per worker.

The mock API runs in this process (it competes for the same cores). Benchmarks report; they do
not assert (see STYLE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asyncingest import config_from_dict  # noqa: E402
from asyncingest.mockapi import MockAPI, MockSettings  # noqa: E402
from asyncingest.scale.broker import QueueNames  # noqa: E402
from asyncingest.scale.commit import RunFolder  # noqa: E402
from asyncingest.scale.submit import submit  # noqa: E402


async def _worker(broker: str, queue: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncingest",
        "worker",
        "--broker",
        broker,
        "--queue",
        queue,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    async for line in proc.stdout:
        if b"consuming" in line:
            break
    asyncio.get_running_loop().create_task(_drain(proc))
    return proc


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    async for _ in proc.stdout:
        pass


async def one(broker: str, workers: int, cfg: Any, out: Path, size: int, items: int) -> float:
    """Items per second with ``workers`` workers, from the submit to the last commit."""
    import aio_pika

    names = QueueNames(f"bench.scale.{uuid.uuid4().hex[:8]}")
    procs = [await _worker(broker, names.shards) for _ in range(workers)]
    try:
        started = time.perf_counter()
        done = await submit(cfg, broker, run_id="b", output=out, shard_size=size, names=names)
        folder = RunFolder(out, "b")
        while True:  # the commits happen in other processes: look every 20 ms
            if len(await asyncio.to_thread(folder.committed_ids)) >= done.shards:
                break
            await asyncio.sleep(0.02)
        return items / (time.perf_counter() - started)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            await p.wait()
        connection = await aio_pika.connect(broker)
        async with connection:
            channel = await connection.channel()
            for q in (names.shards, names.dead, names.run_record("b")):
                await channel.queue_delete(q)


async def main(args: argparse.Namespace) -> None:
    counts = [1, 2] if args.quick else [1, 2, 4]
    ids = 120 if args.quick else 800
    print(f"# scale-out: items per second by worker processes ({os.cpu_count()} CPUs)")
    if args.only != "cpu":
        await io_bound(args, counts, ids)
    if args.only != "io":
        await cpu_bound(args, counts)


async def io_bound(args: argparse.Namespace, counts: list[int], ids: int) -> None:
    """Workload 1: one request per id at 50 ms."""
    async with MockAPI(MockSettings.small(latency_ms=50.0, latency_jitter_ms=0.0)) as api:
        for k in counts:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "ids.csv"
                path.write_text("user_id\n" + "\n".join(str(5000 + i) for i in range(ids)) + "\n")
                cfg = config_from_dict(
                    {
                        "api": {"base_url": api.url, "concurrency": {"requests_per_endpoint": 8}},
                        "output": {"directory": str(Path(tmp) / "out")},
                        "endpoints": [
                            {
                                "name": "users",
                                "path": "/partner/users/{user_id}",
                                "single_record": True,
                                "from_file": {"path": str(path), "column": "user_id"},
                            }
                        ],
                    }
                )
                rate = await one(args.broker, k, cfg, Path(tmp) / "out", 50, ids)
            print(f"io-bound  50 ms/request  {k} worker(s): {rate:8.1f} ids/s")


async def cpu_bound(args: argparse.Namespace, counts: list[int]) -> None:
    """Workload 2: the telemetry transform, one session per shard."""
    big = {"n_meetings": 2 if args.quick else 6, "sessions_per_meeting": 2, "n_drivers": 20}
    settings = MockSettings.small(laps_per_driver=60, **big)
    async with MockAPI(settings) as api:
        sessions = [s["session_key"] for s in api.dataset.sessions]
        laps = len(api.dataset.laps)
        for k in counts:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "sessions.csv"
                path.write_text("session_key\n" + "\n".join(map(str, sessions)) + "\n")
                cfg = config_from_dict(
                    {
                        "api": {"base_url": api.url, "concurrency": {"cpu_workers": 1}},
                        "output": {"directory": str(Path(tmp) / "out")},
                        "endpoints": [
                            {
                                "name": "laps",
                                "path": "/v1/laps",
                                "params": {"session_key": "{session_key}"},
                                "from_file": {"path": str(path), "column": "session_key"},
                                "records": "results",
                                "pagination": {"type": "offset", "limit": 100},
                                "transform": {
                                    "function": "asyncingest.examples.telemetry:lap_stats",
                                    "initializer": "asyncingest.examples.telemetry:init",
                                    "batch_size": 200,
                                },
                            }
                        ],
                    }
                )
                rate = await one(args.broker, k, cfg, Path(tmp) / "out", 1, laps)
            print(
                f"cpu-bound telemetry ({len(sessions)} sessions, {laps:,} laps) "
                f"{k} worker(s): {rate:8.1f} laps/s"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--only", choices=["io", "cpu"], default=None, help="one workload")
    asyncio.run(main(parser.parse_args()))
