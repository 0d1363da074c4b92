"""Benchmark the example service (examples/service): /health latency and event-loop lag while it
ingests at full speed, against the same service idle, in one run.

    python benchmarks/bench_service.py [--rounds 3] [--seconds 5] [--pipelines 2] [--quick]

Three processes, so none bills its CPU to another: the bundled mock API (``MockServer`` of
``_harness.py``: a larger F1 data set, no latency, no faults, no server-side limit), the
service (this process: ``make_app`` on aiohttp's ``AppRunner``, exactly as ``app.py`` serves
it, plus a 10 ms ticker in its loop) and the prober (``_health_probe.py``: one keep-alive
connection, ``GET /health``, wait 10 ms, again; it reports each round trip).

Rounds alternate an idle phase (nothing runs) and a busy phase (``--pipelines`` crawls of the
service's ``f1`` job, config/f1_crawl.yaml with no rate window, each restarted as soon as it
ends, through the service's own start/stop), so a busy neighbour on the machine touches both
alike. The ticker records how late each 10 ms timer fires and the loop thread's CPU between two
ticks (a late tick with little loop CPU: the OS ran something else; with a lot: our code held
the loop). ``--quick``: one short round (the tests run it). Benchmarks report; they do not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402  (after the path set-up above)

from asyncingest import tune_gc  # noqa: E402
from asyncingest.mockapi import MockSettings  # noqa: E402
from benchmarks._harness import (  # noqa: E402
    RESULT_PREFIX,
    MockServer,
    child_env,
    machine,
    machine_busy_seconds,
)
from examples.service.app import SERVICE, Ingestion, IngestService, make_app  # noqa: E402

TICK = 0.010  # the ticker's period
PROBE_GAP = 0.010  # the prober's pause between two /health requests
TARGET_P99_MS = 20.0

#: The crawl: 120 sessions (24 meetings x 5), 250 laps each in pages of 100: ~1,000 requests and
#: ~50,000 records per pipeline.
SERVER = MockSettings.demo(
    n_meetings=24,
    sessions_per_meeting=5,
    latency_ms=0.0,
    latency_jitter_ms=0.0,
    fault_rate=0.0,
    rate_limits=(),
)


# -- the prober (benchmarks/_health_probe.py, a child process) -------------------------------


async def run_prober(url: str, seconds: float) -> tuple[list[float], int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks._health_probe",
        url,
        str(seconds),
        str(PROBE_GAP),
        stdout=asyncio.subprocess.PIPE,
        env=child_env(),
        cwd=ROOT,
    )
    out, _ = await proc.communicate()
    lines = [ln for ln in out.decode().splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"prober exited {proc.returncode}: {out.decode()[-2000:]}")
    data = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return data["latencies"], data["errors"]


# -- measuring the service's loop ------------------------------------------------------------


@dataclass
class Phase:
    """What one condition (idle or busy) measured, all rounds together."""

    name: str
    latencies: list[float] = field(default_factory=list)  # /health round trips, ms
    errors: int = 0
    lags: list[float] = field(default_factory=list)  # ticker lateness, ms
    loop_cpu: list[float] = field(default_factory=list)  # loop thread CPU between ticks, ms
    process_cpu: list[float] = field(default_factory=list)  # every thread's CPU, the same
    passes: list[float] = field(default_factory=list)  # loop thread CPU per pass of the loop, ms
    seconds: float = 0.0
    service_cpu: float = 0.0  # this process, every thread
    other_cpu: float = 0.0  # the machine's busy CPU that was neither us nor the mock API
    server_cpu: float = 0.0
    requests: int = 0
    records: int = 0
    pipelines: int = 0
    gc_pauses: list[float] = field(default_factory=list)  # ms, every generation
    gc_worst: str = ""  # generation and thread of the longest

    def late_ticks(self, over_ms: float = 20.0) -> tuple[int, int, int]:
        """Ticks later than ``over_ms``; of those, how many the loop thread spent at least half
        of on CPU (our code held the loop), and how many the service process did, any thread
        (the loop may wait for the GIL another thread holds). The rest: the OS ran others."""
        ticks = zip(self.lags, self.loop_cpu, self.process_cpu, strict=True)
        late = [(lag, cpu, proc) for lag, cpu, proc in ticks if lag > over_ms]
        held = sum(cpu >= (lag + TICK * 1e3) / 2 for lag, cpu, _ in late)
        ours = sum(proc >= (lag + TICK * 1e3) / 2 for lag, _, proc in late)
        return len(late), held, ours


class Ticker:
    """A 10 ms timer in the service's loop; files each tick's lateness under the current phase."""

    def __init__(self) -> None:
        self.phase: Phase | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, cpu, proc = loop.time() + TICK, time.thread_time(), time.process_time()
            await asyncio.sleep(TICK)
            if self.phase is not None:
                self.phase.lags.append(max(0.0, loop.time() - due) * 1e3)
                self.phase.loop_cpu.append((time.thread_time() - cpu) * 1e3)
                self.phase.process_cpu.append((time.process_time() - proc) * 1e3)


class Feeder:
    """Keeps ``n`` crawls going through the service until told to stop, then stops them."""

    def __init__(self, service: IngestService, n: int) -> None:
        self.service = service
        self.n = n
        self.started: list[Ingestion] = []
        self._stopping = False
        self._lanes: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._lanes = [asyncio.create_task(self._lane()) for _ in range(self.n)]

    async def _lane(self) -> None:
        while not self._stopping:
            ingestion = await self.service.start("f1", None)
            self.started.append(ingestion)
            await self.service.wait(ingestion)

    async def stop(self) -> None:
        self._stopping = True
        running = list(self.service.running.values())
        await asyncio.gather(*(self.service.stop(i) for i in running))
        await asyncio.gather(*self._lanes)

    async def count(self, phase: Phase) -> None:
        for ingestion in self.started:
            snap = await self.service.snapshot(ingestion)
            phase.requests += snap.requests
            phase.records += snap.records_written
        phase.pipelines += len(self.started)


class GcTimer:
    """Times every garbage collection (``gc.callbacks``) and files it under the current phase."""

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker
        self._t0 = 0.0
        self._loop = threading.get_ident()

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, stage: str, info: dict[str, int]) -> None:
        if stage == "start":
            self._t0 = time.thread_time()
        elif (phase := self.ticker.phase) is not None:
            pause = (time.thread_time() - self._t0) * 1e3  # CPU: wall time would bill the OS
            if pause > max(phase.gc_pauses, default=0.0):
                where = "loop" if threading.get_ident() == self._loop else "another thread"
                phase.gc_worst = f"generation {info['generation']}, {where}"
            phase.gc_pauses.append(pause)


class LoopPasses:
    """The loop thread's CPU in each pass of the loop (one ``select`` and every callback it made
    ready), filed under the current phase. A request arriving during a pass is read in the next
    one and answered in the one after, so the passes bound the latency the loop itself adds,
    whatever else the machine runs. Wraps the loop's private ``_run_once`` (two clock reads per
    pass); the benchmark's own instrument, nothing the service does."""

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker

    def __enter__(self) -> LoopPasses:
        loop: Any = asyncio.get_running_loop()
        run_once, ticker = loop._run_once, self.ticker

        def one_pass() -> None:
            t0 = time.thread_time()
            run_once()
            if ticker.phase is not None:
                ticker.phase.passes.append((time.thread_time() - t0) * 1e3)

        loop._run_once = one_pass
        return self

    def __exit__(self, *exc: object) -> None:
        loop: Any = asyncio.get_running_loop()
        del loop._run_once  # the instance attribute: back to the class's method


