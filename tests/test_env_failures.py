"""The machine failing (a full disk, a read-only output, a damaged checkpoint) is its own
exit code (4) with one message naming the path, the cause and what to do; committed files
stay intact, staging and temporary files are removed, and once fixed the run resumes exactly."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import yaml

import asyncingest
from asyncingest import (
    EnvironmentFailure,
    StateCorrupt,
    config_from_dict,
)
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.sink import parquet
from asyncingest.state import checkpoint, lock
from asyncingest.state.checkpoint import load_state, save_state, state_path
from asyncingest.state.rangeset import RangeSet

from . import unprivileged
from .conftest import (
    ROOT,
    check_complete,
    fail_once_at,
    job_config,
    leftovers,
    run_cli,
    write_ids,
)

pytestmark = pytest.mark.slow


def assert_committed_files_intact(out: Path) -> None:
    state = load_state(out)
    assert state is not None
    for name, es in state.endpoints.items():
        for f in es.files:
            pq.read_table(out / name / f)  # present and readable


async def test_disk_full_while_committing_then_the_run_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_path, ids = write_ids(tmp_path, 120)
    out = tmp_path / "out"
    # fault_retry_after 1 s: a run as long as the 12th commit assumes (small() says 0.2 s).
    settings = MockSettings.small(fault_rate=0.05, latency_ms=2, fault_retry_after=1.0)
    async with MockAPI(settings) as api:
        cfg = config_from_dict(job_config(api.url, out, ids_path))
        monkeypatch.setattr(parquet, "crash_point", fail_once_at(12))
        with pytest.raises(EnvironmentFailure) as info:
            await asyncingest.run(cfg)
        assert "no space left on the device" in str(info.value)
        assert str(out) in info.value.path
        assert not leftovers(out)
        assert_committed_files_intact(out)
        monkeypatch.undo()  # space freed
        second = await asyncingest.run(cfg)
        assert second.ok and second.note == "resumed"
        check_complete(api, out, ids)


async def test_disk_full_while_saving_the_state_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_path, ids = write_ids(tmp_path, 60)
    out = tmp_path / "out"
    seen = 0

    def state_written(name: str) -> None:  # after the temp file is written, before the rename
        nonlocal seen
        seen += name == "state"
        if seen == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(state_path(out)))

    async with MockAPI(MockSettings.small(latency_ms=2)) as api:
        cfg = config_from_dict(job_config(api.url, out, ids_path))
        monkeypatch.setattr(checkpoint, "crash_point", state_written)
        with pytest.raises(EnvironmentFailure, match="no space left") as info:
            await asyncingest.run(cfg)
        assert info.value.path == str(state_path(out))
        assert not leftovers(out)
        assert_committed_files_intact(out)
        monkeypatch.undo()
        assert (await asyncingest.run(cfg)).ok
        check_complete(api, out, ids)


INJECT = """
import errno, os, sys
from asyncingest.sink import parquet
seen = [0]
def full_disk(name):  # the sixth file commit finds the disk full
    seen[0] += name == "commit"
    if seen[0] == 6 and name == "commit":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
parquet.crash_point = full_disk
from asyncingest.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


async def test_the_cli_exits_4_on_a_full_disk_with_one_message_and_resumes(
    tmp_path: Path,
) -> None:
    import asyncio

    ids_path, ids = write_ids(tmp_path, 120)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(latency_ms=2)) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(job_config(api.url, out, ids_path)))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            INJECT,
            "run",
            str(cfg),
            "--quiet",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        text = (await proc.communicate())[0].decode()
        assert proc.returncode == 4, text
        assert "Traceback" not in text
        assert "no space left on the device" in text and str(out) in text, text
        assert "run the same command" in text
        assert not leftovers(out)
        code, text = await run_cli(cfg)
        assert code == 0, text
        check_complete(api, out, ids)


async def test_an_unwritable_output_exits_4(tmp_path: Path) -> None:
    # Root writes through chmod: as root, the CLI runs as user nobody (tests/unprivileged.py).
    as_root = os.geteuid() == 0
    if as_root and (why := unprivileged.why_not()) is not None:
        pytest.skip(f"running as root, and {why}; see the EROFS test")
    base = unprivileged.shared_dir() if as_root else tmp_path
    ids_path, _ = write_ids(base, 5)
    parent = base / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        async with MockAPI(MockSettings.small()) as api:
            cfg = base / "job.yaml"
            cfg.write_text(yaml.safe_dump(job_config(api.url, parent / "out", ids_path)))
            if as_root:
                code, text = await unprivileged.run_cli_as_nobody(cfg, base)
            else:
                code, text = await run_cli(cfg)
            assert code == 4, text
            assert "permission denied" in text and str(parent / "out") in text
            assert "Traceback" not in text
            assert not (parent / "out").exists()
    finally:
        parent.chmod(0o755)
        if as_root:
            shutil.rmtree(base)


