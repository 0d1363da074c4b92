"""Sessions: tests (the README's test command), lint, typecheck; quick, bench, mutants (not by
default)."""

import json
import os
import re
import time
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

# pytest-xdist: 4 worker processes on this 2-core machine. Most tests wait on loopback
# sockets, sleeps and subprocesses, so more workers than cores pay; each worker costs ~3 s
# of CPU to start (imports, collection), which is why not more (benchmarks/RESULTS.md, "Test
# times"). worksteal: an idle worker takes queued tests from a busy one, so the slow set's
# 5-20 s tests do not leave one worker running alone at the end. `-- -n 0` runs serially.
XDIST = ("-n", "4", "--dist", "worksteal")
# Workers share the rewritten test modules through __pycache__; with bytecode off
# (PYTHONDONTWRITEBYTECODE set) every worker would compile and rewrite all of them again.
BYTECODE = {"PYTHONDONTWRITEBYTECODE": ""}


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Every test (what CI runs), in xdist workers."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *XDIST, *session.posargs, env=BYTECODE)


@nox.session(python="3.11")
def quick(session: nox.Session) -> None:
    """The fast tests only (``-m "not slow"``) for the inner loop; ``tests`` runs them all."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-m", "not slow", *XDIST, *session.posargs, env=BYTECODE)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and the layer contract (``[tool.importlinter]`` in pyproject)."""
    session.install("-e", ".", "ruff>=0.5", "import-linter>=2.1")
    paths = ("asyncingest", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("lint-imports")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "asyncingest")
    session.run("mypy", "examples")  # strict too: the examples are what users copy


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """All benchmark cases side by side; writes benchmarks/RESULTS.md (pass --quick to try)."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)


# Mutation testing (mutmut). Each module runs in a folder of its own, mutants/<slug>/, with its
# own [tool.mutmut]: the shared settings from pyproject.toml, only its files mutated and only
# its tests selected (a `Target`). So mutmut's stats run (every selected test once, traced)
# and each mutant's test list stay small, and one module's verdicts survive a run of another
# (mutmut resets every verdict when its test selection changes). The modules are those where a
# bug loses data, exceeds a limit or leaks a secret; docs/testing.md has the rates, the
# accepted (equivalent) survivors and why.
@dataclass(frozen=True)
class Target:
    """One module of the mutation run: the files mutated, the tests selected for them."""

    files: tuple[str, ...]
    tests: tuple[str, ...]
    names: tuple[str, ...] = ()  # mutant-name patterns, when only part of a file is in scope
    deselect: tuple[str, ...] = ()  # tests of those files left out (pytest --deselect)


_T = "tests/test_"
MUTANT_MODULES: dict[str, Target] = {
    "limits/limiter": Target(
        ("asyncingest/limits/limiter.py",),
        (
            f"{_T}limiter.py",
            f"{_T}throttle.py",
            f"{_T}budget.py",
            f"{_T}adaptive.py",
            f"{_T}guards.py",
            f"{_T}properties.py",
        ),
    ),
    "limits/breaker": Target(
        ("asyncingest/limits/breaker.py",),
        (f"{_T}breaker.py", f"{_T}guards.py", f"{_T}ledger_books.py", f"{_T}give_up_paths.py"),
    ),
    "core/retry": Target(
        ("asyncingest/core/retry.py",),
        (
            f"{_T}retry.py",
            f"{_T}breaker.py",
            f"{_T}guards.py",
            f"{_T}dead_letter.py",
            f"{_T}ledger_books.py",
            f"{_T}give_up_paths.py",
        ),
    ),
    "core/ratelimit_headers": Target(
        ("asyncingest/core/ratelimit_headers.py",),
        (f"{_T}ratelimit_headers.py", f"{_T}throttle.py"),
    ),
    "core/pagination": Target(
        ("asyncingest/core/pagination.py",),
        (f"{_T}pagination.py", f"{_T}custom_pagination.py", f"{_T}properties.py"),
    ),
    "sink/parquet": Target(
        ("asyncingest/sink/parquet.py",),
        (
            f"{_T}sink.py",
            f"{_T}sink_nested_nulls.py",
            f"{_T}commit_order.py",
            f"{_T}durable.py",
            f"{_T}writer_failure.py",
            f"{_T}properties.py",
        ),
    ),
    "sink/durable": Target(
        ("asyncingest/sink/durable.py",), (f"{_T}durable.py", f"{_T}commit_order.py")
    ),
    "sink/schema": Target(
        ("asyncingest/sink/schema.py",),
        (
            f"{_T}sink.py",
            f"{_T}sink_nested_nulls.py",
            f"{_T}schema_union.py",
            f"{_T}schema_run.py",
            f"{_T}properties.py",
        ),
    ),
    "sink/deadletter": Target(
        ("asyncingest/sink/deadletter.py",),
        (f"{_T}dead_letter.py", f"{_T}ledger_books.py", f"{_T}writer.py", f"{_T}give_up_paths.py"),
    ),
    "state/checkpoint": Target(
        ("asyncingest/state/checkpoint.py",),
        (
            f"{_T}checkpoint.py",
            f"{_T}commit_order.py",
            f"{_T}writer.py",
            f"{_T}polish_bigint_state.py",
            f"{_T}pipeline.py",
        ),
    ),
    "state/resume": Target(
        ("asyncingest/state/resume.py",),
        (f"{_T}checkpoint.py", f"{_T}pipeline.py", f"{_T}writer.py"),
    ),
    "state/rangeset": Target(
        ("asyncingest/state/rangeset.py",), (f"{_T}rangeset.py", f"{_T}properties.py")
    ),
    "state/ledger": Target(
        ("asyncingest/state/ledger.py",),
        (f"{_T}ledger_books.py", f"{_T}dead_letter.py", f"{_T}writer.py"),
    ),
    "engine/writer": Target(
        ("asyncingest/engine/writer.py",),
        (
            f"{_T}writer.py",
            f"{_T}batches.py",
            f"{_T}writer_failure.py",
            f"{_T}commit_order.py",
            f"{_T}give_up_paths.py",
            f"{_T}transform_engine.py",
            f"{_T}pipeline.py",
        ),
        # Two tests of the transform pool, not the writer, that fail in mutmut's children
        # whenever several run at once and pass with -j1, so they "killed" writer mutants
        # that survive. The first kills a worker process and hangs (10 s, then fails); the
        # second computes the telemetry statistics in 2 workers and again in the test: four
        # children running it at once on 2 cores pass the 10-s timeout (it takes ~1.8 s
        # alone). The writer's side of a transform is in test_writer.py.
        deselect=(
            f"{_T}transform_engine.py::"
            "test_a_dying_worker_is_replaced_and_only_its_batch_is_set_aside",
            f"{_T}transform_engine.py::"
            "test_telemetry_stats_are_computed_in_the_pool_and_raw_laps_kept",
        ),
    ),
    # redaction: the credentials, and the client's redact / scrub / display_url
    "http/redaction": Target(
        ("asyncingest/http/credentials.py", "asyncingest/http/client.py"),
        (f"{_T}credentials.py", f"{_T}secrets.py", f"{_T}secrets_retried.py", f"{_T}oauth.py"),
        names=(
            "asyncingest.http.credentials.*",
            "asyncingest.http.client.xǁHttpClientǁredact*",
            "asyncingest.http.client.xǁHttpClientǁscrub*",
            "asyncingest.http.client.xǁHttpClientǁdisplay_url*",
        ),
    ),
}
_KILLED = {1, 3, 24, -24, 36, 152, 255}  # tests failed, pytest error, timeouts (mutmut's codes)
_SURVIVED = {0, 5, 33}  # tests passed, or no selected test reaches the function
# the ci examples of the property tests, a failure not shrunk (tests/conftest.py); and a hung
# test fails after 10 s (pytest-timeout, this session only; the slowest selected test takes
# ~1.3 s) instead of the mutant waiting out mutmut's (tests' time + 2 s) x 5, up to 117 s for
# a writer function. An environment variable, not pytest_add_cli_args: mutmut resets every
# module's verdicts when those change.
_MUTMUT_ENV = {"HYPOTHESIS_PROFILE": "mutants", "PYTEST_TIMEOUT": "10"}
_MUTANT_NAME = re.compile(r"asyncingest\.[\w.ǁ]+__mutmut_\d+")


@nox.session(python="3.11")
def mutants(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the critical modules, one at a time, then the kill rate per
    module (killed / killed + survivors not accepted as equivalent in docs/testing.md).

    ``nox -s mutants -- limiter rangeset`` runs the modules whose name holds an argument;
    ``-- report`` only prints the rates of the last run; ``-- -j1`` runs one mutant at a time
    (default four). Results stay in ``mutants/<module>/``: a rerun tests the changed functions
    and the survivors again.
    """
    flags = {a for a in session.posargs if a == "report" or a.startswith("-j")}
    words = [a for a in session.posargs if a not in flags]
    chosen = {m: t for m, t in MUTANT_MODULES.items() if not words or any(w in m for w in words)}
    # Four children on 2 cores: a hung mutant's child sleeps until its test times out, and
    # the others keep the cores busy meanwhile. limiter + retry + dead letters, cold, quiet
    # machine: 242 and 188 s with two, 178 and 174 s with four (docs/testing.md).
    children = next((a[2:] for a in flags if a.startswith("-j")), "4")
    root = Path.cwd()
    if "report" not in flags:
        session.install("-e", ".[test]", "mutmut>=3.8,<4", "pytest-timeout>=2.3,<3")
        started = time.monotonic()
        session.log(f"mutants: load average {_load()} at the start (2 cores: 2.0 is busy)")
        for module, target in chosen.items():
            folder = _module_folder(root, module, target)
            session.log(f"mutants: {module} ({', '.join(target.files)})")
            begin = time.monotonic()
            with session.chdir(folder):
                session.run(
                    "mutmut", "run", "--max-children", children, *target.names, env=_MUTMUT_ENV
                )
            (folder / "seconds.txt").write_text(f"{time.monotonic() - begin:.0f}\n")
        session.log(
            f"mutants: {time.monotonic() - started:.0f} s for {len(chosen)} modules, "
            f"load average {_load()} at the end"
        )
    table = kill_rates(root, chosen)
    session.log("kill rate per module (in mutants/<module>/: mutmut show NAME):\n" + table)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _slug(module: str) -> str:
    return module.replace("/", "-")