class SlowSteps:
    """``--profile``: the loop's callbacks (task steps included) that each used more than
    ``threshold`` of the loop thread's CPU, by coroutine. CPU, not wall time, so the OS running
    other processes does not count. Wraps ``asyncio.Handle._run`` and makes tasks Python tasks
    (so a step names its coroutine): slower, for finding culprits, not for the figures."""

    def __init__(self, threshold: float = 0.005) -> None:
        self.threshold = threshold
        self.steps: dict[str, list[float]] = {}
        self._run = asyncio.events.Handle._run
        self._task = asyncio.tasks.Task

    def __enter__(self) -> SlowSteps:
        slow, run, threshold = self, self._run, self.threshold

        def timed(handle: asyncio.Handle) -> None:
            t0 = time.thread_time()
            run(handle)
            used = time.thread_time() - t0
            if used > threshold:
                slow.steps.setdefault(_name(handle), []).append(used * 1e3)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
        asyncio.tasks.Task = asyncio.tasks._PyTask  # type: ignore[attr-defined,misc]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.events.Handle._run = self._run  # type: ignore[method-assign]
        asyncio.tasks.Task = self._task  # type: ignore[misc]

    def report(self, top: int = 15) -> str:
        ranked = sorted(self.steps.items(), key=lambda kv: -max(kv[1]))[:top]
        lines = [f"loop callbacks that used more than {self.threshold * 1e3:g} ms of CPU:"]
        lines += [
            f"  {len(v):5d} x, max {max(v):6.1f} ms, total {sum(v):7.1f} ms  {k}" for k, v in ranked
        ]
        return "\n".join(lines)


