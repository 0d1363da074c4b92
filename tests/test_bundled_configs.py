"""Every bundled config, run the way its header comment says, against the bundled mock API
started the way its header comment says: it runs cleanly, and ``plan`` predicts its requests.

The header is the specification: its ``export`` lines, its ``python -m asyncingest mock-api``
line and its ``python -m asyncingest run`` line are parsed from the file and given to the real
CLI parser, so the test and the header cannot drift apart. Only two things differ from a user
at a terminal: the mock listens on a free port (``api.base_url`` is overridden with it, as a
user would with ``--set``) and the output goes to a temporary folder.

"Cleanly" means: exit code 0; no 429 from the server's referee and no window violation it
counted; no dead letters; and no retry (so no warning) that the mock did not cause on purpose:
the default mock injects 3% transient faults (500, 503, 429, reset and truncated bodies), and
each one costs exactly one retry, so the run's retries must equal the faults the server
injected.

All configs run at once (each with its own mock), so the whole module takes about as long as
the slowest config (the CRM export, held to 170 requests per 10 s).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from asyncingest.cli.main import _parser
from asyncingest.cli.mockapi import settings_from_args
from asyncingest.config.loading import load_config
from asyncingest.demo import DEMO_CONFIG, demo_settings
from asyncingest.engine.engine import Engine
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.operate.estimate import Estimate
from asyncingest.operate.sample import plan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {p.stem: p for p in sorted((ROOT / "config").glob("*.yaml"))}
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


@dataclass(frozen=True)
class Header:
    """The commands a config's header comment tells a user to type, from the repo root."""

    env: dict[str, str]
    mock_argv: list[str]  # after "python -m asyncingest"
    run_argv: list[str]


def read_header(path: Path) -> Header:
    env: dict[str, str] = {}
    mock: list[str] | None = None
    run: list[str] | None = None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if not text.startswith(("export ", "python -m asyncingest ")):
            continue  # prose
        words = shlex.split(text, comments=True)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            env[name] = value
        elif words[:3] == ["python", "-m", "asyncingest"]:
            argv = [_expand(w, env, path) for w in words[3:] if w != "&"]
            if argv[0] == "mock-api":
                mock = argv
            elif argv[0] == "run":
                run = argv
    assert mock is not None, f"{path.name}: no 'python -m asyncingest mock-api' line in the header"
    assert run is not None, f"{path.name}: no 'python -m asyncingest run' line in the header"
    return Header(env, mock, run)


