"""Case 3 (the crawl) for two checkouts side by side, alternating run by run.

    git worktree add --detach /tmp/before main
    python benchmarks/ab_crawl.py --before /tmp/before --after . --rounds 6

One mock API serves every run; each run is the engine client of one checkout in a fresh
process (``_harness.run_client`` with that checkout first on ``sys.path``), in the order
before/after, after/before, ... so load from other work on the machine falls on both alike.
Prints every run, then best and median records/s and client CPU per record for each, and the
ratios. Nothing is written.

``--lag MS`` also runs a timer every MS milliseconds on each client's event loop during the
crawl and prints how late it fired (p99 and max over the run): the loop lag the engine's work
on the loop (parsing, journal and dead-letter appends, scheduling) causes. On a loaded machine
lateness mostly measures the other load, so it also prints the loop thread's own CPU time
between two ticks (``time.thread_time``; p99 and max): the longest stretch the loop itself
worked without yielding, which other load does not inflate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncingest.mockapi import MockSettings
from benchmarks import _harness
from benchmarks._workloads import SIZES, crawl_config
from benchmarks.cases import Options, _engine


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/ab_crawl.py", description=__doc__)
    p.add_argument("--before", type=Path, required=True, help="checkout measured first")
    p.add_argument("--after", type=Path, required=True, help="checkout compared with it")
    p.add_argument("--rounds", type=int, default=6, help="runs of each (default 6)")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--lag", type=float, default=0.0, help="loop-lag timer period in ms")
    args = p.parse_args(argv)
    size = SIZES[args.size]
    meetings, sessions, drivers, laps = size.crawl
    settings = MockSettings.small(
        n_meetings=meetings,
        sessions_per_meeting=sessions,
        n_drivers=drivers,
        laps_per_driver=laps,
    )
    opts = Options(size=size, loop="asyncio", profile_dir=None)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    rates: dict[str, list[float]] = {k: [] for k in trees}
    cpus: dict[str, list[float]] = {k: [] for k in trees}
    lag_p99: dict[str, list[float]] = {k: [] for k in trees}
    lag_max: dict[str, list[float]] = {k: [] for k in trees}
    cpu_max: dict[str, list[float]] = {k: [] for k in trees}
    more = {"lag_tick": args.lag / 1e3} if args.lag else {}
    print(f"case 3, {size.crawl_records:,} laps; before {trees['before']}, after {trees['after']}")
    with tempfile.TemporaryDirectory(prefix="ab-crawl-") as tmp, _harness.MockServer(settings) as s:
        for i in range(args.rounds):
            for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
                _harness.REPO = trees[name]  # run_client starts the client in this checkout
                out = Path(tmp) / f"{name}-{i}"
                spec = _engine(crawl_config(s.url, out, size), out, opts, **more)
                m = _harness.run_client(spec, s)
                laps_done = m.records - meetings * sessions  # records also counts the sessions
                rates[name].append(laps_done / m.wall)
                cpus[name].append(m.cpu / m.records * 1e6)
                lag = ""
                if args.lag:
                    lags = m.extra["lag_ms"]
                    lag_p99[name].append(lags["p99"])
                    lag_max[name].append(lags["max"])
                    cpu_max[name].append(lags["cpu_max"])
                    lag = (
                        f"  loop lag p99 {lags['p99']:.1f} ms, max {lags['max']:.1f} ms;"
                        f" loop CPU per tick p99 {lags['cpu_p99']:.1f} ms,"
                        f" max {lags['cpu_max']:.1f} ms"
                    )
                print(
                    f"  {i} {name:<6} {rates[name][-1]:>9,.0f} records/s  "
                    f"{cpus[name][-1]:.2f} us CPU/record  other load {m.other_load:.1f} cores"
                    + lag,
                    flush=True,
                )
    for name in trees:
        print(
            f"{name:<6} best {max(rates[name]):,.0f} records/s, median "
            f"{statistics.median(rates[name]):,.0f}; median CPU {statistics.median(cpus[name]):.2f}"
            " us/record"
        )
        if args.lag:
            print(
                f"{name:<6} loop lag ({args.lag:g} ms timer): median p99 "
                f"{statistics.median(lag_p99[name]):.1f} ms, median max "
                f"{statistics.median(lag_max[name]):.1f} ms, worst max {max(lag_max[name]):.1f} ms;"
                f" loop CPU per tick: median max {statistics.median(cpu_max[name]):.1f} ms,"
                f" worst {max(cpu_max[name]):.1f} ms"
            )
    best = max(rates["after"]) / max(rates["before"])
    median = statistics.median(rates["after"]) / statistics.median(rates["before"])
    cpu = statistics.median(cpus["after"]) / statistics.median(cpus["before"])
    print(f"after/before: best {best:.2f}x, median {median:.2f}x, CPU per record {cpu:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
