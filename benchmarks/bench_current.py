"""The current table (``merge: latest``): time and memory of a rebuild after a small increment,
against the table's size.

    python benchmarks/bench_current.py --rows 500000 --changed 0.01 --rounds 3

A CRM-shaped table (contacts: id, email, names, a ``properties`` struct, ``createdAt``,
``updatedAt``, ``archived``) of ``--rows`` rows is published as version 1. Each round then
writes an increment in which ``--changed`` of the keys have a newer version (a tenth of those
archived) plus as many new keys as a tenth of the changes, and rebuilds the current table on
top. Every step runs in a fresh process, so each figure is that step's own:

``wall``, ``cpu``    seconds of the rebuild call
``arrow peak``       the Arrow memory pool's peak (``max_memory``) during the rebuild
``rss``              the process's peak RSS (``ru_maxrss``) minus its RSS before the call
                     (after a tiny warm-up rebuild: imports and kernels are not counted)
``table``            the current table: rows, files, bytes on disk, and bytes in memory
                     (``pq.read_table(...).nbytes``, read in its own process)

Version 1 is built the same way from one increment holding the whole table: its figures show
what holding the table would cost. Nothing is kept; the output goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OPTIONS = {"compression": "zstd", "row_group_rows": 10_000, "max_rows_per_file": 1_000_000}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _contact(i: int, version: int, archived: bool = False) -> dict[str, Any]:
    day = 1 + version
    return {
        "id": str(10_001 + 3 * i),
        "email": f"person{i}.v{version}@example.com",
        "firstname": f"First{i % 997}",
        "lastname": f"Last{(i * 7 + version) % 1009}",
        "properties": {"lifecyclestage": ("lead", "customer")[i % 2], "score": i % 100},
        "createdAt": "2024-01-01T00:00:00.000Z",
        "updatedAt": f"2024-02-{day:02d}T{i % 24:02d}:{i % 60:02d}:00.000Z",
        "archived": archived,
    }


def _increment_records(rows: int, n: int, changed: float) -> list[dict[str, Any]]:
    if n == 1:
        return [_contact(i, 1) for i in range(rows)]
    k = max(1, round(rows * changed))
    step = max(1, rows // k)
    out = [_contact(i, n, archived=j % 10 == 9) for j, i in enumerate(range(0, rows, step))][:k]
    new = rows + (n - 2) * (k // 10 + 1)
    out += [_contact(i, n) for i in range(new, new + k // 10 + 1)]
    return out


def child_write(out: Path, rows: int, n: int, changed: float) -> dict[str, Any]:
    """Write increment ``n`` with the sink, as the engine would."""
    from asyncingest.sink.parquet import ParquetSink, SinkOptions

    sink = ParquetSink(out / "contacts", f"increment={n}", SinkOptions(**OPTIONS))
    records = _increment_records(rows, n, changed)
    for start in range(0, len(records), 10_000):
        sink.write(records[start : start + 10_000])
    files = sink.close()
    return {"records": len(records), "files": [str(f) for f in files]}


def child_rebuild(out: Path, n: int, files: list[str]) -> dict[str, Any]:
    """Rebuild version ``n`` and measure only that call."""
    import pyarrow as pa

    from asyncingest.sink.parquet import SinkOptions
    from asyncingest.state.current import rebuild_current

    _warm_up()
    pool = pa.default_memory_pool()
    before_rss, before_pool = _rss_bytes(), pool.max_memory()
    t0, c0 = time.perf_counter(), time.process_time()
    result = rebuild_current(
        out,
        "contacts",
        n,
        [Path(f) for f in files],
        primary_key=("id",),
        cursor_field="updatedAt",
        cursor_type="timestamp",
        deleted_field="archived",
        replace=False,
        options=SinkOptions(**OPTIONS),
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "wall": wall,
        "cpu": cpu,
        "arrow_peak": pool.max_memory() - before_pool,
        "rss": max(0, peak_rss - before_rss),
        "rows": result.rows,
        "files": result.files,
        "upserted": result.upserted,
        "deleted": result.deleted,
        "stale": result.stale,
    }


def _warm_up() -> None:
    """A tiny rebuild elsewhere first: imports, compute kernels and the allocator's first arenas
    are then not counted as the measured rebuild's memory."""
    from asyncingest.sink.parquet import ParquetSink, SinkOptions
    from asyncingest.state.current import rebuild_current

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for n in (1, 2):
            sink = ParquetSink(out / "w", f"increment={n}", SinkOptions(**OPTIONS))
            sink.write([_contact(i, n) for i in range(0, 50, n)])
            rebuild_current(
                out,
                "w",
                n,
                sink.close(),
                primary_key=("id",),
                cursor_field="updatedAt",
                cursor_type="timestamp",
                deleted_field="archived",
                replace=False,
                options=SinkOptions(**OPTIONS),
            )


def child_size(out: Path) -> dict[str, Any]:
    """The published table: bytes on disk and in memory."""
    import pyarrow.parquet as pq

    from asyncingest.state.current import current_path

    link = current_path(out, "contacts")
    disk = sum(p.stat().st_size for p in link.glob("*.parquet"))
    return {"disk": disk, "memory": pq.read_table(link).nbytes}


def _run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_current.py", description=__doc__)
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        what, out, *rest = args.child
        if what == "write":
            answer = child_write(Path(out), int(rest[0]), int(rest[1]), float(rest[2]))
        elif what == "rebuild":
            answer = child_rebuild(Path(out), int(rest[0]), json.loads(rest[1]))
        else:
            answer = child_size(Path(out))
        print(json.dumps(answer))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, args.rounds + 2):
            wrote = _run_child("write", tmp, str(args.rows), str(n), str(args.changed))
            done = _run_child("rebuild", tmp, str(n), json.dumps(wrote["files"]))
            size = _run_child("size", tmp)
            label = "version 1 (whole table)" if n == 1 else f"version {n} (increment)"
            print(
                f"{label}: increment {wrote['records']:,} rows -> table {done['rows']:,} rows "
                f"in {done['files']} file(s), {_mb(size['disk'])} on disk, "
                f"{_mb(size['memory'])} in memory | rebuild {done['wall']:.2f} s wall, "
                f"{done['cpu']:.2f} s CPU, Arrow peak {_mb(done['arrow_peak'])}, "
                f"RSS +{_mb(done['rss'])} | upserted {done['upserted']:,}, "
                f"deleted {done['deleted']:,}, stale {done['stale']:,}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
