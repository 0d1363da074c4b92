"""Errors a user can act on. The CLI prints them without a traceback: exit 2 for the config,
the usage or a busy output folder, exit 4 for the environment (disk, permissions, checkpoint)."""

from __future__ import annotations

import errno
import os
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
        """The message the CLI prints: the source, the number of problems, one line each."""
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
            "to finish, stop it, or write to another output folder (output.directory, or --output "
            "on the command line)"
        )


class BatchesClosed(AsyncIngestError):
    """The consumer closed ``batches(endpoint)`` before the endpoint finished."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        super().__init__(
            f"batches({endpoint!r}) was closed before the endpoint finished; the checkpoint "
            "keeps what was delivered. Read the batches to the end (after stop() they end "
            "soon), or cancel the pipeline"
        )


class RunCancelled(AsyncIngestError):
    """The run was cancelled before the endpoint's batches ended."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        super().__init__(
            f"the run was cancelled before batches({endpoint!r}) ended; the checkpoint keeps "
            "what was delivered"
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


_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error (a failing disk or network file system?)",
    errno.EMFILE: "too many open files",
}
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def environment_failure(
    exc: OSError, where: str | os.PathLike[str], *, resumes: bool = True
) -> EnvironmentFailure:
    """``exc`` (a file operation that failed) as an :class:`EnvironmentFailure` naming the
    file (or ``where``, when the error does not say), the cause and what to do."""
    path = str(exc.filename if exc.filename else where)
    cause = _CAUSES.get(exc.errno or 0) or exc.strerror or str(exc) or type(exc).__name__
    then = (
        "run the same command: it resumes from the last checkpoint"
        if resumes
        else "run again with --fresh (sync mode does not resume)"
    )
    if exc.errno in _NO_ROOM:
        hint = f"free some space, then {then}"
    elif exc.errno in _NOT_WRITABLE:
        hint = f"make the output folder writable (or use another --output), then {then}"
    else:
        hint = f"fix the cause, then {then}"
    return EnvironmentFailure(path, cause, hint)


def state_corrupt(path: str | os.PathLike[str], cause: str) -> StateCorrupt:
    """A checkpoint file that cannot be read, with the way out."""
    return StateCorrupt(
        str(path),
        f"the checkpoint is damaged: {cause}",
        "run with --fresh to start over (this deletes the output's data), or restore the "
        "file from a backup",
    )


def damaged_data_file(path: str | os.PathLike[str], cause: str) -> StateCorrupt:
    """A committed Parquet file that cannot be read back (truncated, overwritten), with the
    way out: the checkpoint counts its records as written, so deleting it loses them."""
    return StateCorrupt(
        str(path),
        f"this committed Parquet file is damaged: {cause}",
        "restore the file from a backup, or run with --fresh to start over (this deletes "
        "the output's data); deleting only this file loses its records for good",
    )