def _expand(word: str, env: dict[str, str], path: Path) -> str:
    def value(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"{path.name}: ${m.group(1)} is used but never exported"
        return env[m.group(1)]

    return _VAR.sub(value, word)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    requests: int  # the run report's count (every attempt)
    retries: int
    dead_letters: int
    referee_429s: int
    violations: int
    injected_faults: int
    seconds: float
    planned: Estimate  # plan's estimate, against a mock started the same way (same seed)


@dataclass(frozen=True)
class Case:
    """One config as its header runs it: the mock's settings and the run's config."""

    name: str
    mock: MockSettings
    host: str
    config: Path
    overrides: tuple[str, ...]
    env: dict[str, str]


def case(name: str) -> Case:
    path = CONFIGS[name]
    header = read_header(path)
    mock = _parser().parse_args(header.mock_argv)
    run = _parser().parse_args(header.run_argv)
    assert (ROOT / run.config).resolve() == path.resolve(), "the run line names another file"
    return Case(
        name,
        settings_from_args(mock),
        mock.host,
        ROOT / run.config,
        tuple(run.overrides),
        header.env,
    )


async def run_case(c: Case, output: Path) -> Outcome:
    async with MockAPI(c.mock, host=c.host, port=0) as api:
        cfg = load_config(c.config, [*c.overrides, f"api.base_url={api.url}"])
        planned = await plan(cfg)
    # A fresh mock for the run: plan's requests must not use up the run's server windows.
    async with MockAPI(c.mock, host=c.host, port=0) as api:
        cfg = load_config(c.config, [*c.overrides, f"api.base_url={api.url}"])
        result = await Engine(cfg, output=output).run()
        stats = api.stats
    report = orjson.loads(await asyncio.to_thread(_read, output, result.run_id))
    endpoints = report["result"]["endpoints"]
    return Outcome(
        exit_code=result.exit_code,
        requests=sum(e["requests"] for e in endpoints),
        retries=sum(e["retries"] for e in endpoints),
        dead_letters=sum(e["failed_requests"] + e["records_rejected"] for e in endpoints),
        referee_429s=stats.throttled,
        violations=stats.violations,
        injected_faults=sum(stats.faults.values()),
        seconds=result.duration,
        planned=planned,
    )


def _read(output: Path, run_id: str) -> bytes:
    return (output / "_asyncingest" / "runs" / f"{run_id}.json").read_bytes()


async def _all(cases: list[Case], folder: Path) -> dict[str, Outcome | BaseException]:
    env: dict[str, str] = {}
    for c in cases:
        env |= c.env
    with environment(env):
        done = await asyncio.gather(
            *(run_case(c, folder / c.name) for c in cases), return_exceptions=True
        )
    return {c.name: d for c, d in zip(cases, done, strict=True)}


@functools.cache
def outcomes() -> dict[str, Outcome | BaseException]:
    """Every config's run, made once for the module (all at once, each with its own mock)."""
    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(_all([case(n) for n in CONFIGS], Path(folder)))


def outcome(name: str) -> Outcome:
    got = outcomes()[name]
    if isinstance(got, BaseException):
        raise got
    est = got.planned
    high = "open" if est.requests_high is None else f"{est.requests_high:,}"
    planned_time = "?" if est.seconds is None else f"{est.seconds:.1f} s"
    print(
        f"\n{name}: plan {est.requests:,} requests ({est.requests_low:,}-{high}), "
        f"{planned_time}; run {got.requests:,} requests ({got.retries} retries), "
        f"{got.seconds:.1f} s"
    )
    return got


def test_config_demo_is_the_packaged_demo() -> None:
    assert CONFIGS["demo"].resolve() == DEMO_CONFIG.resolve()


def test_the_standalone_mock_is_the_demo_s_mock() -> None:
    """``mock-api`` with no options serves what ``asyncingest demo`` runs against."""
    assert settings_from_args(_parser().parse_args(["mock-api"])) == demo_settings()


@pytest.mark.parametrize("name", CONFIGS)
def test_header_commands_are_complete(name: str) -> None:
    header = read_header(CONFIGS[name])
    mock = _parser().parse_args(header.mock_argv)
    cfg = load_config(CONFIGS[name])
    if cfg.api.auth is not None:
        assert cfg.api.auth.env in header.env, "the header must export the API key it needs"
        assert mock.token == header.env[cfg.api.auth.env], "the mock must require that key"


@pytest.mark.slow  # whole jobs; the CRM export is held to 170 requests per 10 s
@pytest.mark.parametrize("name", CONFIGS)
def test_runs_cleanly_against_the_mock_its_header_starts(name: str) -> None:
    got = outcome(name)
    assert got.exit_code == 0
    assert got.referee_429s == 0
    assert got.violations == 0
    assert got.dead_letters == 0
    assert got.retries == got.injected_faults  # each injected fault: one retry; nothing else


@pytest.mark.slow  # needs the whole jobs above
@pytest.mark.parametrize("name", CONFIGS)
def test_plan_estimates_the_requests_within_25_percent(name: str) -> None:
    """``plan`` against the mock, then the run against the same mock (same seed): the estimate
    is within 25% of the run report's request count (retries included), and is not open-ended.
    The time estimate is printed, never asserted."""
    got = outcome(name)
    est = got.planned
    assert not est.unknown and not est.lower_bound
    assert abs(est.requests - got.requests) <= 0.25 * got.requests
