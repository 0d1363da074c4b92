"""Sessions: tests (the README's test command), lint, typecheck; quick, bench (not by default)."""

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def quick(session: nox.Session) -> None:
    """The fast tests only (``-m "not slow"``) for the inner loop; ``tests`` runs them all."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-m", "not slow", *session.posargs)


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
