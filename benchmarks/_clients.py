"""What runs inside one client process: ``python -m benchmarks._clients`` (a spec on stdin).

The spec is a JSON object; ``kind`` picks the variant:

``engine``  ``asyncingest.run(config)`` on the event loop named by ``loop``
``null``    the same with a null downloader (Scrapy's trick): ``HttpClient.fetch`` yields to
            the loop once and returns a canned user record, so only the engine's own work
            (feeding, limits, parsing, events, the writer, Parquet) costs CPU
``sync``    ``asyncingest.sync.run_sync(config, max_workers=...)``
``bare``    :func:`benchmarks.bare_aiohttp.crawl` (the ceiling)
``stages``  case 3's per-stage costs, in this process (:mod:`benchmarks._stages`)

Only the work is timed: wall time (``perf_counter``) and CPU (``process_time``, every thread
of this process) around it, after the imports. The last line printed is ``RESULT {json}``
with what :class:`benchmarks._harness.Measured` holds. With ``profile`` set to a path the
work runs under pyinstrument (its overhead then shows in the figures) and the report is
written there as text.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from benchmarks._harness import RESULT_PREFIX

Outcome = dict[str, Any]  # requests, records, and anything else worth reporting


def _loop_runner(spec: dict[str, Any]) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    if spec.get("loop", "asyncio") == "uvloop":
        import uvloop

        def run_on_uvloop(coro: Coroutine[Any, Any, Any]) -> Any:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)

        return run_on_uvloop
    return asyncio.run


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _result_outcome(result: Any) -> Outcome:
    failures = {e.name: e.first_errors for e in result.endpoints if not e.ok}
    return {
        "requests": result.requests,
        "records": result.records_written,
        "extra": {"ok": result.ok, "failures": failures},
    }


def run_engine(spec: dict[str, Any]) -> Outcome:
    import asyncingest

    config = asyncingest.config_from_dict(spec["config"])
    run = _loop_runner(spec)
    tick = spec.get("lag_tick")
    if not tick:
        return _result_outcome(run(asyncingest.run(config, output=spec["output"])))
    lags: list[float] = []
    cpu: list[float] = []

    async def with_ticker() -> Any:
        ticker = asyncio.create_task(_tick(float(tick), lags, cpu))
        try:
            return await asyncingest.run(config, output=spec["output"])
        finally:
            ticker.cancel()

    outcome = _result_outcome(run(with_ticker()))
    lags.sort()
    cpu.sort()
    outcome["extra"]["lag_ms"] = {
        "ticks": len(lags),
        "p99": lags[int(0.99 * (len(lags) - 1))] * 1e3 if lags else 0.0,
        "max": lags[-1] * 1e3 if lags else 0.0,
        "cpu_p99": cpu[int(0.99 * (len(cpu) - 1))] * 1e3 if cpu else 0.0,
        "cpu_max": cpu[-1] * 1e3 if cpu else 0.0,
    }
    return outcome


async def _tick(period: float, lags: list[float], cpu: list[float]) -> None:
    """Event-loop lag: how late a ``period`` timer fires, every period, while the run runs;
    and the loop thread's own CPU time between two ticks (``cpu``), which other load on the
    machine does not inflate: a tick that is late while the loop used little CPU means the OS
    ran something else, not that the loop was blocked."""
    loop = asyncio.get_running_loop()
    due = loop.time() + period
    used = time.thread_time()
    while True:
        await asyncio.sleep(due - loop.time())
        now, cpu_now = loop.time(), time.thread_time()
        lags.append(max(0.0, now - due))
        cpu.append(cpu_now - used)
        used = cpu_now
        due = max(due + period, now)  # a late tick does not make the next ones look late


def run_null(spec: dict[str, Any]) -> Outcome:
    from multidict import CIMultiDict, CIMultiDictProxy

    from asyncingest.http import client as _http

    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    head, tail = b'{"user_id":"', b'","score":712.5,"tier":"gold","eligible":true,"cards":["a"]}'

    async def fetch(self: Any, request: Any, permit: Any = None, acquire: Any = None) -> Any:
        await asyncio.sleep(0)  # a real fetch suspends at least once
        if permit is not None:
            permit.release()  # fetch owns the permit (the real one releases it when done)
        user_id = request.url.raw_path.rpartition("/")[2].encode()
        return _http.Response(200, headers, head + user_id + tail, request.url)

    _http.HttpClient.fetch = fetch  # type: ignore[method-assign]
    return run_engine(spec)


def run_sync(spec: dict[str, Any]) -> Outcome:
    import asyncingest
    from asyncingest.sync import run_sync as sync_run

    config = asyncingest.config_from_dict(spec["config"])
    result = sync_run(config, output=spec["output"], max_workers=spec["max_workers"])
    return _result_outcome(result)


def run_bare(spec: dict[str, Any]) -> Outcome:
    from benchmarks.bare_aiohttp import crawl

    run = _loop_runner(spec)
    done = run(
        crawl(
            spec["url"],
            Path(spec["ids"]),
            Path(spec["output"]),
            concurrency=spec["concurrency"],
            row_group_rows=spec["row_group_rows"],
        )
    )
    return {
        "requests": done.requests,
        "records": done.records,
        "extra": {"ok": done.failed == 0, "failed": done.failed},
    }


def run_stages(spec: dict[str, Any]) -> Outcome:
    from benchmarks._stages import measure_stages

    return measure_stages(spec)


KINDS: dict[str, Callable[[dict[str, Any]], Outcome]] = {
    "engine": run_engine,
    "null": run_null,
    "sync": run_sync,
    "bare": run_bare,
    "stages": run_stages,
}


def _preload(kind: str) -> None:
    """Import what the variant needs before the clock starts."""
    import aiohttp  # noqa: F401
    import orjson  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    if kind in ("engine", "null", "sync"):
        import asyncingest
    if kind == "sync":
        import asyncingest.sync  # noqa: F401
    if kind == "bare":
        import benchmarks.bare_aiohttp  # noqa: F401


def main() -> None:
    spec = json.loads(sys.stdin.read())
    kind = spec["kind"]
    work = KINDS[kind]
    _preload(kind)
    gc.collect()
    # Every client variant (engine, bare loop, sync mode) gets the CLI's process tuning, so
    # the comparison is of the code, not of GC settings.
    from asyncingest import tune_gc

    tune_gc()
    base_rss = _rss_mb()
    profiler = None
    if spec.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    outcome = work(spec)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if profiler is not None:
        profiler.stop()
        Path(spec["profile"]).write_text(profiler.output_text(unicode=True, show_all=False))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report = {
        "wall": wall,
        "cpu": cpu,
        "peak_rss_mb": peak,
        "base_rss_mb": base_rss,
        "requests": outcome.pop("requests"),
        "records": outcome.pop("records"),
        "extra": outcome.pop("extra", {}) | outcome,
    }
    print(RESULT_PREFIX + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
