"""Benchmark the CPU stage the engine runs (transform.pipe): scaling, round trip, event-loop lag.

    python benchmarks/bench_cpu_stage.py [--quick]

Measured side by side in one run, with batches of 500 lap records (~105 KB of JSON) fed
through the engine's own ``TransformPipe`` (``asyncingest/transform/pipe.py``, the ordered pipe
each endpoint's writer feeds, built from a parsed ``TransformConfig``) on a real
``TransformPool``, fed one page per batch with a progress token as the writer feeds it:

1. throughput with 1, 2 and all workers for a calibrated CPU-burning transform of ~20 ms and
   of ~2 ms per batch (a loop of integer arithmetic, not a sleep) and for the telemetry example,
   with the speedup against 1 worker;
2. the per-batch cost of the pool round trip (a transform that does nothing);
3. what crosses the process boundary: JSON bytes (the pipe's choice) against pickled dicts and
   Arrow IPC, 500 records in and out, with the parent's CPU time per batch (the share that
   competes with the event loop for the GIL);
4. the event loop's lag while the pool is busy: a timer every 5 ms records how late it fires.

``--quick`` runs everything small (a few seconds; the tests call it). Benchmarks report; they
do not assert (see STYLE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import multiprocessing
import os
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )

import orjson  # noqa: E402  (after the path set-up above)
import pyarrow as pa  # noqa: E402
import pyarrow.ipc as ipc  # noqa: E402

from asyncingest.config.models import TransformConfig  # noqa: E402
from asyncingest.examples import telemetry  # noqa: E402
from asyncingest.mockapi.data import Dataset  # noqa: E402
from asyncingest.mockapi.settings import MockSettings  # noqa: E402
from asyncingest.operate.tuning import tune_gc  # noqa: E402
from asyncingest.transform.pipe import TransformPipe  # noqa: E402
from asyncingest.transform.pool import TransformPool  # noqa: E402

Record = dict[str, Any]
HERE = Path(__file__).stem  # workers import this file by name (its folder is on their sys.path)
BATCH = 500
_TELEMETRY = "asyncingest.examples.telemetry:"
_SPIN_ENV = "ASYNCINGEST_BENCH_SPINS_PER_MS"


# ------------------------------------------------------------------ transforms (run in workers)


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x = (x * 31 + i) & 0xFFFFF
    return x


def _burn(batch: list[Record], ms: float) -> list[Record]:
    started = time.process_time()
    _spin(int(ms * float(os.environ[_SPIN_ENV])))
    return [{"n": len(batch), "cpu_ms": (time.process_time() - started) * 1e3}]


def burn_20ms(batch: list[Record]) -> list[Record]:
    return _burn(batch, 20.0)


def burn_2ms(batch: list[Record]) -> list[Record]:
    return _burn(batch, 2.0)


def noop(batch: list[Record]) -> list[Record]:
    return []


def identity(batch: list[Record]) -> list[Record]:
    return batch


def raw_identity_dicts(batch: list[Record]) -> list[Record]:
    return batch


def raw_identity_ipc(payload: bytes) -> bytes:
    return _ipc(ipc.open_stream(payload).read_all())


def raw_json_to_arrow_ipc(payload: bytes) -> bytes:
    return _ipc(pa.Table.from_pylist(orjson.loads(payload)))


def _ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


# ------------------------------------------------------------------ measuring


def calibrate() -> float:
    """Spins per millisecond of CPU on this machine (best of five)."""
    n = 200_000
    best = min(_timed_spin(n) for _ in range(5))
    return n / (best * 1e3)


def _timed_spin(n: int) -> float:
    started = time.process_time()
    _spin(n)
    return time.process_time() - started


class LagMonitor:
    """A timer every ``period`` seconds; records how late each one fires.

    It also records the loop thread's CPU time between two ticks: if a tick is late but the
    thread used little CPU, the loop was not blocked by our code; the OS ran something else.
    """

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.lags: list[float] = []
        self.busy: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagMonitor:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, cpu = loop.time() + self.period, time.thread_time()
            await asyncio.sleep(self.period)
            self.lags.append(max(0.0, loop.time() - due))
            self.busy.append(time.thread_time() - cpu)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Run:
    transform: str
    workers: int | str
    batches: int
    seconds: float
    worker_ms: float
    lags: list[float]
    busy: list[float]

    @property
    def rate(self) -> float:
        return self.batches / self.seconds

    @property
    def lag_p99_ms(self) -> float:
        return _percentile(self.lags, 0.99) * 1e3

    @property
    def lag_max_ms(self) -> float:
        return max(self.lags, default=0.0) * 1e3

    @property
    def busy_max_ms(self) -> float:
        return max(self.busy, default=0.0) * 1e3


async def pipe_run(pool: TransformPool, spec: TransformConfig, batch: list[Record], n: int) -> Run:
    """``n`` batches through a fresh pipe on ``pool``, with the lag monitor running."""

    async def write_output(records: list[Record]) -> None:
        pass

    def set_aside(_: list[Record], reason: str) -> None:
        raise RuntimeError(reason)

    released: list[object] = []
    pipe = TransformPipe(pool, spec, write_output, set_aside, released.append)
    for page in range(pool.workers):  # warm: import the function, run the initializer
        await pipe.feed(batch, page)
    await pipe.drain()
    in_workers = pipe.worker_seconds
    async with LagMonitor() as lag:
        started = time.perf_counter()
        for page in range(n):
            await pipe.feed(batch, page)
        await pipe.drain()
        seconds = time.perf_counter() - started
    worker_ms = (pipe.worker_seconds - in_workers) / n * 1e3
    name = spec.function.rpartition(":")[2]
    return Run(name, pool.workers, n, seconds, worker_ms, lag.lags, lag.busy)


def best_of(rounds: list[Run]) -> Run:
    """The fastest round, with the lag samples of every round (lag is not best-of)."""
    best = max(rounds, key=lambda r: r.rate)
    lags = [lag for r in rounds for lag in r.lags]
    busy = [b for r in rounds for b in r.busy]
    return Run(best.transform, best.workers, best.batches, best.seconds, best.worker_ms, lags, busy)


async def scaling(batch: list[Record], counts: list[int], rounds: int, quick: bool) -> list[Run]:
    """Every (transform, workers) pair, interleaved over rounds so background load hits all."""
    plan = [
        (TransformConfig(function=f"{HERE}:burn_20ms", batch_size=BATCH), 10 if quick else 60),
        (TransformConfig(function=f"{HERE}:burn_2ms", batch_size=BATCH), 60 if quick else 400),
        (
            TransformConfig(
                function=_TELEMETRY + "lap_stats", initializer=_TELEMETRY + "init", batch_size=BATCH
            ),
            10 if quick else 60,
        ),
    ]
    results: dict[tuple[str, int], list[Run]] = {}
    async with contextlib.AsyncExitStack() as stack:
        pools = [await stack.enter_async_context(TransformPool(w)) for w in counts]
        for _ in range(rounds):
            for spec, n in plan:
                for pool in pools:
                    run = await pipe_run(pool, spec, batch, n * pool.workers)
                    results.setdefault((spec.function, pool.workers), []).append(run)
    return [best_of(rs) for rs in results.values()]


def inline_run(fn: Callable[[list[Record]], list[Record]], batch: list[Record], n: int) -> Run:
    payload = orjson.dumps(batch)
    started = time.perf_counter()
    for _ in range(n):
        orjson.loads(orjson.dumps(fn(orjson.loads(payload))))
    seconds = time.perf_counter() - started
    name = getattr(fn, "__name__", "?")
    return Run(name, "inline", n, seconds, seconds / n * 1e3, [], [])


async def round_trips(batch: list[Record], n: int) -> tuple[float, float, float]:
    """Sequential no-op batches through the pool: mean and p99 ms, and the loop's encode ms."""
    async with TransformPool(1) as pool:
        payload = orjson.dumps(batch)
        for _ in range(5):
            await pool.run(f"{HERE}:noop", payload)
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await pool.run(f"{HERE}:noop", orjson.dumps(batch))
            times.append(time.perf_counter() - started)
    encode = min(_timed(lambda: orjson.dumps(batch)) for _ in range(50))
    return statistics.fmean(times) * 1e3, _percentile(times, 0.99) * 1e3, encode * 1e3


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@dataclass
class Boundary:
    name: str
    round_trip_ms: float
    parent_cpu_ms: float
    in_kb: float


