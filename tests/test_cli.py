"""The command line as users run it: subprocesses against the bundled mock API."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from asyncingest._cli import main
from asyncingest._mockapi import MockAPI, MockSettings

from .conftest import assert_same_records, read_records
from .test_engine import F1_ENDPOINTS, F1_KEYS

ROOT = Path(__file__).resolve().parents[1]


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncingest",
        *args,
        cwd=ROOT,
        env={**os.environ},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "f1.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "api": {"base_url": url, "rate_limits": [{"requests": 50, "per_seconds": 1}]},
                "output": {"directory": str(tmp_path / "out")},
                "endpoints": F1_ENDPOINTS,
            }
        )
    )
    return path


@pytest.mark.parametrize("command", ["run", "validate", "plan", "demo", "mock-api"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2


async def test_run_with_json_logs_then_already_complete(tmp_path: Path) -> None:
    async with MockAPI(MockSettings.small()) as api:
        cfg = write_config(tmp_path, api.url)
        code, _, err = await cli("run", str(cfg), "--log-format", "json", "--log-level", "debug")
        assert code == 0, err
        lines = [orjson.loads(x) for x in err.splitlines() if x.startswith("{")]
        requests = [x for x in lines if x.get("event") == "request_finished"]
        assert requests and all(set(x) >= {"ts", "level", "url", "status"} for x in requests)
        for name, keys in F1_KEYS.items():
            assert_same_records(
                read_records(tmp_path / "out", name), getattr(api.dataset, name), keys
            )
        code, _, err = await cli("run", str(cfg), "--quiet")
        assert code == 0 and "already complete" in err


async def test_sync_mode_writes_the_same_records(tmp_path: Path) -> None:
    async with MockAPI(MockSettings.small(fault_rate=0.2)) as api:
        cfg = write_config(tmp_path, api.url)
        code, _, err = await cli("run", str(cfg), "--mode", "sync", "--workers", "8", "--quiet")
        assert code == 0, err
        for name, keys in F1_KEYS.items():
            assert_same_records(
                read_records(tmp_path / "out", name), getattr(api.dataset, name), keys
            )


async def test_plan_samples_parents_and_names_the_bottleneck(tmp_path: Path) -> None:
    async with MockAPI(MockSettings.small()) as api:
        cfg = write_config(tmp_path, api.url)
        code, out, err = await cli("plan", str(cfg), "--sample", "2")
        assert code == 0, err
        assert "sessions" in out and "laps" in out and "requests:" in out
        assert "50/1s" in out


async def test_plan_json_gives_the_run_s_request_count_when_every_walk_is_sampled(
    tmp_path: Path,
) -> None:
    """The small mock has 4 sessions: with --sample 5 every walk is sampled, so the estimate
    is exact (no faults, so no retries either) and its range closes on it."""
    async with MockAPI(MockSettings.small()) as api:
        cfg = write_config(tmp_path, api.url)
        code, out, err = await cli("plan", str(cfg), "--sample", "5", "--json")
        assert code == 0, err
        est = orjson.loads(out)
        api.reset()
        code, _, err = await cli("run", str(cfg), "--quiet")
        assert code == 0, err
        assert est["requests"] == est["requests_low"] == est["requests_high"]
        assert est["requests"] == api.stats.requests
        laps = next(e for e in est["endpoints"] if e["name"] == "laps")
        assert laps["walks"]["value"] == 4 and laps["pages_per_walk"]["value"] == 4
        assert laps["pages_from"] == "API totals (every walk)"