def _name(handle: asyncio.Handle) -> str:
    callback = handle._callback  # type: ignore[attr-defined]
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.tasks._PyTask | asyncio.Task):  # type: ignore[attr-defined]
        coro = owner.get_coro()
        code = getattr(coro, "cr_code", None)
        where = f" ({code.co_filename.rsplit('/', 2)[-1]})" if code is not None else ""
        return f"task {getattr(coro, '__qualname__', coro)}{where}"
    return repr(callback)[:120]


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def measure(
    phase: Phase, ticker: Ticker, url: str, seconds: float, server: MockServer, feeder: Any
) -> None:
    busy0, ours0, server0 = machine_busy_seconds(), cpu_seconds(), server.cpu_seconds()
    t0 = time.perf_counter()
    ticker.phase = phase
    if feeder is not None:
        feeder.start()
    latencies, errors = await run_prober(url, seconds)
    if feeder is not None:
        await feeder.stop()
    ticker.phase = None
    wall = time.perf_counter() - t0
    ours, server_cpu = cpu_seconds() - ours0, server.cpu_seconds() - server0
    phase.latencies += latencies
    phase.errors += errors
    phase.seconds += wall
    phase.service_cpu += ours
    phase.server_cpu += server_cpu
    # The prober's CPU is in neither figure: it counts as "other" (a few % of a core).
    phase.other_cpu += max(0.0, machine_busy_seconds() - busy0 - ours - server_cpu)


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the run -------------------------------------------------------------------------------


async def serve(stack: AsyncExitStack, app: web.Application) -> str:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return "http://{}:{}".format(*runner.addresses[0][:2])


async def bench(
    rounds: int,
    seconds: float,
    pipelines: int,
    out: Path,
    profile: float | None,
    settings: MockSettings,
) -> dict[str, Any]:
    """Two services in this process's loop, alike but for where they run their pipelines: in
    the service's loop (the default) or in a loop of their own on a second thread."""
    idle = Phase("idle")
    busy = Phase(f"ingesting, {pipelines} crawls in the service's loop (--in-loop)")
    threaded = Phase(f"ingesting, {pipelines} crawls in a pipelines thread")
    load = os.getloadavg()[0]
    with MockServer(settings) as server:
        async with AsyncExitStack() as stack:
            app = make_app(server.url, out / "loop", rate_limits=[], pipelines_thread=False)
            other = make_app(server.url, out / "thread", rate_limits=[], pipelines_thread=True)
            url, other_url = await serve(stack, app), await serve(stack, other)
            ticker = Ticker()
            ticker.start()
            stack.push_async_callback(ticker.stop)
            stack.enter_context(GcTimer(ticker))
            stack.enter_context(LoopPasses(ticker))
            sampler = stack.enter_context(SlowSteps(profile)) if profile is not None else None
            for service in (app[SERVICE], other[SERVICE]):
                warm = await service.start("f1", None)  # imports, first files: not measured
                await service.wait(warm)
            for _ in range(rounds):
                await measure(idle, ticker, url, seconds, server, None)
                for phase, where, to in ((busy, app, url), (threaded, other, other_url)):
                    feeder = Feeder(where[SERVICE], pipelines)
                    await measure(phase, ticker, to, seconds, server, feeder)
                    await feeder.count(phase)
    return {
        "phases": [idle, busy, threaded],
        "load": load,
        "load_after": os.getloadavg()[0],
        "stalls": sampler.report() if sampler is not None else "",
    }


