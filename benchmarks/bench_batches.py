"""``batches()`` throughput against the Parquet sink on the crawl case (case 3), in one run.

    python benchmarks/bench_batches.py --rounds 5

One mock API (its own process) serves every run; each run is a fresh client process doing
the whole crawl (200 sessions x 1,000 laps at full size, offset pages of 100, laps schema
declared, 32 workers). Variants, alternated round by round (the order rotates, so load from
other work on a shared machine falls on all alike):

``parquet``        the Parquet sink, as case 3 (zstd, 10,000-row groups); no batches read
``batches``        ``output: none``: ``Engine.batches`` for sessions and laps, a reader task
                   each that counts rows; no state (no ``state_dir``)
``batches+state``  the same with a ``state_dir``: a batch ends at a checkpoint and the next is
                   handed out once the state naming the last is saved (resume after the last
                   delivered batch)

Prints every run (laps records/s, client CPU per record, other load on the machine), then
the best and median of each variant and the ratios to ``parquet``. Nothing is kept.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncingest.mockapi import MockSettings
from benchmarks import _harness
from benchmarks._workloads import SIZES, crawl_config

VARIANTS = ("parquet", "batches", "batches+state")


def spec_for(variant: str, url: str, out: Path, size: Any) -> dict[str, Any]:
    config = crawl_config(url, out, size)
    if variant == "parquet":
        return {"kind": "engine", "config": config, "output": str(out)}
    output: dict[str, Any] = {"format": "none", "row_group_rows": size.row_group_rows}
    if variant == "batches+state":
        output["state_dir"] = str(out)
    config["output"] = output
    return {"kind": "batches", "config": config, "read": ["sessions", "laps"]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_batches.py", description=__doc__)
    p.add_argument("--rounds", type=int, default=5, help="runs of each variant (default 5)")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    args = p.parse_args(argv)
    size = SIZES[args.size]
    meetings, sessions, drivers, laps = size.crawl
    settings = MockSettings.small(
        n_meetings=meetings, sessions_per_meeting=sessions, n_drivers=drivers, laps_per_driver=laps
    )
    n_sessions = meetings * sessions
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    print(f"crawl case: {size.crawl_records:,} laps in {size.crawl_pages:,} pages ({size.name})")
    with (
        tempfile.TemporaryDirectory(prefix="bench-batches-") as tmp,
        _harness.MockServer(settings) as server,
    ):
        for i in range(args.rounds):
            order = VARIANTS[i % 3 :] + VARIANTS[: i % 3]
            for variant in order:
                out = Path(tmp) / f"{variant.replace('+', '-')}-{i}"
                m = _harness.run_client(spec_for(variant, server.url, out, size), server)
                if not m.extra.get("ok", False):
                    print(f"  {i} {variant}: the run failed: {m.extra}", file=sys.stderr)
                    return 1
                laps_done = m.records - n_sessions  # records also counts the sessions
                if laps_done != size.crawl_records:
                    print(f"  {i} {variant}: {laps_done} laps, expected {size.crawl_records}")
                    return 1
                rates[variant].append(laps_done / m.wall)
                cpus[variant].append(m.cpu / m.records * 1e6)
                batches = m.extra.get("batches", {}).get("laps")
                print(
                    f"  {i} {variant:<14} {rates[variant][-1]:>9,.0f} records/s  "
                    f"{cpus[variant][-1]:.2f} us CPU/record  peak RSS {m.peak_rss_mb:.0f} MB  "
                    f"other load {m.other_load:.1f} cores"
                    + (f"  ({batches} laps batches)" if batches else ""),
                    flush=True,
                )
    base_best, base_median = max(rates["parquet"]), statistics.median(rates["parquet"])
    base_cpu = statistics.median(cpus["parquet"])
    for v in VARIANTS:
        best, median, cpu = max(rates[v]), statistics.median(rates[v]), statistics.median(cpus[v])
        print(
            f"{v:<14} best {best:>9,.0f} records/s, median {median:>9,.0f}; median CPU "
            f"{cpu:.2f} us/record; vs parquet: best {best / base_best:.2f}x, median "
            f"{median / base_median:.2f}x, CPU per record {cpu / base_cpu:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
