"""The end-of-run summary counts the files the output holds after compaction, not the small
files the run committed on the way (a run that committed 10 files of laps and merged them
into 1 says 1, and that 10 were merged)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from asyncingest.core.events import RunFinished
from asyncingest.core.result import Compaction, RunResult
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.operate.logsub import configure_logging

from .conftest import ROOT
from .test_compact import AT_THE_END, SETTINGS, pipeline

pytestmark = pytest.mark.slow


def files_on_disk(out: Path, folder: str) -> int:
    return len(list((out / folder).glob("part-*.parquet")))


async def run_compacting(tmp_path: Path, *args: str) -> tuple[Path, str]:
    """A fresh F1 crawl that commits many small files and compacts them at its end."""
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(**SETTINGS)) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(pipeline(api.url, out, **AT_THE_END)))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncingest",
            "run",
            str(cfg),
            *args,
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "100"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        text = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, text
    return out, text


def compacted_laps(out: Path) -> dict[str, Any]:
    (report,) = (out / "_asyncingest" / "runs").glob("*.json")
    result = orjson.loads(report.read_bytes())["result"]
    (laps,) = [c for c in result["compacted"] if c["folder"] == "laps"]
    assert laps["compacted_from"] > laps["files"]  # the case in question: files were merged
    return dict(laps)


async def test_the_json_summary_counts_each_endpoints_files_after_compaction(
    tmp_path: Path,
) -> None:
    out, text = await run_compacting(tmp_path, "--log-format", "json")
    (summary,) = [
        line for line in map(orjson.loads, text.splitlines()) if line["event"] == "run_summary"
    ]
    fields = summary
    for e in fields["endpoints"]:
        assert e["files"] == files_on_disk(out, e["name"]), e["name"]
    laps = compacted_laps(out)
    (row,) = [e for e in fields["endpoints"] if e["name"] == "laps"]
    assert row["files_committed"] == laps["compacted_from"]
    assert {"folder": "laps", **laps} in [{"folder": c["folder"], **c} for c in fields["compacted"]]


async def test_the_text_summary_says_how_many_files_compaction_left(tmp_path: Path) -> None:
    out, text = await run_compacting(tmp_path)
    laps = compacted_laps(out)
    line = f"laps: {laps['compacted_from']} files merged into {laps['files']}"
    assert line in " ".join(text.split()), text
    assert files_on_disk(out, "laps") == laps["files"]


def test_the_run_finished_log_line_names_the_files_compaction_left() -> None:
    out = io.StringIO()
    log = configure_logging("info", "json", out)
    merged = Compaction("laps", files=3, compacted_from=48, rows=9)
    log(RunFinished(RunResult("r1", "out", (), 1.0, compacted=(merged,))))
    (line,) = map(orjson.loads, out.getvalue().splitlines())
    assert "laps: 48 files merged into 3" in line["message"]
    assert line["compacted"] == [{"folder": "laps", "files": 3, "compacted_from": 48}]
