"""A committed Parquet file that is damaged (truncated, or its footer overwritten) is an
environment failure when a resume reads it back: exit 4, one message naming the file with
the way out (restore it, or --fresh), no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from asyncingest import Engine, StateCorrupt, config_from_dict
from asyncingest.core.events import Event, FileCommitted
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.state.checkpoint import load_state

from .conftest import check_complete, job_config, run_cli, write_ids

pytestmark = pytest.mark.slow


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # pyarrow: ArrowInvalid (no magic bytes)


def overwrite_footer(path: Path) -> None:
    data = path.read_bytes()
    # pyarrow: OSError "Couldn't deserialize thrift" (an OSError without an errno)
    path.write_bytes(data[:-200] + b"\xff" * 192 + data[-8:])


async def stopped_after_a_commit(raw: dict[str, object]) -> None:
    """Run until the first file is committed, then stop gracefully (state saved)."""
    engine: Engine | None = None

    def stop_on_commit(event: Event) -> None:
        if isinstance(event, FileCommitted) and engine is not None:
            engine.stop()

    engine = Engine(config_from_dict(raw), subscribers=[stop_on_commit])
    assert (await engine.run()).stopped


@pytest.mark.parametrize("damage", [truncate, overwrite_footer])
async def test_a_damaged_committed_file_exits_4_naming_it_and_the_way_out(
    tmp_path: Path, damage: object
) -> None:
    ids_path, ids = write_ids(tmp_path, 60)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(latency_ms=5)) as api:
        raw = job_config(api.url, out, ids_path)
        await stopped_after_a_commit(raw)
        state = load_state(out)
        assert state is not None
        name, es = next((n, es) for n, es in state.endpoints.items() if es.files)
        damaged = out / name / es.files[0]
        assert callable(damage)
        damage(damaged)
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        code, text = await run_cli(cfg)
        assert code == 4, text
        assert "Traceback" not in text, text
        assert str(damaged) in text and "damaged" in text, text
        assert "--fresh" in text and "restore" in text, text
        assert len(text.strip().splitlines()) == 1 and text.strip().isprintable(), text
        # The way out works: --fresh starts over and gets every record once.
        code, text = await run_cli(cfg, "--fresh")
        assert code == 0, text
        check_complete(api, out, ids)


async def test_the_library_raises_state_corrupt_for_a_damaged_committed_file(
    tmp_path: Path,
) -> None:
    import asyncingest

    ids_path, _ = write_ids(tmp_path, 20)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(latency_ms=5)) as api:
        raw = job_config(api.url, out, ids_path)
        await stopped_after_a_commit(raw)
        state = load_state(out)
        assert state is not None
        name, es = next((n, es) for n, es in state.endpoints.items() if es.files)
        truncate(out / name / es.files[0])
        with pytest.raises(StateCorrupt) as info:
            await asyncingest.run(config_from_dict(raw))
    assert info.value.path == str(out / name / es.files[0])
