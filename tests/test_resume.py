"""Crash-safe runs: SIGKILL at any moment, resume, and the output equals a clean run's."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest
import yaml

import asyncingest
from asyncingest import ConfigError, Engine, config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.state.checkpoint import EndpointState, RunState, load_state
from asyncingest.state.rangeset import RangeSet

from .conftest import (
    F1_KEYS,
    ROOT,
    assert_same_records,
    check_complete,
    job_config,
    read_records,
    run_cli,
    wait_for_file,
    write_ids,
)

pytestmark = pytest.mark.slow

# The crash points (the 7th state save, kills after 0.9-1.5 s) assume a run as long as each
# injected 429 waiting a whole second makes it; small()'s 0.2 s would end the run first.
LONG_429 = {"fault_retry_after": 1.0}


@pytest.mark.parametrize(
    "crash_at", ["commit:2", "commit:9", "state:3", "state:7", "page:25", "page:140"]
)
async def test_sigkill_at_a_crash_point_then_resume_gives_every_record_once(
    tmp_path: Path, crash_at: str
) -> None:
    ids_path, ids = write_ids(tmp_path)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(fault_rate=0.1, latency_ms=2, **LONG_429)) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(job_config(api.url, out, ids_path)))
        code, text = await run_cli(cfg, env={"ASYNCINGEST_CRASH_AT": crash_at})
        assert code == -signal.SIGKILL, text
        assert not any(out.glob("*/part-*.parquet.inprogress"))  # staging files are hidden
        code, text = await run_cli(cfg)
        assert code == 0, text
        check_complete(api, out, ids)
        state = load_state(out)
        assert state is not None and state.status == "complete" and len(state.runs) == 2


async def test_repeated_sigkills_at_random_moments_then_resume(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 300)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(fault_rate=0.1, latency_ms=5, **LONG_429)) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(job_config(api.url, out, ids_path)))
        kills = 0
        for delay in (0.9, 1.1, 1.3, 1.5):
            code, text = await run_cli(cfg, kill_after=delay)
            if code == 0:
                break
            assert code == -signal.SIGKILL, text
            kills += 1
        code, text = await run_cli(cfg)
        assert code == 0, text
        assert kills >= 1
        check_complete(api, out, ids)


async def test_sigterm_stops_gracefully_and_the_same_command_resumes(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 300)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(latency_ms=20)) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(job_config(api.url, out, ids_path)))
        state_file = out / "_asyncingest" / "state.json"  # saved once the run has started
        code, text = await run_cli(cfg, kill_after=0.8, sig=signal.SIGTERM, started=state_file)
        assert code == 3, text
        assert "to resume: python -m asyncingest run" in text
        state = load_state(out)
        assert state is not None and state.status == "interrupted"
        code, text = await run_cli(cfg)
        assert code == 0, text
        check_complete(api, out, ids)


async def test_engine_stop_inside_a_host_loop(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 200)
    async with MockAPI(MockSettings.small(latency_ms=10)) as api:
        cfg = config_from_dict(job_config(api.url, tmp_path / "out", ids_path))
        engine = Engine(cfg)
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.5)
        engine.stop()
        first = await task
        assert first.stopped and first.exit_code == 3
        second = await asyncingest.run(cfg)
        assert second.ok and second.note == "resumed"
        check_complete(api, tmp_path / "out", ids)


async def test_a_completed_run_is_not_run_twice(tmp_path: Path) -> None:
    ids_path, _ = write_ids(tmp_path, 5)
    async with MockAPI(MockSettings.small()) as api:
        cfg = config_from_dict(job_config(api.url, tmp_path / "out", ids_path))
        assert (await asyncingest.run(cfg)).ok
        before = api.stats.requests
        again = await asyncingest.run(cfg)
        assert again.note == "already complete" and api.stats.requests == before
        fresh = await asyncingest.run(cfg, fresh=True)
        assert fresh.ok and api.stats.requests > before


async def test_unsafe_config_change_is_refused_naming_fresh(tmp_path: Path) -> None:
    ids_path, _ = write_ids(tmp_path, 5)
    async with MockAPI(MockSettings.small()) as api:
        raw = job_config(api.url, tmp_path / "out", ids_path)
        engine = Engine(config_from_dict(raw))
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.05)
        engine.stop()
        await task
        raw["endpoints"][0]["params"] = {"year": 2023}
        with pytest.raises(ConfigError, match="--fresh"):
            await asyncingest.run(config_from_dict(raw))
        # What does not change the records (limits, concurrency) may change.
        raw["endpoints"][0]["params"] = {"year": 2024}
        raw["api"]["concurrency"] = {"requests_per_endpoint": 9}
        raw["api"]["rate_limits"] = [{"requests": 1000, "per_seconds": 1}]
        assert (await asyncingest.run(config_from_dict(raw))).ok


async def test_output_with_foreign_parquet_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out" / "meetings").mkdir(parents=True)
    (tmp_path / "out" / "meetings" / "part-00000.parquet").write_bytes(b"x")
    async with MockAPI(MockSettings.small()) as api:
        cfg = config_from_dict(job_config(api.url, tmp_path / "out", write_ids(tmp_path, 3)[0]))
        with pytest.raises(ConfigError, match="--fresh"):
            await asyncingest.run(cfg)


async def test_dead_letters_then_retry_failed(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 20)
    faults = {f"/partner/users/{ids[3]}": ("status_503",) * 3}
    settings = MockSettings.small(forced_faults=faults, max_faults_per_url=3)
    async with MockAPI(settings) as api:
        raw = job_config(api.url, tmp_path / "out", ids_path)
        raw["api"]["retry"]["max_attempts"] = 2
        cfg = config_from_dict(raw)
        first = await asyncingest.run(cfg)
        assert first.exit_code == 1
        dead = tmp_path / "out" / "_dead_letter" / "users" / "dead-letters.jsonl"
        entry = orjson.loads(dead.read_bytes().splitlines()[0])
        assert entry["kind"] == "request" and entry["attempts"] == 2
        assert entry["status"] == 503 and "503" in entry["reason"]
        assert entry["url"].endswith(f"/partner/users/{ids[3]}") and entry["time"]
        again = await asyncingest.run(cfg)
        assert again.note == "already complete"
        retried = await Engine(cfg, retry_failed=True).run()
        assert retried.ok, [e.first_errors for e in retried.endpoints]
        assert retried.endpoint("users").jobs == 1  # only the dead-lettered id, asked again
        assert dead.read_bytes() == b""
        check_complete(api, tmp_path / "out", ids)


def test_state_stays_compact_for_a_million_id_fan_out() -> None:
    done = RangeSet()
    # Workers finish out of order: ids complete in shuffled blocks of 64.
    import random

    rng = random.Random(1)
    for block in range(0, 1_000_000, 64):
        chunk = list(range(block, min(block + 64, 1_000_000)))
        rng.shuffle(chunk)
        for n in chunk:
            done.add(n)
    assert done.ranges() == [(0, 1_000_000)]
    state = RunState(
        "fp",
        endpoints={
            "users": EndpointState(
                files=[f"part-{i:05d}.parquet" for i in range(100)],
                done=done,
                partial={999_990 + i: {"url": "x"} for i in range(8)},
            )
        },
    )
    assert len(state.to_bytes()) < 10_000
    assert RunState.from_bytes(state.to_bytes()).endpoints["users"].done == done


async def test_a_used_up_budget_says_when_it_returns_and_stops_when_asked(tmp_path: Path) -> None:
    ids_path, _ = write_ids(tmp_path, 10)
    events: list[Any] = []
    async with MockAPI(MockSettings.small()) as api:
        raw = job_config(api.url, tmp_path / "out", ids_path)
        raw["endpoints"] = raw["endpoints"][-1:]  # users only
        raw["api"]["rate_limits"] = [{"requests": 4, "per_seconds": 86_400}]
        raw["api"]["on_budget_exhausted"] = "stop"
        raw["api"]["budget_wait_threshold"] = 30
        result = await Engine(config_from_dict(raw), subscribers=[events.append]).run()
        assert result.stopped and result.exit_code == 3
        assert "used up" in result.note and "the next request can go at" in result.note
        assert api.stats.requests == 4
        (exhausted,) = [e for e in events if isinstance(e, asyncingest.BudgetExhausted)]
        assert exhausted.wait > 86_000
        state = load_state(tmp_path / "out")
        assert state is not None and state.status == "interrupted" and "used up" in state.note
        assert len(state.endpoints["users"].done) == 4


async def test_a_second_ctrl_c_stops_at_once_leaving_only_complete_files(tmp_path: Path) -> None:
    ids_path, ids = write_ids(tmp_path, 30)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(latency_ms=400)) as api:
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(job_config(api.url, out, ids_path)))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncingest",
            "run",
            str(cfg),
            "--quiet",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await wait_for_file(out / "_asyncingest" / "state.json", proc)  # the run has started
        await asyncio.sleep(0.2)  # requests are in flight (400 ms each)
        proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        text = (await proc.communicate())[0].decode()
        assert proc.returncode == 3, text
        assert "stopped at once" in text and "to resume" in text
        for f in out.glob("*/part-*.parquet"):
            ds.dataset(f, format="parquet").to_table()  # every visible file is complete
        code, text = await run_cli(cfg)
        assert code == 0, text
        check_complete(api, out, ids)


@pytest.mark.parametrize("crash_at", ["commit:4", "state:3"])
async def test_transform_output_is_exactly_once_after_a_kill(tmp_path: Path, crash_at: str) -> None:
    ids_path, _ = write_ids(tmp_path, 5)
    out = tmp_path / "out"
    async with MockAPI(MockSettings.small(latency_ms=2)) as api:
        raw = job_config(api.url, out, ids_path)
        transform = {"function": "tests.transform_helpers:identity", "batch_size": 7}
        # New dicts: the endpoint dicts are shared with other tests (F1_ENDPOINTS).
        raw["endpoints"] = [
            {**e, "transform": transform} if e["name"] == "laps" else e for e in raw["endpoints"]
        ]
        raw["api"]["concurrency"]["cpu_workers"] = 2
        cfg = tmp_path / "job.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        code, text = await run_cli(cfg, env={"ASYNCINGEST_CRASH_AT": crash_at})
        assert code == -signal.SIGKILL, text
        code, text = await run_cli(cfg)
        assert code == 0, text
        assert_same_records(read_records(out, "laps"), api.dataset.laps, F1_KEYS["laps"])
        assert_same_records(read_records(out, "laps_out"), api.dataset.laps, F1_KEYS["laps"])
