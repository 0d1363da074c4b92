"""The benchmark scripts still run end to end (at a tiny size), so they cannot rot.

Benchmarks are not tests: nothing here looks at a timing or a target, only that every case
runs, every client variant fetched and wrote every record, and the report gets written.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks import run_all
from benchmarks.bare_aiohttp import USERS_SCHEMA
from benchmarks.cases import CASES, SIZES, Options, run_case

pytestmark = pytest.mark.slow  # each case starts a server and clients in subprocesses

TINY = Options(size=SIZES["tiny"])


@pytest.mark.parametrize("number", sorted(CASES))
def test_case_runs_end_to_end_and_every_variant_is_complete(number: int) -> None:
    report = run_case(number, TINY)

    assert report.rows
    assert report.targets
    cells = [cell for row in report.rows for cell in row]
    assert "INCOMPLETE" not in cells, report.notes
    assert not any(cell.startswith("skipped: failed") for cell in cells), report.notes


def test_run_all_prints_the_figures_and_writes_the_results_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# stale figures\n\n{run_all.KEEP_MARKER}\n\n## Written by hand\n")

    code = run_all.main(["--size", "tiny", "--cases", "2", "--results", str(results)])

    assert code == 0
    out = capsys.readouterr().out
    assert "Case 2" in out and "bare aiohttp loop" in out and "Targets" in out
    text = results.read_text()
    for heading in ("# Benchmark results", "## Targets", "## Case 2"):
        assert heading in text
    assert "command: `python benchmarks/run_all.py --size tiny --cases 2" in text
    assert "CPUs" in text and "python: CPython" in text
    assert "stale figures" not in text  # the generated part is replaced ...
    assert text.endswith(f"{run_all.KEEP_MARKER}\n\n## Written by hand\n")  # ... the rest kept


async def test_bare_loop_writes_the_columns_asyncingest_infers(tmp_path: Path) -> None:
    from asyncingest.mockapi import MockAPI, MockSettings
    from benchmarks._harness import write_ids_csv
    from benchmarks.bare_aiohttp import crawl

    ids = write_ids_csv(tmp_path / "ids.csv", 30)
    async with MockAPI(MockSettings.small()) as api:
        done = await crawl(api.url, ids, tmp_path / "out", concurrency=4, row_group_rows=7)
        expected = {u: api.dataset.user(u) for u in (str(i) for i in range(1, 31))}

    assert (done.requests, done.records, done.failed) == (30, 30, 0)
    table = pq.read_table(tmp_path / "out" / "users" / "part-00000.parquet")
    assert table.schema.equals(USERS_SCHEMA)
    rows = {r["user_id"]: r for r in table.to_pylist()}
    assert set(rows) == set(expected)
    assert all(rows[u]["score"] == rec["score"] for u, rec in expected.items())  # type: ignore[index]


def test_bench_instructions_subtracts_start_up_per_variant(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The instruction benchmark's wiring, without valgrind: each variant's spec runs as a
    client (here without callgrind) and the per-request figure is (N - 1 id) / (N - 1)."""
    from asyncingest.mockapi import MockSettings
    from benchmarks import bench_instructions
    from benchmarks._harness import MockServer, run_client

    def run_without_valgrind(spec: dict[str, object], out_file: Path) -> int:
        measured = run_client(spec)
        assert measured.records == measured.requests  # every id fetched and written
        return 1_000 + 10 * measured.requests  # a stand-in count: start-up + per request

    monkeypatch.setattr(bench_instructions, "instructions", run_without_valgrind)
    with MockServer(MockSettings.small(latency_ms=0)) as server:
        for kind in ("bare", "engine", "null"):
            assert bench_instructions.per_request(kind, server.url, 5, tmp_path) == 10.0


def test_ab_crawl_with_lag_reports_the_loop_lag_of_both_checkouts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import ab_crawl

    repo = Path(__file__).resolve().parent.parent
    argv = ["--before", str(repo), "--after", str(repo), "--rounds", "1", "--size", "tiny"]
    assert ab_crawl.main([*argv, "--lag", "10"]) == 0
    out = capsys.readouterr().out
    assert out.count("loop lag p99") == 2
    assert out.count("loop CPU per tick p99") == 2  # the loop's own CPU between two ticks
    assert "before loop lag (10 ms timer): median p99" in out
    assert "after  loop lag (10 ms timer): median p99" in out


@pytest.mark.slow
def test_ab_cli_cpu_reports_cpu_per_request_of_both_checkouts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import ab_cli_cpu

    repo = Path(__file__).resolve().parent.parent
    argv = ["--before", str(repo), "--after", str(repo), "--rounds", "1"]
    assert ab_cli_cpu.main([*argv, "--ids", "60", "--base-ids", "20"]) == 0
    out = capsys.readouterr().out
    assert out.count("us CPU/request") == 4
    assert "after/before CPU per request:" in out


def test_bench_service_measures_health_and_loop_lag_idle_and_ingesting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import bench_service

    assert bench_service.main(["--quick", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "| idle |" in out
    assert "| ingesting, 2 crawls in the service's loop (--in-loop) |" in out
    assert "| ingesting, 2 crawls in a pipelines thread |" in out
    assert out.count("target /health p99 < 20 ms, ingesting") == 2
    assert "loop callbacks that used more than" in out