def _module_folder(root: Path, module: str, target: Target) -> Path:
    """``mutants/<slug>/``: links to the sources and tests, and a pyproject.toml whose
    [tool.mutmut] mutates ``target.files`` only and selects ``target.tests`` (not slow)."""
    folder = root / "mutants" / _slug(module)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("asyncingest", "tests", "docs", "README.md"):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(root / name)
    text = (root / "pyproject.toml").read_text()
    settings = tomllib.loads(text)["tool"]["mutmut"]
    settings |= {
        "only_mutate": list(target.files),
        "pytest_add_cli_args_test_selection": [
            "-m",
            "not slow",
            *target.tests,
            *(f"--deselect={t}" for t in target.deselect),
        ],
        "use_git_change_detection": False,
    }
    section = "[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", lambda _: section + "\n", text)
    if not (folder / "pyproject.toml").exists() or (folder / "pyproject.toml").read_text() != text:
        (folder / "pyproject.toml").write_text(text)
    # mutmut keeps a verdict until the function changes, even when new tests would kill it:
    # survivors are tested again on every run (killed ones stay killed)
    for file in target.files:
        meta = folder / "mutants" / f"{file}.meta"
        if meta.exists():
            data = json.loads(meta.read_text())
            codes = data["exit_code_by_key"]
            data["exit_code_by_key"] = {k: None if c in _SURVIVED else c for k, c in codes.items()}
            meta.write_text(json.dumps(data))
    # mutmut copies a source it does not mutate once and never again: drop stale copies
    for copy in (folder / "mutants" / "asyncingest").rglob("*.py"):
        source = root / copy.relative_to(folder / "mutants")
        mutated = str(source.relative_to(root)) in target.files
        if not mutated and (not source.exists() or source.read_bytes() != copy.read_bytes()):
            copy.unlink()
    return folder


