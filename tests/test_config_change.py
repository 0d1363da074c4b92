"""A config change that makes resuming unsafe is refused naming what changed."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import orjson
import pytest

import asyncingest
from asyncingest import ConfigError, Engine, config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.state.checkpoint import state_path

from .conftest import job_config, write_ids

pytestmark = pytest.mark.slow


async def stopped_run(raw: dict[str, object]) -> None:
    engine = Engine(config_from_dict(raw))
    task = asyncio.create_task(engine.run())
    await asyncio.sleep(0.05)
    engine.stop()
    await task


async def test_the_refusal_names_each_changed_field_old_and_new(tmp_path: Path) -> None:
    ids_path, _ = write_ids(tmp_path, 5)
    async with MockAPI(MockSettings.small()) as api, MockAPI(MockSettings.small()) as other:
        raw = copy.deepcopy(job_config(api.url, tmp_path / "out", ids_path))  # shared dicts
        await stopped_run(raw)
        state = orjson.loads(state_path(tmp_path / "out").read_bytes())
        assert state["identity"]["base_url"].rstrip("/") == api.url  # what the fingerprint hashes
        raw["api"]["base_url"] = other.url
        raw["endpoints"][0]["params"] = {"year": 2023}
        laps = next(e for e in raw["endpoints"] if e["name"] == "laps")
        laps["schema"] = {**laps["schema"], "lap_duration": "string"}
        raw["output"]["compression"] = "snappy"
        ids_path.write_text(ids_path.read_text() + "99999\n")
        with pytest.raises(ConfigError) as info:
            await asyncingest.run(config_from_dict(raw))
        message = info.value.render()
        assert f"api.base_url: {api.url}/ -> {other.url}/" in message
        assert "endpoints[meetings].params.year: 2024 -> 2023" in message
        assert "endpoints[laps].schema.lap_duration: float64 -> string" in message
        assert "output.compression: zstd -> snappy" in message
        assert f"endpoints[users].from_file ({ids_path}): size " in message
        assert "--fresh" in message


async def test_added_and_removed_endpoints_are_named(tmp_path: Path) -> None:
    ids_path, _ = write_ids(tmp_path, 5)
    async with MockAPI(MockSettings.small()) as api:
        raw = copy.deepcopy(job_config(api.url, tmp_path / "out", ids_path))  # shared dicts
        await stopped_run(raw)
        raw["endpoints"] = [e for e in raw["endpoints"] if e["name"] != "users"]
        raw["endpoints"][-1] = {**raw["endpoints"][-1], "name": "assoc"}
        with pytest.raises(ConfigError) as info:
            await asyncingest.run(config_from_dict(raw))
        message = info.value.render()
        assert "endpoints[users]: removed" in message
        assert "endpoints[assoc]: added" in message


async def test_a_state_from_before_the_details_still_refuses_with_fingerprints(
    tmp_path: Path,
) -> None:
    ids_path, _ = write_ids(tmp_path, 5)
    async with MockAPI(MockSettings.small()) as api:
        raw = copy.deepcopy(job_config(api.url, tmp_path / "out", ids_path))  # shared dicts
        await stopped_run(raw)
        path = state_path(tmp_path / "out")
        old = orjson.loads(path.read_bytes())
        del old["identity"]  # as written by an earlier asyncingest
        path.write_bytes(orjson.dumps(old))
        raw["endpoints"][0]["params"] = {"year": 2023}
        with pytest.raises(ConfigError) as info:
            await asyncingest.run(config_from_dict(raw))
        message = info.value.render()
        assert f"fingerprint {old['fingerprint']} ->" in message and "--fresh" in message
        assert "cannot name the fields" in message
        # Unchanged config: an old state resumes, and is upgraded with the details.
        raw["endpoints"][0]["params"] = {"year": 2024}
        assert (await asyncingest.run(config_from_dict(raw))).ok
        assert "identity" in orjson.loads(path.read_bytes())


async def test_an_integer_beyond_64_bits_in_the_config_is_fingerprinted_and_named(
    tmp_path: Path,
) -> None:
    """orjson refuses to write integers beyond 64 bits; the fingerprint used to crash on one."""
    big = 2**70
    ids_path, _ = write_ids(tmp_path, 5)
    async with MockAPI(MockSettings.small()) as api:
        raw = copy.deepcopy(job_config(api.url, tmp_path / "out", ids_path))  # shared dicts
        raw["endpoints"][0]["params"] = {"year": 2024, "tag": big}
        await stopped_run(raw)
        state = orjson.loads(state_path(tmp_path / "out").read_bytes())
        assert len(state["fingerprint"]) == 16
        raw["endpoints"][0]["params"] = {"year": 2024, "tag": big + 1}
        with pytest.raises(ConfigError) as info:
            await asyncingest.run(config_from_dict(raw))
        assert f"endpoints[meetings].params.tag: {big} -> {big + 1}" in info.value.render()
