"""The current table's rebuild killed (SIGKILL) at each named crash point: readers only ever see
a complete version (the old one or the new one, no key twice), and calling the rebuild again
gives exactly the table, files and figures of a rebuild that was never killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pytest

from asyncingest.sink.parquet import ParquetSink, SinkOptions
from asyncingest.state.current import CurrentResult, current_path, current_version, rebuild_current

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = SinkOptions(compression="zstd", row_group_rows=4, max_rows_per_file=9)
POINTS = ["current-partial", "current-staged", "current-switched", "current-cleaned"]


def versions(n: int) -> list[dict[str, Any]]:
    """Increment ``n``: 1 creates 30 keys; 2 changes some, deletes some, adds some, and brings
    a column; 3 (for a third version) changes a few more."""
    if n == 1:
        return [
            {"id": f"k{i:02d}", "updatedAt": f"2024-01-01T00:{i:02d}:00Z", "deleted": False}
            for i in range(30)
        ]
    if n == 2:
        changed = [
            {"id": f"k{i:02d}", "updatedAt": "2024-01-02T00:00:00Z", "deleted": i % 3 == 0}
            for i in range(0, 30, 4)
        ]
        new = [
            {"id": f"n{i}", "updatedAt": "2024-01-02T00:00:00Z", "deleted": False, "tier": i}
            for i in range(5)
        ]
        return changed + new
    return [
        {"id": f"k{i:02d}", "updatedAt": "2024-01-03T00:00:00Z", "deleted": False} for i in (1, 2)
    ]


def files_of(out: Path, n: int) -> list[Path]:
    folder = out / "items" / f"increment={n}"
    if folder.exists():
        return sorted(folder.glob("*.parquet"))
    sink = ParquetSink(out / "items", f"increment={n}", OPTIONS)
    sink.write(versions(n))
    return sink.close()


def rebuild(out: Path, n: int) -> CurrentResult:
    return rebuild_current(
        out,
        "items",
        n,
        files_of(out, n),
        primary_key=("id",),
        cursor_field="updatedAt",
        cursor_type="timestamp",
        deleted_field="deleted",
        replace=False,
        options=OPTIONS,
    )


def table(out: Path) -> list[dict[str, Any]]:
    rows = ds.dataset(current_path(out, "items"), format="parquet").to_table().to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def assert_no_key_twice(out: Path) -> None:
    glob = f"{current_path(out, 'items')}/*.parquet"
    dupes = duckdb.sql(
        f"SELECT id, count(*) AS n FROM read_parquet('{glob}') GROUP BY id HAVING n > 1"
    ).fetchall()
    assert not dupes


def killed_rebuild(out: Path, n: int, crash_at: str) -> None:
    code = (
        "import sys; from pathlib import Path; from tests.test_current_crash import rebuild; "
        f"rebuild(Path(sys.argv[1]), {n})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        env={**os.environ, "ASYNCINGEST_CRASH_AT": crash_at, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Any, CurrentResult]]:
    """Tables and figures of rebuilds never killed, per version."""
    out = tmp_path_factory.mktemp("clean")
    done = {}
    for n in (1, 2, 3):
        result = rebuild(out, n)
        done[n] = (table(out), result)
    return done


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("point", POINTS)
def test_a_rebuild_killed_at_a_crash_point_then_run_again_gives_the_same_table(
    tmp_path: Path, point: str, n: int, clean: dict[int, tuple[Any, CurrentResult]]
) -> None:
    for before in range(1, n):
        rebuild(tmp_path, before)
    killed_rebuild(tmp_path, n, f"{point}:1")
    # What a reader sees now: the old version or the new one, whole.
    published = current_version(tmp_path, "items")
    committed = point in ("current-switched", "current-cleaned")
    assert published == (n if committed else (n - 1 or None))
    if published is not None:
        assert table(tmp_path) == clean[published][0]
        assert_no_key_twice(tmp_path)
    # Run again: the same table and figures as a rebuild never killed, and the next one on top.
    result = rebuild(tmp_path, n)
    assert table(tmp_path) == clean[n][0]
    assert result.rows == clean[n][1].rows and result.files == clean[n][1].files
    assert (result.upserted, result.deleted, result.stale, result.tombstones) == (
        clean[n][1].upserted,
        clean[n][1].deleted,
        clean[n][1].stale,
        clean[n][1].tombstones,
    )
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [f".items_current.v{v}" for v in range(max(1, n - 1), n + 1)]
    rebuild(tmp_path, n + 1)
    assert table(tmp_path) == clean[n + 1][0]
    assert_no_key_twice(tmp_path)
