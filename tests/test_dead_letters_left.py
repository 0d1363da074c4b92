"""A finished output that still holds dead letters is not "all fetched": a rerun exits 1 and
says how many remain and that ``--retry-failed`` asks them again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import asyncingest
from asyncingest import Engine, config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.state.checkpoint import load_state, save_state

from .conftest import job_config, run_cli, write_ids

pytestmark = pytest.mark.slow


def users_job(url: str, out: Path, ids: Path) -> dict[str, Any]:
    raw = job_config(url, out, ids)
    raw["endpoints"] = raw["endpoints"][-1:]  # users only
    raw["api"]["retry"]["max_attempts"] = 1
    return raw


def two_failing(ids: list[str]) -> MockSettings:
    faults = {f"/partner/users/{ids[i]}": ("status_503",) for i in (2, 7)}
    return MockSettings.small(forced_faults=faults, max_faults_per_url=1)


async def test_rerunning_a_finished_run_with_dead_letters_exits_1_and_names_them(
    tmp_path: Path,
) -> None:
    ids_path, ids = write_ids(tmp_path, 12)
    out = tmp_path / "out"
    async with MockAPI(two_failing(ids)) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(users_job(api.url, out, ids_path)))
        code, text = await run_cli(cfg)
        assert code == 1, text
        before = api.stats.requests
        code, text = await run_cli(cfg)
        assert code == 1, text
        assert "already complete" in text and "2 dead letters remain" in text, text
        assert "--retry-failed" in text and api.stats.requests == before
        # The faults were one-off (a key fixed, a server back): --retry-failed recovers them.
        code, text = await run_cli(cfg, "--retry-failed")
        assert code == 0, text
        code, text = await run_cli(cfg)
        assert code == 0 and "already complete" in text and "remain" not in text, text


async def test_the_library_result_counts_the_dead_letters_left(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 12)
    out = tmp_path / "out"
    async with MockAPI(two_failing(ids)) as api:
        cfg = config_from_dict(users_job(api.url, out, ids_path))
        first = await asyncingest.run(cfg)
        assert first.exit_code == 1 and first.dead_requests == 2
        again = await asyncingest.run(cfg)
        assert again.note == "already complete"
        assert again.exit_code == 1 and not again.ok
        assert (again.dead_requests, again.dead_records) == (2, 0)


async def test_a_resumed_run_still_exits_1_for_dead_letters_an_earlier_run_left(
    tmp_path: Path,
) -> None:
    ids_path, ids = write_ids(tmp_path, 12)
    out = tmp_path / "out"
    async with MockAPI(two_failing(ids)) as api:
        cfg = config_from_dict(users_job(api.url, out, ids_path))
        assert (await asyncingest.run(cfg)).exit_code == 1
        # As if killed after its last checkpoint but before it was marked complete.
        state = load_state(out)
        assert state is not None
        state.status = "interrupted"
        state.endpoints["users"].finished = False
        save_state(out, state)
        resumed = await Engine(cfg).run()
        assert resumed.note == "resumed" and resumed.endpoint("users").failed_requests == 0
        assert resumed.exit_code == 1 and resumed.dead_requests == 2