async def test_a_read_only_output_raises_environment_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root writes through a chmod, so a read-only file system is simulated at the first
    # file the run opens under the output (its lock).
    ids_path, _ = write_ids(tmp_path, 5)
    out = tmp_path / "out"
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(lock.os, "open", read_only)
    async with MockAPI(MockSettings.small()) as api:
        with pytest.raises(EnvironmentFailure, match="read-only file system") as info:
            await asyncingest.run(config_from_dict(job_config(api.url, out, ids_path)))
        assert info.value.path.startswith(str(out))
        assert api.stats.requests == 0


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(
            lambda b: orjson.dumps({"version": 1, "status": "running"}), id="no-fingerprint"
        ),
        pytest.param(lambda b: b"\x00" * 64, id="zeros"),
    ],
)
async def test_a_damaged_state_file_exits_4_naming_it_and_fresh(
    tmp_path: Path, damage: Any
) -> None:
    ids_path, ids = write_ids(tmp_path, 5)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small()) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(job_config(api.url, out, ids_path)))
        assert (await run_cli(cfg))[0] == 0
        path = state_path(out)
        path.write_bytes(damage(path.read_bytes()))
        code, text = await run_cli(cfg)
        assert code == 4, text
        assert "Traceback" not in text
        assert str(path) in text and "--fresh" in text, text
        with pytest.raises(StateCorrupt):
            await asyncingest.run(config_from_dict(job_config(api.url, out, ids_path)))
        code, text = await run_cli(cfg, "--fresh")
        assert code == 0, text
        check_complete(api, out, ids)


async def test_a_damaged_journal_line_exits_4_naming_the_journal(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 5)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small()) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(job_config(api.url, out, ids_path)))
        assert (await run_cli(cfg))[0] == 0
        # As if killed before any session was done: resuming replays the sessions journal.
        state = load_state(out)
        assert state is not None
        state.status = "interrupted"
        state.endpoints["sessions"].done = RangeSet()
        state.endpoints["sessions"].finished = False
        save_state(out, state)
        journal = out / "_asyncingest" / "jobs" / "sessions.jsonl"
        lines = journal.read_bytes().splitlines(keepends=True)
        lines[1] = b"{" * (len(lines[1]) - 1) + b"\n"  # same length: the state still fits
        journal.write_bytes(b"".join(lines))
        code, text = await run_cli(cfg)
        assert code == 4, text
        assert "Traceback" not in text
        assert str(journal) in text and "line 2" in text and "--fresh" in text, text
        code, text = await run_cli(cfg, "--fresh")
        assert code == 0, text
        check_complete(api, out, ids)


async def test_a_journal_shorter_than_the_state_says_exits_4(tmp_path: Path) -> None:
    ids_path, _ = write_ids(tmp_path, 5)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small()) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(job_config(api.url, out, ids_path)))
        assert (await run_cli(cfg))[0] == 0
        state = load_state(out)
        assert state is not None
        state.status = "interrupted"
        state.endpoints["sessions"].finished = False
        save_state(out, state)
        journal = out / "_asyncingest" / "jobs" / "sessions.jsonl"
        journal.write_bytes(journal.read_bytes()[:10])
        code, text = await run_cli(cfg)
        assert code == 4, text
        assert str(journal) in text and "Traceback" not in text


async def test_a_periodic_checkpoint_that_cannot_be_saved_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_path, ids = write_ids(tmp_path, 200)
    out = tmp_path / "out"
    saves = 0

    def state_written(name: str) -> None:
        nonlocal saves
        saves += name == "state"
        if saves == 2:  # the first save marks the run started; the second is periodic
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(state_path(out)))

    async with MockAPI(MockSettings.small()) as api:
        raw = job_config(api.url, out, ids_path)
        raw["output"]["checkpoint_seconds"] = 0.05
        # A tight budget keeps the run going for seconds: the failing save is a periodic one.
        slow = {**raw, "api": {**raw["api"], "rate_limits": [{"requests": 20, "per_seconds": 1}]}}
        monkeypatch.setattr(checkpoint, "crash_point", state_written)
        with pytest.raises(EnvironmentFailure, match="no space left"):
            await asyncingest.run(config_from_dict(slow))
        assert not leftovers(out)
        monkeypatch.undo()
        assert (await asyncingest.run(config_from_dict(raw))).ok
        check_complete(api, out, ids)


async def test_a_damaged_dead_letter_file_refuses_retry_failed_naming_it(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 10)
    out = tmp_path / "out"
    faults = {f"/partner/users/{ids[4]}": ("status_503",)}
    async with MockAPI(MockSettings.small(forced_faults=faults, max_faults_per_url=1)) as api:
        raw = job_config(api.url, out, ids_path)
        raw["endpoints"] = raw["endpoints"][-1:]  # users only
        raw["api"]["retry"]["max_attempts"] = 1
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        assert (await run_cli(cfg))[0] == 1
        dead = out / "_dead_letter" / "users" / "dead-letters.jsonl"
        dead.write_bytes(b"[" * (len(dead.read_bytes()) - 1) + b"\n")
        code, text = await run_cli(cfg, "--retry-failed")
        assert code == 4, text
        assert str(dead) in text and "line 1" in text and "Traceback" not in text


async def test_sync_mode_reports_a_full_disk_as_an_environment_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from asyncingest.sync import run_sync

    ids_path, _ = write_ids(tmp_path, 60)
    async with MockAPI(MockSettings.small()) as api:
        cfg = config_from_dict(job_config(api.url, tmp_path / "out", ids_path))
        monkeypatch.setattr(parquet, "crash_point", fail_once_at(2))
        with pytest.raises(EnvironmentFailure, match="no space left") as info:
            await asyncio.to_thread(run_sync, cfg)
        assert "--fresh" in info.value.hint  # sync mode does not resume


def test_the_help_lists_exit_code_4(capsys: pytest.CaptureFixture[str]) -> None:
    from asyncingest.cli.main import EXIT_ENVIRONMENT, main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert EXIT_ENVIRONMENT == 4 and "4 environment failure (disk full" in text
