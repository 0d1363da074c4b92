"""The current table's memory follows the increment, not the table: rebuilding a 200,000-row
table after a 1% increment peaks at a small fraction of what building it from one increment
holding every row does (Arrow's pool, each step in its own process; benchmarks/bench_current.py
prints the same figures at 500,000 rows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_current.py"


def child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--child", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


def test_a_small_increment_costs_memory_of_its_size_not_of_the_table(tmp_path: Path) -> None:
    out, rows = str(tmp_path), "200000"
    whole = child("rebuild", out, "1", json.dumps(child("write", out, rows, "1", "0.01")["files"]))
    wrote = child("write", out, rows, "2", "0.01")
    assert wrote["records"] == 2_201  # 2,000 changed (200 of them archived) and 201 new
    small = child("rebuild", out, "2", json.dumps(wrote["files"]))
    assert (small["rows"], small["upserted"], small["deleted"]) == (200_001, 2_001, 200)
    table = child("size", out)
    # Measured: whole 87 MB, small 10 MB (a few row groups in flight), table 27 MB.
    assert small["arrow_peak"] < whole["arrow_peak"] / 6, (small, whole)
    assert small["arrow_peak"] < table["memory"] / 2, (small, table)
