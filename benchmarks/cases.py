"""The five benchmark cases of issue 5, each against a mock API it starts in its own process.

Every case takes :class:`Options` (a size from ``_workloads``) and returns a
:class:`CaseReport` with its figures side by side and its targets. Client variants each run
in a fresh process (``_harness.run_client``), so CPU seconds and peak RSS are per variant;
the server's CPU is shown beside them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncingest.mockapi import MockSettings
from benchmarks._harness import ClientFailed, Measured, MockServer, run_client, write_ids_csv
from benchmarks._report import CaseReport
from benchmarks._workloads import (
    LAPS_SCHEMA,
    SIZES,
    Options,
    Size,
    crawl_config,
    fanout_config,
)


def _engine(config: dict[str, Any], out: Path, opts: Options, **more: Any) -> dict[str, Any]:
    return {"kind": "engine", "config": config, "output": str(out), "loop": opts.loop, **more}


def _check(m: Measured, expected: int, what: str, notes: list[str]) -> str:
    """``ok`` or why not, noted once per variant."""
    if m.extra.get("ok", True) and m.records >= expected:
        return "ok"
    notes.append(f"{what}: {m.records:,} of {expected:,} records; {m.extra}")
    return "INCOMPLETE"


def _best(runs: list[Measured]) -> Measured:
    """The fastest run: other work on the machine only ever slows a run down."""
    return min(runs, key=lambda m: m.wall / max(m.requests, 1))


def _runs_text(runs: list[Measured]) -> str:
    return " ".join(f"{r.rate:,.0f}" for r in runs)


def _note_load(report: CaseReport, runs: list[Measured]) -> None:
    """Say so when other processes were busy on the machine while a client ran."""
    busiest = max((r.other_load for r in runs), default=0.0)
    if busiest >= 0.1:
        report.notes.append(
            f"other processes on the machine used up to {busiest:.1f} cores during these runs"
        )


def _bare(url: str, ids: Path, out: Path, concurrency: int, opts: Options) -> dict[str, Any]:
    return {
        "kind": "bare",
        "url": url,
        "ids": str(ids),
        "output": str(out),
        "concurrency": concurrency,
        "row_group_rows": opts.size.row_group_rows,
        "loop": opts.loop,
    }


# --------------------------------------------------------------------------- case 1


def case_fanout(opts: Options) -> CaseReport:
    size = opts.size
    conc, latency, n = size.fanout_concurrency, size.latency_ms / 1000, size.fanout_ids
    report = CaseReport(
        1,
        "fan-out at fixed latency: async vs sync mode",
        f"{n:,} GET /partner/users/{{id}} at {size.latency_ms:g} ms latency; asyncingest "
        f"with concurrency {conc} (best of {size.rounds} runs; all runs in the last column); "
        f"sync mode with {' and '.join(map(str, size.sync_workers))} workers (one run each); "
        "the bare aiohttp loop at the same concurrency for reference. "
        "Ideal = concurrency / latency.",
        [
            "variant",
            "req/s",
            "async is x",
            "CPU s/1k req",
            "peak RSS MB",
            "% of ideal",
            "server CPU",
            "check",
            "runs req/s",
        ],
    )
    all_runs: list[Measured] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp,
        MockServer(MockSettings.small(latency_ms=size.latency_ms)) as server,
    ):
        ids = write_ids_csv(Path(tmp) / "ids.csv", n)
        runs, bare_runs = [], []
        for i in range(size.rounds):
            out = Path(tmp) / f"async-{i}"
            config = fanout_config(server.url, ids, out, conc, size)
            runs.append(run_client(_engine(config, out, opts), server))
            out = Path(tmp) / f"bare-{i}"
            bare_runs.append(run_client(_bare(server.url, ids, out, conc, opts), server))
        a = _best(runs)
        all_runs += runs + bare_runs
        variants: list[tuple[str, Measured | None, str, int, list[Measured]]] = [
            (f"asyncingest, {conc} concurrent", a, "", conc, runs)
        ]
        for workers in size.sync_workers:
            out = Path(tmp) / f"sync-{workers}"
            config = fanout_config(server.url, ids, out, conc, size)
            spec = {"kind": "sync", "config": config, "output": str(out), "max_workers": workers}
            try:
                sync = run_client(spec, server)
            except ClientFailed as exc:
                why = "asyncingest.sync not importable yet" if _no_sync(exc) else "failed"
                if why == "failed":
                    report.notes.append(f"sync {workers}: {exc}")
                variants.append((f"sync mode, {workers} workers", None, why, workers, []))
                continue
            all_runs.append(sync)
            variants.append((f"sync mode, {workers} workers", sync, "", workers, [sync]))
        b = _best(bare_runs)
        variants.append((f"bare aiohttp loop, {conc} (reference)", b, "", conc, bare_runs))
    ratios: dict[int, float] = {}
    for label, m, why, workers, runs in variants:
        if m is None:
            report.add_row(label, *["-"] * 6, f"skipped: {why}", "-")
            continue
        ratio = a.rate / m.rate if m.rate else 0.0
        if label.startswith("sync"):
            ratios[workers] = ratio
        report.add_row(
            label,
            m.rate,
            f"{ratio:.1f}x",
            m.cpu_per_1000,
            m.peak_rss_mb,
            f"{m.rate / (workers / latency):.1%}",
            f"{m.server_load:.0%}",
            _check(m, n, label, report.notes),
            _runs_text(runs),
        )
    for workers, need in zip(size.sync_workers, (8.0, 2.5), strict=False):
        got = ratios.get(workers)
        report.target(
            f"async >= {need:g}x sync with {workers} workers",
            f"{got:.1f}x" if got is not None else "sync mode not run",
            None if got is None else got >= need,
        )
    share = a.rate / (conc / latency)
    report.target(">= 85% of ideal concurrency/latency", f"{share:.1%}", share >= 0.85)
    _note_load(report, all_runs)
    return report


def _no_sync(exc: ClientFailed) -> bool:
    text = str(exc)
    return "asyncingest.sync" in text and ("ModuleNotFoundError" in text or "ImportError" in text)


# --------------------------------------------------------------------------- case 2


def case_overhead(opts: Options) -> CaseReport:
    size = opts.size
    conc, n = size.overhead_concurrency, size.overhead_ids
    report = CaseReport(
        2,
        "engine overhead: asyncingest vs a bare aiohttp loop",
        f"{n:,} GET /partner/users/{{id}}, no latency, {conc} workers each, {opts.loop} loop, "
        f"same orjson parse and zstd Parquet ({size.row_group_rows:,}-row groups); "
        f"{size.rounds} interleaved runs per variant, the best counts (all in the last column); "
        "the null downloader row has no HTTP at all (Scrapy's engine-overhead benchmark).",
        [
            "variant",
            "req/s",
            "vs bare",
            "CPU s/1k req",
            "CPU vs bare",
            "peak RSS MB",
            "server CPU",
            "check",
            "runs req/s",
        ],
    )
    runs: dict[str, list[Measured]] = {"bare": [], "engine": [], "null": []}
    with (
        tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp,
        MockServer(MockSettings.small()) as server,
    ):
        ids = write_ids_csv(Path(tmp) / "ids.csv", n)
        for i in range(size.rounds):
            out = Path(tmp) / f"bare-{i}"
            runs["bare"].append(run_client(_bare(server.url, ids, out, conc, opts), server))
            for kind in ("engine", "null"):
                out = Path(tmp) / f"{kind}-{i}"
                config = fanout_config(server.url, ids, out, conc, size)
                spec = _engine(config, out, opts) | {"kind": kind}
                runs[kind].append(run_client(spec, server))
        if opts.profile_dir is not None:
            for kind in ("engine", "null"):
                out = Path(tmp) / f"{kind}-profiled"
                config = fanout_config(server.url, ids, out, conc, size)
                path = opts.profile_dir / f"case2-{kind}.txt"
                run_client(_engine(config, out, opts, profile=str(path)) | {"kind": kind})
                report.notes.append(f"pyinstrument profile ({kind}): {path}")
    bare, eng, null = _best(runs["bare"]), _best(runs["engine"]), _best(runs["null"])
    for label, m, name in (
        ("bare aiohttp loop", bare, "bare"),
        ("asyncingest", eng, "engine"),
        ("asyncingest, null downloader", null, "null"),
    ):
        report.add_row(
            label,
            m.rate,
            f"{m.rate / bare.rate:.2f}x",
            m.cpu_per_1000,
            f"{m.cpu_per_1000 / bare.cpu_per_1000:.2f}x",
            m.peak_rss_mb,
            f"{m.server_load:.0%}",
            _check(m, n, label, report.notes),
            _runs_text(runs[name]),
        )
    ratio = eng.rate / bare.rate
    cpu_ratio = bare.cpu_per_1000 / eng.cpu_per_1000 if eng.cpu_per_1000 else 0.0
    report.target(">= 0.8x the bare loop (throughput)", f"{ratio:.2f}x", ratio >= 0.8)
    report.notes.append(
        f"measured on client CPU per request instead of wall time, the engine runs at "
        f"{cpu_ratio:.2f}x the bare loop (steadier than req/s on a shared machine)"
    )
    report.notes.append(
        f"null downloader (no HTTP; fetch yields once and returns a canned record): the "
        f"engine's own work costs {null.cpu_per_1000 * 1000:.0f} us per request; the bare "
        f"loop's whole request, HTTP included, costs {bare.cpu_per_1000 * 1000:.0f} us"
    )
    _note_load(report, runs["bare"] + runs["engine"])
    return report


# --------------------------------------------------------------------------- case 3


def case_crawl(opts: Options) -> CaseReport:
    size = opts.size
    meetings, sessions, drivers, laps = size.crawl
    n = size.crawl_records
    report = CaseReport(
        3,
        "paginated crawl to Parquet, schema declared",
        f"{n:,} laps in {size.crawl_pages:,} pages of up to {size.page_size} "
        f"({meetings * sessions} sessions x {drivers * laps:,} laps, offset pagination), "
        f"no latency, {size.crawl_concurrency} workers, declared schema, zstd; "
        f"best of {size.rounds} runs. Stage costs: same pages, one process, best of "
        f"{size.stage_repeat}.",
        ["measure", "value", "unit"],
    )
    settings = MockSettings.small(
        n_meetings=meetings,
        sessions_per_meeting=sessions,
        n_drivers=drivers,
        laps_per_driver=laps,
    )
    with tempfile.TemporaryDirectory(prefix="bench-crawl-") as tmp, MockServer(settings) as server:
        runs = []
        for i in range(size.rounds):
            out = Path(tmp) / f"engine-{i}"
            runs.append(run_client(_engine(crawl_config(server.url, out, size), out, opts), server))
        if opts.profile_dir is not None:
            out = Path(tmp) / "engine-profiled"
            path = opts.profile_dir / "case3-engine.txt"
            run_client(_engine(crawl_config(server.url, out, size), out, opts, profile=str(path)))
            report.notes.append(f"pyinstrument profile of the engine: {path}")
        stages = run_client(
            {
                "kind": "stages",
                "url": server.url,
                "page_size": size.page_size,
                "schema": LAPS_SCHEMA,
                "row_group_rows": size.row_group_rows,
                "compression": "zstd",
                "repeat": size.stage_repeat,
            },
            server,
        )
    m = _best(runs)
    _note_load(report, runs)
    laps_rate = (m.records - meetings * sessions) / m.wall  # records also counts the sessions
    report.add_row("end to end, asyncingest", laps_rate, "records/s")
    report.add_row(
        "  runs",
        " ".join(f"{(r.records - meetings * sessions) / r.wall:,.0f}" for r in runs),
        "records/s",
    )
    report.add_row("  client CPU", 1e6 * m.cpu / n, "us/record")
    report.add_row("  peak RSS", m.peak_rss_mb, "MB")
    report.add_row("  server CPU", f"{m.server_load:.0%}", "of a core")
    # records counts the sessions too: every lap and every session, or it is incomplete
    report.add_row("  check", _check(m, n + meetings * sessions, "crawl", report.notes), "")
    us: dict[str, float] = stages.extra["us_per_record"]
    main_stages = ["parse", "validate", "to Arrow", "write"]
    for stage in main_stages:
        report.add_row(f"stage: {stage}", f"{us.get(stage, 0):.2f}", "us/record")
    total = sum(us.get(s, 0) for s in main_stages)
    report.add_row("stages summed", f"{total:.2f}", "us/record")
    report.add_row("  = one-core ceiling", 1e6 / total if total else 0, "records/s")
    report.add_row(
        "cross-check: BatchConverter.convert",
        f"{us.get('BatchConverter.convert', 0):.2f}",
        "us/record",
    )
    report.add_row(
        "alternative: pydantic validate_json",
        f"{us.get('pydantic validate_json', 0):.2f}",
        "us/record",
    )
    report.target(">= 80,000 records/s end to end", f"{laps_rate:,.0f}/s", laps_rate >= 80_000)
    return report


# --------------------------------------------------------------------------- case 4


def case_rate_limited(opts: Options) -> CaseReport:
    size = opts.size
    limit, window = size.rate_limit
    duration = size.rate_duration
    budget = int(limit * duration / window)
    n = budget + limit  # more than the budget: the client is never short of work
    report = CaseReport(
        4,
        "rate-limited run: budget used, window violations",
        f"limit {limit} per {window:g} s on client and server (server counts, does not "
        f"enforce); {n:,} ids; arrivals counted in the first {duration:g} s from the first "
        f"one; budget = {limit} x {duration:g}/{window:g} = {budget:,}.",
        ["measure", "value"],
    )
    settings = MockSettings.small(rate_limits=((limit, window),), enforce_rate_limit=False)
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp, MockServer(settings) as server:
        ids = write_ids_csv(Path(tmp) / "ids.csv", n)
        out = Path(tmp) / "engine"
        config = fanout_config(server.url, ids, out, size.memory_concurrency, size)
        config["api"]["rate_limits"] = [{"requests": limit, "per_seconds": window}]
        m = run_client(_engine(config, out, opts), server)
        stats = server.stats(log=n + 100)
    _note_load(report, [m])
    arrivals = sorted(e[0] for e in stats.get("log", []) if e[2].startswith("/partner/users/"))
    first = arrivals[0] if arrivals else 0.0
    used = sum(1 for t in arrivals if t < first + duration)
    share = used / budget
    violations = int(stats["violations"])
    peak = stats["windows"][0]["max_in_window"] if stats["windows"] else 0
    report.add_row("requests in the window", f"{used:,} of {budget:,}")
    report.add_row("share of the budget", f"{share:.1%}")
    report.add_row("window violations (server)", f"{violations}")
    report.add_row("peak arrivals in any window", f"{peak} (limit {limit})")
    report.add_row("whole run", f"{m.requests:,} requests in {m.wall:.1f} s")
    report.add_row("check", _check(m, n, "rate-limited", report.notes))
    if len(arrivals) < m.requests:
        report.notes.append("the server log held fewer arrivals than the client sent")
    report.target(">= 98% of the budget", f"{share:.1%}", share >= 0.98)
    report.target("zero window violations", str(violations), violations == 0)
    return report


# --------------------------------------------------------------------------- case 5


def case_memory(opts: Options) -> CaseReport:
    size = opts.size
    small, large = size.memory_ids
    conc = size.memory_concurrency
    report = CaseReport(
        5,
        "memory: peak RSS of a fan-out, small vs large input",
        f"{small:,} and {large:,} ids from a CSV, no latency, {conc} workers, "
        "each in its own process. Base = RSS after imports, before the run.",
        ["ids", "peak RSS MB", "base RSS MB", "growth MB", "req/s", "check"],
    )
    peaks: list[float] = []
    runs: list[Measured] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp,
        MockServer(MockSettings.small()) as server,
    ):
        for count in (small, large):
            ids = write_ids_csv(Path(tmp) / f"ids-{count}.csv", count)
            out = Path(tmp) / f"out-{count}"
            config = fanout_config(server.url, ids, out, conc, size)
            m = run_client(_engine(config, out, opts), server)
            ids.unlink()
            runs.append(m)
            peaks.append(m.peak_rss_mb)
            report.add_row(
                f"{count:,}",
                m.peak_rss_mb,
                m.base_rss_mb,
                m.peak_rss_mb - m.base_rss_mb,
                m.rate,
                _check(m, count, f"{count:,} ids", report.notes),
            )
    _note_load(report, runs)
    growth = peaks[1] / peaks[0] - 1
    report.target(
        f"peak RSS at {large:,} within 10% of {small:,}", f"{growth:+.1%}", abs(growth) <= 0.10
    )
    report.target(f"peak RSS at {large:,} < 200 MB", f"{peaks[1]:.0f} MB", peaks[1] < 200)
    return report


CASES: dict[int, Callable[[Options], CaseReport]] = {
    1: case_fanout,
    2: case_overhead,
    3: case_crawl,
    4: case_rate_limited,
    5: case_memory,
}


def run_case(number: int, opts: Options) -> CaseReport:
    t0 = time.perf_counter()
    report = CASES[number](opts)
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["CASES", "SIZES", "Options", "Size", "run_case"]