async def boundary(batch: list[Record], n: int) -> list[Boundary]:
    """500 records in and 500 out, one worker, one batch at a time, four ways."""
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("forkserver")
    results = []

    async def ours() -> tuple[object, int]:
        payload = orjson.dumps(batch)
        outcome = await pool.run(f"{HERE}:identity", payload)
        return outcome.records(), len(payload)

    async def pickled() -> tuple[object, int]:
        out = await loop.run_in_executor(executor, raw_identity_dicts, batch)
        return out, len(pickle.dumps(batch))  # what the executor's feeder thread sends

    async def arrow_ipc() -> tuple[object, int]:
        payload = _ipc(pa.Table.from_pylist(batch))
        out = await loop.run_in_executor(executor, raw_identity_ipc, payload)
        return ipc.open_stream(out).read_all().to_pylist(), len(payload)

    async def json_to_arrow() -> tuple[object, int]:
        payload = orjson.dumps(batch)
        out = await loop.run_in_executor(executor, raw_json_to_arrow_ipc, payload)
        return ipc.open_stream(out).read_all().to_pylist(), len(payload)

    variants = [
        ("JSON bytes in and out, fn(list[dict]) (chosen)", ours),
        ("pickled list[dict] in and out (plain run_in_executor)", pickled),
        ("Arrow IPC in and out, Table built on the loop, fn(Table)", arrow_ipc),
        ("JSON bytes in, Table built in the worker, IPC out", json_to_arrow),
    ]
    async with TransformPool(1) as pool:
        with ProcessPoolExecutor(1, mp_context=context) as executor:
            for name, variant in variants:
                for _ in range(3):
                    await variant()
                size = (await variant())[1]
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for _ in range(n):
                    await variant()
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                results.append(Boundary(name, wall / n * 1e3, cpu / n * 1e3, size / 1024))
    return results


