"""What the tests share: the mock API and engine fixtures, the F1 and CRM endpoint sets, the
job and CLI helpers, and reading an endpoint's Parquet back to compare with the server.

Test modules import shared names from here (``from .conftest import ...``) and never from one
another.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import logging
import os
import signal
import sys
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest
import yaml
from hypothesis import Phase, settings

import asyncingest
from asyncingest import RunResult, config_from_dict
from asyncingest.mockapi import Dataset, MockAPI, MockSettings
from asyncingest.sync import run_sync

ROOT = Path(__file__).resolve().parents[1]

# -- the mock API and the two engines -----------------------------------------------------------


def _settings(param: MockSettings | dict[str, Any] | None) -> MockSettings:
    return param if isinstance(param, MockSettings) else MockSettings.small(**(param or {}))


@pytest.fixture(autouse=True)
def _package_logging_restored() -> Iterator[None]:
    """Put the ``asyncingest`` logger back as it was after each test: one that runs the CLI in
    the test process (``main([..., "--log-level", "debug"])``) sets its level for the whole
    process, and a later test's ``LogSubscriber`` reads that level to choose which events it
    wants (test_progress failed after test_oauth in the quick set)."""
    logger = logging.getLogger("asyncingest")
    level, handlers, propagate = logger.level, list(logger.handlers), logger.propagate
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
    logger.propagate = propagate


@pytest.fixture
async def mock_api(request: pytest.FixtureRequest) -> AsyncIterator[MockAPI]:
    """The bundled mock API on a free loopback port for one test (``MockSettings.small()``).

    Choose other settings or faults by indirect parametrisation with a ``MockSettings`` or a
    dict of ``MockSettings.small`` overrides::

        @pytest.mark.parametrize("mock_api", [{"fault_rate": 0.2}], indirect=True)
    """
    async with MockAPI(_settings(getattr(request, "param", None))) as api:
        yield api


MockAPIFactory = Callable[..., Awaitable[MockAPI]]


@pytest.fixture
async def start_mock_api() -> AsyncIterator[MockAPIFactory]:
    """Start mock APIs inside a test (``await start_mock_api(fault_rate=0.2)``, or pass a
    ``MockSettings``): for several servers, or settings the test computes. All stop at
    teardown."""
    async with AsyncExitStack() as stack:

        async def start(settings: MockSettings | None = None, **small: Any) -> MockAPI:
            return await stack.enter_async_context(MockAPI(settings or _settings(small)))

        yield start


Runner = Callable[..., Awaitable[RunResult]]


@pytest.fixture(params=["async", "sync"])
def engine(request: pytest.FixtureRequest) -> Runner:
    """Runs a config on each engine in turn: ``async`` is ``asyncingest.run``, ``sync`` is
    ``asyncingest.sync.run_sync`` on a worker thread (so the mock API on this loop answers).
    Call it as ``await engine(cfg, subscribers=[...])``."""
    if request.param == "async":

        async def run_async(config: Any, **kwargs: Any) -> RunResult:
            return await asyncingest.run(config, **kwargs)

        return run_async

    async def run_in_thread(config: Any, **kwargs: Any) -> RunResult:
        return await asyncio.to_thread(run_sync, config, **kwargs)

    return run_in_thread


def dataset_digest(settings: MockSettings) -> str:
    """A hash of the mock data set ``settings`` build (the same in every process)."""
    d = Dataset.build(settings)
    tables = {k: v for k, v in vars(d).items() if not k.startswith("_")}
    return hashlib.sha256(orjson.dumps(tables, option=orjson.OPT_SORT_KEYS)).hexdigest()


# -- the F1 and CRM endpoint sets of the mock API -----------------------------------------------

FAST_RETRY = {"max_attempts": 8, "backoff_base": 0.01, "backoff_max": 0.05, "max_retry_after": 5}

F1_ENDPOINTS: list[dict[str, Any]] = [
    {
        "name": "meetings",
        "path": "/v1/meetings",
        "params": {"year": 2024},
        "primary_key": "meeting_key",
    },
    {
        "name": "sessions",
        "path": "/v1/sessions",
        "params": {"meeting_key": "{meeting_key}"},
        "for_each": {"endpoint": "meetings", "bind": ["meeting_key"]},
        "primary_key": "session_key",
    },
    {
        "name": "drivers",
        "path": "/v1/drivers",
        "params": {"session_key": "{session_key}"},
        "for_each": {"endpoint": "sessions", "bind": ["session_key"], "copy": ["meeting_key"]},
    },
    {
        "name": "laps",
        "path": "/v1/laps",
        "params": {"session_key": "{session_key}"},
        "for_each": {"endpoint": "sessions", "bind": ["session_key"]},
        "records": "results",
        "pagination": {"type": "offset", "limit": 10, "total_path": "total"},
        "primary_key": ["session_key", "driver_number", "lap_number"],
        "schema": {
            "session_key": "int64",
            "driver_number": "int64",
            "lap_number": "int64",
            "lap_duration": "float64",
            "duration_sector_1": "float64",
            "duration_sector_2": "float64",
            "duration_sector_3": "float64",
            "is_pit_out_lap": "bool",
            "st_speed": "int64",
        },
    },
    {
        "name": "weather",
        "path": "/v1/weather",
        "params": {"session_key": "{session_key}"},
        "for_each": {"endpoint": "sessions", "bind": ["session_key"]},
    },
    {
        "name": "pit",
        "path": "/v1/pit",
        "params": {"session_key": "{session_key}"},
        "for_each": {"endpoint": "sessions", "bind": ["session_key"]},
    },
    {
        "name": "stints",
        "path": "/v1/stints",
        "params": {"session_key": "{session_key}"},
        "for_each": {"endpoint": "sessions", "bind": ["session_key"]},
    },
    {
        "name": "race_control",
        "path": "/v1/race_control",
        "params": {"session_key": "{session_key}"},
        "for_each": {"endpoint": "sessions", "bind": ["session_key"]},
        "records": "data.items",
        "pagination": {"type": "page", "size": 3, "total_pages_path": "meta.total_pages"},
    },
    {
        "name": "team_radio",
        "path": "/v1/team_radio",
        "params": {"session_key": "{session_key}"},
        "for_each": {"endpoint": "sessions", "bind": ["session_key"]},
        "records": "items",
        "pagination": {"type": "next_url", "next_path": "next"},
    },
]

F1_KEYS = {
    "meetings": ["meeting_key"],
    "sessions": ["session_key"],
    "drivers": ["session_key", "driver_number"],
    "laps": ["session_key", "driver_number", "lap_number"],
    "weather": ["session_key", "date"],
    "pit": ["session_key", "driver_number", "lap_number"],
    "stints": ["session_key", "driver_number", "stint_number"],
    "race_control": ["session_key", "date"],
    "team_radio": ["session_key", "driver_number", "date"],
}

CRM_ENDPOINTS: list[dict[str, Any]] = [
    {
        "name": "contacts",
        "path": "/crm/v3/objects/contacts",
        "records": "results",
        "pagination": {"type": "cursor", "cursor_path": "paging.next.after", "limit": 7},
        "primary_key": "id",
    },
    {
        "name": "engagements",
        "path": "/crm/v3/objects/engagements",
        "records": "results",
        "pagination": {"type": "cursor", "cursor_path": "paging.next.after", "limit": 4},
        "primary_key": "id",
    },
    {
        "name": "engagement_contacts",
        "path": "/crm/v4/objects/engagements/{engagement_id}/associations/contacts",
        "for_each": {
            "endpoint": "engagements",
            "bind": {"engagement_id": "id"},
            "copy": {"engagement_id": "id"},
        },
        "records": "results",
        "concurrency": 5,
    },
    {
        "name": "companies",
        "path": "/crm/v3/objects/companies",
        "params": {"limit": 5},
        "pagination": {"type": "link_header"},
        "primary_key": "id",
    },
]


def pipeline(url: str, endpoints: list[dict[str, Any]], out: Path, **api: Any) -> Any:
    raw = {
        "api": {"base_url": url, "retry": FAST_RETRY, **api},
        "output": {"directory": str(out), "row_group_rows": 50, "max_rows_per_file": 120},
        "endpoints": endpoints,
    }
    return config_from_dict(raw)


def expected_f1(api: MockAPI) -> dict[str, list[dict[str, Any]]]:
    d = api.dataset
    return {name: getattr(d, name) for name in F1_KEYS}


# -- reading the output back --------------------------------------------------------------------


def read_records(output: Path, endpoint: str) -> list[dict[str, Any]]:
    folder = output / endpoint
    if not folder.exists():
        return []
    return ds.dataset(folder, format="parquet").to_table().to_pylist()  # type: ignore[no-any-return]


def by_key(
    records: Iterable[dict[str, Any]], pk: Sequence[str]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = tuple(r[k] for k in pk)
        assert key not in out, f"duplicate record {key}"
        out[key] = r
    return out


def assert_same_records(
    got: list[dict[str, Any]], expected: list[dict[str, Any]], pk: Sequence[str]
) -> None:
    """Every server record exactly once; every field the server sent has the same value."""
    got_by_key = by_key(got, pk)
    want_by_key = by_key(expected, pk)
    missing = sorted(set(want_by_key) - set(got_by_key))
    extra = sorted(set(got_by_key) - set(want_by_key))
    assert not missing, f"{len(missing)} records missing, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} unexpected records, e.g. {extra[:3]}"
    for key, want in want_by_key.items():
        row = got_by_key[key]
        for field, value in want.items():
            assert _norm(row[field]) == _norm(value), (key, field, row[field], value)


def _norm(v: Any) -> Any:
    import orjson

    if isinstance(v, dict | list):
        return orjson.loads(orjson.dumps(v))
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return orjson.loads(v)
        except orjson.JSONDecodeError:
            return v
    return v


# -- a full disk ------------------------------------------------------------------------------

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_once_at(calls: int) -> Any:
    """A stand-in for the sink's ``crash_point`` that fills the disk on the ``calls``-th file
    commit (after the staging file is written, before its rename)."""
    seen = 0

    def full_disk(name: str) -> None:
        nonlocal seen
        seen += name == "commit"
        if seen == calls and name == "commit":
            raise ENOSPC

    return full_disk


def leftovers(out: Path) -> list[Path]:
    """Staging and temporary files anywhere under the output."""
    return [p for p in out.rglob(".*") if p.name.endswith((".inprogress", ".tmp"))]


# -- whole jobs and the CLI in a subprocess --------------------------------------------------------


def job_config(url: str, out: Path, ids: Path, **output: Any) -> dict[str, Any]:
    users = {
        "name": "users",
        "path": "/partner/users/{user_id}",
        "primary_key": "user_id",
        "single_record": True,
        "from_file": {"path": str(ids), "column": "user_id"},
        "concurrency": 4,
    }
    return {
        "api": {
            "base_url": url,
            "retry": {"max_attempts": 8, "backoff_base": 0.01, "backoff_max": 0.05},
            "concurrency": {"endpoints": 3, "requests_per_endpoint": 3},
            # Injected 429s would pause the whole budget for a second each; not what these
            # tests are about.
            "adaptive_rate": False,
        },
        "output": {
            "directory": str(out),
            "row_group_rows": 20,
            "max_rows_per_file": 50,
            "checkpoint_seconds": 0.15,
            **output,
        },
        "endpoints": [*F1_ENDPOINTS, *CRM_ENDPOINTS, users],
    }


def write_ids(tmp_path: Path, n: int = 120) -> tuple[Path, list[str]]:
    ids = [str(5000 + 7 * i) for i in range(n)]
    path = tmp_path / "ids.csv"
    path.write_text("user_id\n" + "\n".join(ids) + "\n")
    return path, ids


def check_complete(api: MockAPI, out: Path, ids: list[str]) -> None:
    d = api.dataset
    for name, keys in F1_KEYS.items():
        assert_same_records(read_records(out, name), getattr(d, name), keys)
    assert_same_records(read_records(out, "contacts"), d.contacts, ["id"])
    assert_same_records(read_records(out, "engagements"), d.engagements, ["id"])
    assert_same_records(read_records(out, "companies"), d.companies, ["id"])
    assoc = [
        {"engagement_id": e["id"], **a}
        for e in d.engagements
        for a in d.association_records(e["id"])
    ]
    assert_same_records(
        read_records(out, "engagement_contacts"), assoc, ["engagement_id", "toObjectId"]
    )
    users = [d.user(u) for u in ids]
    assert_same_records(read_records(out, "users"), users, ["user_id"])  # type: ignore[arg-type]
    # Every visible file is complete and readable by a dataset scan of the whole output.
    for folder in out.iterdir():
        if folder.is_dir() and not folder.name.startswith("_"):
            ds.dataset(folder, format="parquet").to_table()


async def wait_for_file(path: Path, proc: asyncio.subprocess.Process) -> None:
    """Until ``path`` exists or ``proc`` has exited (at most 30 s): a file another process
    writes gives nothing to await on, so look every 50 ms."""
    for _ in range(600):
        if proc.returncode is not None or await asyncio.to_thread(path.exists):
            return
        await asyncio.sleep(0.05)


async def run_cli(
    cfg_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    kill_after: float | None = None,
    sig: int = signal.SIGKILL,
    started: Path | None = None,
) -> tuple[int, str]:
    """Run the CLI; with ``kill_after``, send ``sig`` that many seconds later (counted from
    when ``started`` appears, if given: a loaded machine may take a while to import)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncingest",
        "run",
        str(cfg_path),
        "--quiet",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    if started is not None:
        await wait_for_file(started, proc)
    if kill_after is not None:
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), kill_after)
        except TimeoutError:
            proc.send_signal(sig)
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode()


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