def _equivalent(root: Path) -> set[str]:
    """The survivors accepted as equivalent: every mutant name in the "Accepted survivors"
    section of docs/testing.md."""
    text = (root / "docs" / "testing.md").read_text()
    section = text.partition("### Accepted survivors")[2].partition("\n### ")[0]
    return set(_MUTANT_NAME.findall(section))


def kill_rates(root: Path, chosen: dict[str, Target]) -> str:
    """mutmut's verdicts (``mutants/<module>/mutants/**/*.py.meta``) per module: killed, the
    survivors not listed as equivalent in docs/testing.md (named), the rate without and with
    the equivalent ones, and the module's last run time."""
    equivalent = _equivalent(root)
    head = f"{'module':<24} {'mutants':>7} {'killed':>6} {'surv.':>5} {'equiv.':>6}"
    lines = [f"{head} {'rate':>6} {'raw':>6} {'time':>6}  (rate: killed / killed + surv.)"]
    totals = [0, 0, 0, 0]
    for module, target in chosen.items():
        folder = root / "mutants" / _slug(module)
        codes: dict[str, int | None] = {}
        for file in target.files:
            meta = folder / "mutants" / f"{file}.meta"
            if meta.exists():
                codes.update(json.loads(meta.read_text())["exit_code_by_key"])
        if target.names:
            codes = {k: c for k, c in codes.items() if any(fnmatch(k, p) for p in target.names)}
        tested = {k: c for k, c in codes.items() if c is not None and c != 34}  # 34: skipped
        killed = [k for k, c in tested.items() if c in _KILLED]
        accepted = sorted(k for k in tested if k not in killed and k in equivalent)
        survived = sorted(k for k in tested if k not in killed and k not in equivalent)
        seconds = folder / "seconds.txt"
        took = f"{seconds.read_text().strip()}s" if seconds.exists() else "-"
        counts = (len(tested), len(killed), len(survived), len(accepted))
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        lines.append(f"{module:<24} {_row(*counts)} {took:>6}")
        lines.extend(f"    {k}  ({_verdict(tested[k])})" for k in survived)
    lines.append(f"{'all':<24} {_row(*totals)}")
    return "\n".join(lines)


def _row(tested: int, killed: int, survived: int, accepted: int) -> str:
    rate = f"{100 * killed / (killed + survived):.1f}%" if killed + survived else "-"
    raw = f"{100 * killed / tested:.1f}%" if tested else "-"
    return f"{tested:>7} {killed:>6} {survived:>5} {accepted:>6} {rate:>6} {raw:>6}"


def _verdict(code: int | None) -> str:
    return "no tests" if code in (5, 33) else "survived" if code == 0 else f"exit {code}"