def row(p: Phase) -> list[str]:
    lat, lag = p.latencies, p.lags
    return [
        p.name,
        f"{len(lat):,}",
        f"{pct(lat, 0.5):.2f}",
        f"{pct(lat, 0.99):.2f}",
        f"{max(lat, default=0):.1f}",
        f"{pct(lag, 0.99):.2f}",
        f"{max(lag, default=0):.1f}",
        f"{pct(p.passes, 0.99):.2f} / {max(p.passes, default=0):.1f}",
        f"{p.service_cpu / p.seconds:.0%}" if p.seconds else "-",
        f"{p.server_cpu / p.seconds:.0%}" if p.seconds else "-",
        f"{p.other_cpu / p.seconds:.2f}" if p.seconds else "-",
        f"{p.requests / p.seconds:,.0f}" if p.requests else "-",
        f"{p.records / p.seconds:,.0f}" if p.records else "-",
    ]


HEADS = [
    "service",
    "/health probes",
    "/health p50 ms",
    "p99 ms",
    "max ms",
    "loop lag p99 ms",
    "lag max ms",
    "loop pass CPU p99 / max ms",
    "service CPU",
    "mock CPU",
    "other cores busy",
    "req/s",
    "records/s",
]


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADS) + " |", "|" + "|".join([":---", *["---:"] * 12]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase and round")
    parser.add_argument("--pipelines", type=int, default=2, help="crawls at once when busy")
    parser.add_argument("--quick", action="store_true", help="one short round (the tests)")
    parser.add_argument("--profile", action="store_true", help="sample what holds the loop")
    parser.add_argument(
        "--profile-ms",
        type=float,
        default=5.0,
        help="--profile lists the loop callbacks that used more CPU than this (ms)",
    )
    parser.add_argument(
        "--gc",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned: asyncingest.tune_gc() as the service's main() does; default: Python's",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        metavar="MS",
        help="sys.setswitchinterval in ms (Python's default: 5): how long a thread that wants"
        " the GIL waits before the holder must let go",
    )
    args = parser.parse_args(args_in)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1e3)
    settings = SERVER
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
        settings = SERVER.model_copy(update={"n_meetings": 2})
    info = machine()
    if args.gc == "tuned":
        tune_gc()
    out = Path(tempfile.mkdtemp(prefix="bench-service-"))
    try:
        found = asyncio.run(
            bench(
                args.rounds,
                args.seconds,
                args.pipelines,
                out,
                args.profile_ms / 1e3 if args.profile else None,
                settings,
            )
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    phases: list[Phase] = found["phases"]
    busy = phases[1:]
    command = " ".join(["python benchmarks/bench_service.py", *args_in])
    print("## The example service under load (`bench_service.py`)\n")
    print(f"- command: `{command}`")
    for key in ("date", "nproc", "cpu", "python", "libraries"):
        print(f"- {key}: {info[key]}")
    print(f"- load average (1 min) before / after: {found['load']:.1f} / {found['load_after']:.1f}")
    print(
        f"\n{args.rounds} rounds of {args.seconds:g} s each: idle, then ingesting with the"
        " pipelines in the service's loop, then with them in a loop of their own on a second"
        f" thread; garbage collector {args.gc}; GIL switch interval"
        f" {sys.getswitchinterval() * 1e3:g} ms; {sum(p.pipelines for p in busy)} crawls of the"
        " `f1` job (config/f1_crawl.yaml, no rate window) in all. /health every"
        f" {PROBE_GAP * 1e3:g} ms from another process; loop lag: a {TICK * 1e3:g} ms ticker in"
        " the service's loop.\n"
    )
    print(table([row(p) for p in phases]))
    print()
    for p in busy:
        p99 = pct(p.latencies, 0.99)
        verdict = "holds" if p99 < TARGET_P99_MS and not p.errors else "MISSED"
        failed = f" ({p.errors} failed probes)" if p.errors else ""
        print(
            f"- target /health p99 < {TARGET_P99_MS:g} ms, {p.name}:"
            f" {p99:.2f} ms: **{verdict}**{failed}"
        )
    for p in phases:
        late, held, ours = p.late_ticks()
        print(
            f"- {p.name}: {late} ticks more than 20 ms late; the loop thread was on CPU for at"
            f" least half the wait in {held} of them, the service process (any thread) in {ours};"
            f" {len(p.gc_pauses)} garbage collections, the longest"
            f" {max(p.gc_pauses, default=0):.1f} ms of CPU ({p.gc_worst or '-'})"
        )
    if found["stalls"]:
        print("\n" + found["stalls"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
