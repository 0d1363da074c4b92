"""One run per output folder: a second run (another process, or another ``run()`` in the same
process) is refused at once, naming who holds the folder; a killed holder never blocks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import asyncingest
from asyncingest import Engine, OutputLocked, config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.state.checkpoint import load_state
from asyncingest.state.lock import OutputLock
from asyncingest.sync import run_sync

from .conftest import ROOT, check_complete, job_config, run_cli, wait_for_file, write_ids

pytestmark = pytest.mark.slow


async def start_cli(cfg: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncingest",
        "run",
        str(cfg),
        "--quiet",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def until_started(out: Path, run: asyncio.Task[object]) -> None:
    """Until the run has saved its first state (at most 30 s; a file gives nothing to await)."""
    state = out / "_asyncingest" / "state.json"
    for _ in range(600):
        if run.done() or state.exists():
            break
        await asyncio.sleep(0.05)
    assert not run.done()


HOLD = """
import sys
from asyncingest.state.lock import OutputLock
with OutputLock(__import__("pathlib").Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def slow(raw: dict[str, Any]) -> dict[str, Any]:
    """The job under a tight budget: it runs for many seconds, however fast the machine.
    Rate limits may change between a run and its resume, so the resume drops it."""
    return {**raw, "api": {**raw["api"], "rate_limits": [SLOW]}}


SLOW = {"requests": 20, "per_seconds": 1}
UNLIMITED = "api.rate_limits=[]"


async def test_a_second_run_in_the_same_process_is_refused_at_once(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 60)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small()) as api:
        raw = job_config(api.url, out, ids_path)
        holder = Engine(config_from_dict(slow(raw)))
        first = asyncio.create_task(holder.run())
        await until_started(out, first)
        with pytest.raises(OutputLocked) as info:
            await Engine(config_from_dict(raw), fresh=True).run()  # nothing is deleted
        message = str(info.value)
        assert str(out) in message
        assert f"pid {os.getpid()} on host {socket.gethostname()} since 20" in message
        holder.stop()
        assert (await first).stopped  # the holder was undisturbed: it stopped when asked
        # Released at its end: the next run in this process takes the folder and resumes.
        second = await asyncingest.run(config_from_dict(raw))
        assert second.ok and second.note == "resumed"
        check_complete(api, out, ids)


async def test_every_kind_of_cli_run_exits_2_while_another_process_holds_the_folder(
    tmp_path: Path,
) -> None:
    ids_path, _ = write_ids(tmp_path, 5)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small()) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(job_config(api.url, out, ids_path)))
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HOLD,
            str(out),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert holder.stdout is not None and holder.stdin is not None
        assert await holder.stdout.readline() == b"held\n"
        for extra in ((), ("--fresh",), ("--retry-failed",), ("--mode", "sync", "--fresh")):
            code, text = await run_cli(cfg, *extra)
            assert code == 2, (extra, text)
            assert "Traceback" not in text
            assert str(out) in text and f"pid {holder.pid} on host" in text, text
            assert socket.gethostname() in text and "since 20" in text
        assert api.stats.requests == 0 and not (out / "_asyncingest" / "state.json").exists()
        holder.stdin.close()
        assert await holder.wait() == 0
        code, text = await run_cli(cfg)  # released with its holder
        assert code == 0, text


async def test_two_cli_runs_at_once_the_second_exits_2_and_the_first_is_untouched(
    tmp_path: Path,
) -> None:
    ids_path, ids = write_ids(tmp_path, 60)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small()) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(slow(job_config(api.url, out, ids_path))))
        first = await start_cli(cfg)
        await wait_for_file(out / "_asyncingest" / "state.json", first)
        code, text = await run_cli(cfg, "--fresh")
        still_running = first.returncode is None
        first.send_signal(signal.SIGTERM)
        first_text = (await first.communicate())[0].decode()
        assert still_running, first_text
        assert code == 2 and f"pid {first.pid} on host" in text, text
        assert first.returncode == 3, first_text  # stopped gracefully, state saved
        code, text = await run_cli(cfg, "--set", UNLIMITED)
        assert code == 0, text
        check_complete(api, out, ids)


async def test_a_sigkilled_run_does_not_block_the_next_which_resumes(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 60)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small()) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(slow(job_config(api.url, out, ids_path))))
        state_file = out / "_asyncingest" / "state.json"
        code, text = await run_cli(cfg, kill_after=0.5, started=state_file)
        assert code == -signal.SIGKILL, text
        assert (out / "_asyncingest" / "lock").exists()  # the file stays; the lock does not
        code, text = await run_cli(cfg, "--set", UNLIMITED)
        assert code == 0, text
        check_complete(api, out, ids)
        state = load_state(out)
        assert state is not None and len(state.runs) == 2  # resumed, not started over


async def test_sync_mode_takes_the_same_lock(tmp_path: Path) -> None:
    ids_path, _ = write_ids(tmp_path, 5)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small()) as api:
        cfg = config_from_dict(job_config(api.url, out, ids_path))
        with OutputLock(out):
            with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
                await asyncio.to_thread(run_sync, cfg, fresh=True)
            with pytest.raises(OutputLocked):
                await asyncingest.run(cfg)
        assert not list(out.glob("*/part-*.parquet"))
        assert (await asyncio.to_thread(run_sync, cfg)).ok  # free again


def test_the_lock_file_names_its_holder(tmp_path: Path) -> None:
    with OutputLock(tmp_path) as lock:
        assert "held" in repr(lock)
        text = (tmp_path / "_asyncingest" / "lock").read_text()
        assert f'"pid":{os.getpid()}' in text
    OutputLock(tmp_path).acquire()  # released: a new open file takes it
