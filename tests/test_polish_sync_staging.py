"""Sync mode cleans up after a full disk as the async engine does: committed files stay,
no staging (``.inprogress``) file is left behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from asyncingest import EnvironmentFailure, config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.sink import parquet
from asyncingest.sync import run_sync

from .conftest import fail_once_at, job_config, leftovers, write_ids

pytestmark = pytest.mark.slow


async def test_sync_mode_deletes_its_staging_files_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_path, _ = write_ids(tmp_path, 60)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small()) as api:
        cfg = config_from_dict(job_config(api.url, out, ids_path))
        monkeypatch.setattr(parquet, "crash_point", fail_once_at(2))
        with pytest.raises(EnvironmentFailure, match="no space left"):
            await asyncio.to_thread(run_sync, cfg)
    assert not leftovers(out)
    assert list(out.rglob("part-*.parquet")), "the file committed before the failure stays"