# ------------------------------------------------------------------ report


def busy_elsewhere(seconds: float = 1.0) -> str:
    """How busy the CPUs are before we start (other processes): results are noisy if high."""
    try:
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
    except OSError:
        return "unknown"
    total = sum(after) - sum(before)
    idle = (after[3] + after[4]) - (before[3] + before[4])
    busy = 1 - idle / total if total else 0.0
    return f"{busy:.0%} of all CPUs busy with other work just before the run"


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:9]]


def machine() -> dict[str, str]:
    return {
        "machine": f"{os.cpu_count()} CPUs (nproc), {platform.machine()}, {platform.system()}",
        "background": busy_elsewhere(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/bench_cpu_stage.py " + " ".join(sys.argv[1:]),
        "start method": TransformPool(1).start_method,
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
        + [fmt.format(*r) for r in rows]
    )


def scaling_rows(runs: list[Run]) -> list[list[str]]:
    rows = []
    base = {r.transform: r.rate for r in runs if r.workers == 1}
    for r in runs:
        speedup = f"{r.rate / base[r.transform]:.2f}x" if r.transform in base else "-"
        lag = "-" if r.workers == "inline" else f"{r.lag_p99_ms:.1f} / {r.lag_max_ms:.1f}"
        busy = "-" if r.workers == "inline" else f"{r.busy_max_ms:.2f}"
        rows.append(
            [
                r.transform,
                str(r.workers),
                f"{r.worker_ms:.2f}",
                str(r.batches),
                f"{r.rate:.1f}",
                speedup,
                lag,
                busy,
            ]
        )
    return rows


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a few seconds")
    args = parser.parse_args(argv)
    quick = args.quick
    os.environ[_SPIN_ENV] = str(calibrate())  # before the first pool: workers inherit it

    laps = Dataset.build(MockSettings(n_meetings=2)).laps[:BATCH]
    tune_gc()  # as the CLI runs: a full collection would show up as event-loop lag
    info = machine()
    started = time.perf_counter()
    async with TransformPool(2):
        first_ready = time.perf_counter() - started
    started = time.perf_counter()
    async with TransformPool(2):
        next_ready = time.perf_counter() - started

    async with LagMonitor() as idle:  # the machine's own noise: the loop does nothing else
        await asyncio.sleep(0.5 if quick else 2.0)
    counts = sorted({1, 2, os.cpu_count() or 1})
    rounds = 1 if quick else 3
    runs = await scaling(laps, counts, rounds, quick)
    telemetry.init()
    runs.append(inline_run(burn_2ms, laps, 60 if quick else 400))
    runs.append(inline_run(telemetry.lap_stats, laps, 10 if quick else 60))

    rt_mean, rt_p99, encode_ms = await round_trips(laps, 40 if quick else 400)
    small_mean, small_p99, _ = await round_trips(laps[:1], 40 if quick else 400)
    crossing = await boundary(laps, 20 if quick else 200)

    heads = [
        "transform",
        "workers",
        "worker ms/batch",
        "batches",
        "batches/s",
        "speedup vs 1",
        "loop lag p99 / max ms",
        "loop CPU max ms/tick",
    ]
    rows = scaling_rows(runs)
    trip_heads = ["payload", "round trip mean ms", "round trip p99 ms"]
    trip_rows = [
        [
            f"{BATCH} lap records ({len(orjson.dumps(laps)) // 1024} KB JSON)",
            f"{rt_mean:.2f}",
            f"{rt_p99:.2f}",
        ],
        ["1 record", f"{small_mean:.2f}", f"{small_p99:.2f}"],
    ]
    cross_heads = [
        "what crosses the boundary (500 records in and out)",
        "KB in",
        "round trip ms",
        "parent CPU ms",
    ]
    cross_rows = [
        [b.name, f"{b.in_kb:.0f}", f"{b.round_trip_ms:.2f}", f"{b.parent_cpu_ms:.2f}"]
        for b in crossing
    ]
    pipe_lags = [r for r in runs if r.workers != "inline"]
    worst = max(pipe_lags, key=lambda r: r.lag_max_ms)

    for markdown in (False, True):
        if markdown:
            print("\n---- markdown for benchmarks/RESULTS.md ----\n")
            print("## CPU stage (`bench_cpu_stage.py`)\n")
            print(
                "\n".join(
                    f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in info.items()
                )
            )
        else:
            print("\n".join(f"{k:>13}: {v}" for k, v in info.items()))
        print(
            f"\nPool start-up ({info['start method']}, 2 workers, ready to run): "
            f"first {first_ready * 1e3:.0f} ms, next {next_ready * 1e3:.0f} ms\n"
        )
        print(
            f"Throughput (best of {rounds} interleaved round{'s' * (rounds > 1)}), speedup and "
            "event-loop lag (a timer every 5 ms, all rounds) while the pool is busy; "
            f"batches of {BATCH} lap records; inline = in this process, no pool:\n"
        )
        print(table(heads, rows, markdown))
        idle_p99, idle_max = _percentile(idle.lags, 0.99) * 1e3, max(idle.lags) * 1e3
        print(
            f"\nThe same timer with the pool idle: lag p99 {idle_p99:.1f} ms,"
            f" max {idle_max:.1f} ms (the machine's own noise). Loop CPU"
            " max/tick: the most CPU the loop thread used between two ticks; a late tick with"
            " little loop CPU means the OS ran something else, not that the loop was blocked."
        )
        print(
            f"\nPool round trip of a no-op transform (1 worker, one batch at a time); encoding "
            f"{BATCH} records with orjson on the loop: {encode_ms:.2f} ms\n"
        )
        print(table(trip_heads, trip_rows, markdown))
        print(
            "\nBatch type and what crosses the process boundary (1 worker, identity transform):\n"
        )
        print(table(cross_heads, cross_rows, markdown))
        print(
            f"\nWorst event-loop lag over all pipe runs: max {worst.lag_max_ms:.1f} ms "
            f"({worst.transform}, {worst.workers} workers); target < 10 ms\n"
        )


if __name__ == "__main__":
    asyncio.run(main())
