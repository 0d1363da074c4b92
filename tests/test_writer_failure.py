"""A writer that fails stops the run at once with its own error, never a silent hang."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import asyncingest
from asyncingest import config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.sink.parquet import ParquetSink

from .conftest import job_config, write_ids

# Only a guard against the hang this file is about: a run that ends ends in well under it.
HANG_GUARD = 20


class ConversionBroke(Exception):
    pass


def users_only(url: str, out: Path, ids: Path) -> dict[str, Any]:
    raw = job_config(url, out, ids)
    raw["endpoints"] = raw["endpoints"][-1:]  # users: one page per id
    raw["output"]["checkpoint_seconds"] = 3600  # no periodic checkpoint: the end decides
    return raw


async def test_a_failing_sink_write_stops_the_run_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 300 pages, a row group every 20: the writer dies early and the workers would fill
    # its inbox (64 pages) and wait on it forever.
    ids_path, _ = write_ids(tmp_path, 300)

    def broken_write(self: ParquetSink, records: Any) -> Any:
        raise ConversionBroke(f"cannot convert {len(records)} records")

    monkeypatch.setattr(ParquetSink, "write", broken_write)
    async with MockAPI(MockSettings.small()) as api:
        cfg = config_from_dict(users_only(api.url, tmp_path / "out", ids_path))
        with pytest.raises(ConversionBroke, match="cannot convert 20 records"):
            await asyncio.wait_for(asyncingest.run(cfg), HANG_GUARD)
        assert api.stats.requests < 300  # stopped at once, not after every request


async def test_a_failing_checkpoint_flush_stops_the_run_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_path, _ = write_ids(tmp_path, 300)

    def broken_flush(self: ParquetSink) -> Any:
        raise ConversionBroke("flush failed")

    monkeypatch.setattr(ParquetSink, "flush", broken_flush)
    async with MockAPI(MockSettings.small(latency_ms=5)) as api:
        raw = users_only(api.url, tmp_path / "out", ids_path)
        raw["output"]["checkpoint_seconds"] = 0.05
        with pytest.raises(ConversionBroke, match="flush failed"):
            await asyncio.wait_for(asyncingest.run(config_from_dict(raw)), HANG_GUARD)
