"""Errors a user can act on. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem with the config: where it is and what was expected."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class AsyncIngestError(Exception):
    """Base class of the errors asyncingest raises on purpose."""


class ConfigError(AsyncIngestError):
    """The config (or a file it names, or a command-line override) is unusable."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


class OutputLocked(AsyncIngestError):
    """Another run holds this output folder (one run per output folder; the CLI exits 2)."""

    def __init__(self, output: str, holder: str) -> None:
        self.output = output
        self.holder = holder  # "pid 123 on host h since 2026-01-01T00:00:00Z", as far as known
        super().__init__(
            f"{output}: another run is writing to this output folder ({holder}); wait for it "
            "to finish, stop it, or use another --output"
        )


class EnvironmentFailure(AsyncIngestError):
    """The machine, not the config or the API, stopped the run: a full disk, a read-only or
    unwritable output, a damaged checkpoint. The CLI exits 4. Committed files are intact;
    once the cause is fixed, the same command resumes."""

    def __init__(self, path: str, cause: str, hint: str = "") -> None:
        self.path = path
        self.cause = cause
        self.hint = hint
        super().__init__(f"{path}: {cause}" + (f"; {hint}" if hint else ""))


class StateCorrupt(EnvironmentFailure):
    """The checkpoint (``state.json``, a job journal, a dead-letter file) cannot be read."""