# -- environment -----------------------------------------------------------------------------


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)


def service_required() -> bool:
    return os.environ.get("CI", "").lower() == "true"


# -- hypothesis ----------------------------------------------------------------------------------

# "ci" (the default): the same examples every run (derandomize), no per-example deadline (a
# loaded machine must not fail a property on time), few examples, no example database on disk.
# HYPOTHESIS_PROFILE=thorough searches at random and much longer, to look for new failures.
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=40, database=None, print_blob=True
)
settings.register_profile("thorough", deadline=None, max_examples=2000)
# "mutants" (set by `nox -s mutants`): deterministic like ci, 15 examples, and a failure is not
# shrunk. mutmut only needs to know that a test failed; every surviving mutant of the sink runs
# the sink's property (8 s at 40 examples here), and shrinking can outlast the test.
settings.register_profile(
    "mutants",
    settings.get_profile("ci"),
    max_examples=15,
    phases=(Phase.explicit, Phase.generate),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

if os.environ.get("HYPOTHESIS_PROFILE") == "mutants":

    def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
        """Under the mutants profile, drop the failing examples before hypothesis's report
        hook sees them: it would write them as a source patch for the test, importing libcst
        first, 1.6 s in each mutmut child that a property test kills (most of a rangeset
        mutant's 2.6 s, measured with cProfile). mutmut only reads the exit code."""
        item.__dict__.pop("_hypothesis_failing_examples", None)

    def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
        """Under the mutants profile, run a mutant's tests fastest first, so the first
        failure (mutmut passes -x) comes as early as it can. mutmut 3.8 sorts them so in its
        fork mode, but its fork server hands a child its tests in the order of a set; the
        durations are those of mutmut's stats run, in the folder the child runs in."""
        stats = Path("mutmut-stats.json")
        if stats.is_file():
            durations = orjson.loads(stats.read_bytes()).get("duration_by_test", {})
            items.sort(key=lambda item: durations.get(item.nodeid, 0.0))

    def pytest_collection_finish(session: pytest.Session) -> None:
        """Under the mutants profile, move everything alive after collection out of the
        garbage collector's reach: mutmut forks each mutant's child from a process that has
        collected the tests, and pytest ends each run with gc.collect() (three times, 0.26 s
        of a 0.54-s child) over all of it, pyarrow's and the tests' modules included."""
        gc.freeze()


def most_in_any_window(arrivals: Sequence[float], seconds: float) -> int:
    """The largest number of arrivals in any interval (t - seconds, t]: an independent check
    of a limiter. The maximum is reached with t at an arrival, so only those t are checked."""
    times = sorted(arrivals)
    return max(
        (bisect_right(times, t) - bisect_right(times, t - seconds) for t in times), default=0
    )


async def spawn_hammer(*args: str) -> asyncio.subprocess.Process:
    """A ``tests.redis_hammer`` worker process (its log lines on stdout)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.redis_hammer",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
