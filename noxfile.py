"""Sessions: tests (the README's test command), lint, typecheck; quick, bench, mutants (not by
default)."""

import fnmatch
import json
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


# The modules where a bug loses data, exceeds a limit or leaks a secret, as mutmut mutant-name
# patterns (``module.function`` or ``module.xǁClassǁmethod``); the files are in
# [tool.mutmut] only_mutate. docs/testing.md has the rates, the survivors and why.
MUTANT_MODULES = {
    "limits/limiter": ["asyncingest.limits.limiter.*"],
    "limits/breaker": ["asyncingest.limits.breaker.*"],
    "core/retry": ["asyncingest.core.retry.*"],
    "core/ratelimit_headers": ["asyncingest.core.ratelimit_headers.*"],
    "core/pagination": ["asyncingest.core.pagination.*"],
    "sink/parquet": ["asyncingest.sink.parquet.*"],
    "sink/durable": ["asyncingest.sink.durable.*"],
    "sink/schema": ["asyncingest.sink.schema.*"],
    "sink/deadletter": ["asyncingest.sink.deadletter.*"],
    "state/checkpoint": ["asyncingest.state.checkpoint.*"],
    "state/resume": ["asyncingest.state.resume.*"],
    "state/rangeset": ["asyncingest.state.rangeset.*"],
    "state/ledger": ["asyncingest.state.ledger.*"],
    "engine/writer": ["asyncingest.engine.writer.*"],
    # redaction: the credentials, and the client's redact/scrub of URLs, links and messages
    "http/client (redaction)": [
        "asyncingest.http.client.xǁCredentialsǁ*",
        "asyncingest.http.client.x_scrub*",
        "asyncingest.http.client.xǁHttpClientǁredact*",
        "asyncingest.http.client.xǁHttpClientǁscrub*",
        "asyncingest.http.client.xǁHttpClientǁdisplay_url*",
    ],
}
_KILLED = {1, 3, 24, -24, 36, 152, 255}  # tests failed, pytest error, timeouts (mutmut's codes)
_SURVIVED = {0, 5, 33}  # tests passed, or no test ran the mutated function


@nox.session(python="3.11")
def mutants(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the critical modules, then the kill rate per module.

    ``nox -s mutants -- limiter rangeset`` runs the modules whose name holds an argument;
    ``nox -s mutants -- report`` only prints the rates of the last run. Results are kept in
    ``mutants/`` (a rerun tests only what changed). See docs/testing.md.
    """
    args = [a for a in session.posargs if a != "report"]
    chosen = {m: p for m, p in MUTANT_MODULES.items() if not args or any(a in m for a in args)}
    if "report" not in session.posargs:
        session.install("-e", ".[test]", "mutmut>=3.8,<4")
        patterns = [p for pats in chosen.values() for p in pats]
        session.run("mutmut", "run", *patterns)
    table = kill_rates(Path("mutants"), chosen)
    session.log("kill rate per module (mutmut show NAME prints a survivor):\n" + table)


def kill_rates(folder: Path, chosen: dict[str, list[str]]) -> str:
    """mutmut's verdicts (``mutants/**/*.py.meta``) as killed / tested per module, with the
    survivors' names."""
    codes: dict[str, int | None] = {}
    for meta in folder.rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    lines = [f"{'module':<26} {'killed':>7} {'tested':>7} {'rate':>7}  survivors"]
    total_killed = total_tested = 0
    for module, patterns in chosen.items():
        mine = {k: c for k, c in codes.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
        tested = {k: c for k, c in mine.items() if c is not None and c != 34}  # 34: skipped
        killed = [k for k, c in tested.items() if c in _KILLED]
        survived = sorted(k for k in tested if k not in killed)
        total_killed, total_tested = total_killed + len(killed), total_tested + len(tested)
        rate = f"{100 * len(killed) / len(tested):.1f}%" if tested else "-"
        lines.append(f"{module:<26} {len(killed):>7} {len(tested):>7} {rate:>7}  {len(survived)}")
        lines.extend(f"    {k}" for k in survived)
    if total_tested:
        rate = f"{100 * total_killed / total_tested:.1f}%"
        lines.append(f"{'all':<26} {total_killed:>7} {total_tested:>7} {rate:>7}")
    return "\n".join(lines)
