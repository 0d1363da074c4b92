"""What the cases run: the sizes (full, quick, tiny) and the pipeline configs they build.

``FULL`` is issue 5's size; ``QUICK`` (``run_all.py --quick``) and ``TINY`` (the test suite)
keep every case's shape at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

USERS_PATH = "/partner/users/{user_id}"
LAPS_SCHEMA = {
    "session_key": "int64",
    "driver_number": "int64",
    "lap_number": "int64",
    "lap_duration": "float64",
    "duration_sector_1": "float64",
    "duration_sector_2": "float64",
    "duration_sector_3": "float64",
    "is_pit_out_lap": "bool",
    "st_speed": "int64",
}


@dataclass(frozen=True)
class Size:
    """How big each case runs. ``FULL`` is the issue's size; the others keep the same shape."""

    name: str
    fanout_ids: int  # case 1
    latency_ms: float
    fanout_concurrency: int
    sync_workers: tuple[int, ...]
    overhead_ids: int  # case 2
    overhead_concurrency: int
    rounds: int  # cases 1-3: runs per variant, interleaved; the best counts
    crawl: tuple[int, int, int, int]  # case 3: meetings, sessions each, drivers, laps each
    crawl_concurrency: int
    page_size: int
    stage_repeat: int
    rate_limit: tuple[int, float]  # case 4: (N, W)
    rate_duration: float
    memory_ids: tuple[int, int]  # case 5
    memory_concurrency: int
    row_group_rows: int = 10_000

    @property
    def crawl_records(self) -> int:
        meetings, sessions, drivers, laps = self.crawl
        return meetings * sessions * drivers * laps

    @property
    def crawl_pages(self) -> int:
        meetings, sessions, drivers, laps = self.crawl
        return meetings * sessions * -(-drivers * laps // self.page_size)


FULL = Size(
    name="full",
    fanout_ids=20_000,
    latency_ms=50.0,
    fanout_concurrency=200,
    sync_workers=(20, 200),
    overhead_ids=20_000,
    overhead_concurrency=64,
    rounds=5,
    crawl=(40, 5, 20, 50),  # 200 sessions x 1,000 laps = 200,000 records, 2,000 pages
    crawl_concurrency=32,
    page_size=100,
    stage_repeat=3,
    rate_limit=(500, 5.0),
    rate_duration=30.0,
    memory_ids=(100_000, 1_000_000),
    memory_concurrency=64,
)
QUICK = Size(
    name="quick",
    fanout_ids=2_000,
    latency_ms=50.0,
    fanout_concurrency=200,
    sync_workers=(20, 200),
    overhead_ids=5_000,
    overhead_concurrency=64,
    rounds=1,
    crawl=(4, 5, 20, 50),  # 20,000 records, 200 pages
    crawl_concurrency=32,
    page_size=100,
    stage_repeat=1,
    rate_limit=(100, 1.0),
    rate_duration=3.0,
    memory_ids=(2_000, 20_000),
    memory_concurrency=64,
)
TINY = Size(  # for tests/test_benchmarks.py: every code path, in seconds
    name="tiny",
    fanout_ids=100,
    latency_ms=20.0,
    fanout_concurrency=20,
    sync_workers=(2, 20),
    overhead_ids=200,
    overhead_concurrency=8,
    rounds=1,
    crawl=(1, 2, 3, 50),  # 300 records, 4 pages
    crawl_concurrency=2,
    page_size=100,
    stage_repeat=1,
    rate_limit=(20, 0.5),
    rate_duration=1.0,
    memory_ids=(200, 1_000),
    memory_concurrency=8,
    row_group_rows=100,
)
SIZES = {s.name: s for s in (FULL, QUICK, TINY)}


@dataclass(frozen=True)
class Options:
    size: Size
    loop: str = "asyncio"
    profile_dir: Path | None = None  # extra pyinstrument runs of the engine in cases 2 and 3


# --------------------------------------------------------------------------- configs


def fanout_config(url: str, ids: Path, out: Path, concurrency: int, size: Size) -> dict[str, Any]:
    """One GET per id of ``ids``; ``concurrency`` workers and as many connections."""
    return {
        "api": {
            "base_url": url,
            "concurrency": {"requests_per_endpoint": concurrency},
            "http": {"max_connections": max(concurrency, 1)},
        },
        "output": {"directory": str(out), "row_group_rows": size.row_group_rows},
        "endpoints": [
            {
                "name": "users",
                "path": USERS_PATH,
                "single_record": True,
                "primary_key": "user_id",
                "from_file": {"path": str(ids), "column": "user_id"},
                "concurrency": concurrency,
            }
        ],
    }


def crawl_config(url: str, out: Path, size: Size) -> dict[str, Any]:
    """Sessions, then every session's laps through offset pagination, schema declared."""
    return {
        "api": {"base_url": url, "http": {"max_connections": size.crawl_concurrency}},
        "output": {"directory": str(out), "row_group_rows": size.row_group_rows},
        "endpoints": [
            {"name": "sessions", "path": "/v1/sessions", "primary_key": "session_key"},
            {
                "name": "laps",
                "path": "/v1/laps",
                "params": {"session_key": "{session_key}"},
                "for_each": {"endpoint": "sessions", "bind": ["session_key"]},
                "records": "results",
                "pagination": {"type": "offset", "limit": size.page_size, "total_path": "total"},
                "primary_key": ["session_key", "driver_number", "lap_number"],
                "schema": LAPS_SCHEMA,
                "concurrency": size.crawl_concurrency,
            },
        ],
    }
