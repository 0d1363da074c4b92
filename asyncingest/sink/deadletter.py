"""Dead letters: every request that gave up and every record that was refused, with why.

One JSON-lines file per endpoint under ``OUTPUT/_dead_letter/<endpoint>/``. The leading
underscore keeps the folder out of ``pyarrow.dataset`` discovery of the output. URLs arrive
here already redacted by the HTTP layer.

A dead letter has one shape from where it is made to where it is written: the frozen
:class:`DeadLetter` (the ledger makes the request and job ones, already redacted; the
engine's writer task and the sync mode's threads write them with :meth:`DeadLetters.add`).

Writing a dead letter never fails on what it carries: integers beyond 64 bits are written
exactly; a record that cannot be JSON at all (nested 255 levels or more, which orjson reads
but will not write) is kept as truncated text (``"record"`` a string, ``"record_truncated":
true``) and the reason says why, so one poisonous record costs one dead letter, not the run.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from ..core.json import dumps, truncated_text

FOLDER = "_dead_letter"
#: How much of a record that cannot be written as JSON is kept (as text).
TRUNCATED_CHARS = 10_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter, as written: a request that gave up (``kind="request"``), a job that
    was never sent (``"job"``), or a record that was refused (``"record"``).

    Make one with :meth:`failed_request`, :meth:`refused_job` or :meth:`rejected_record`;
    ``url`` and ``reason`` must already be redacted (the ledger does it).
    """

    kind: Literal["request", "job", "record"]
    reason: str
    job: int = -1
    method: str = ""
    url: str = ""
    attempts: int = 0
    status: int | None = None
    variables: dict[str, Any] | None = None
    copy: dict[str, Any] | None = None
    #: The serialized request a walk stopped at (``--retry-failed`` asks it again).
    request: dict[str, Any] | None = None
    record: Any = None

    @classmethod
    def failed_request(
        cls,
        *,
        job: int,
        url: str,
        method: str,
        reason: str,
        attempts: int,
        status: int | None,
        variables: dict[str, Any],
        copy: dict[str, Any],
        request: dict[str, Any],
    ) -> DeadLetter:
        """A request that gave up; ``request`` is where its walk stopped."""
        return cls("request", reason, job, method, url, attempts, status, variables, copy, request)

    @classmethod
    def refused_job(
        cls, *, job: int, reason: str, variables: dict[str, Any], copy: dict[str, Any]
    ) -> DeadLetter:
        """A job that was never sent (a value that cannot be bound safely); not re-queued by
        ``--retry-failed``, which would refuse it again."""
        return cls("job", reason, job, variables=variables, copy=copy)

    @classmethod
    def rejected_record(cls, record: Any, reason: str) -> DeadLetter:
        """A record that was refused (no key, no value to bind, does not fit the schema)."""
        return cls("record", reason, record=record)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written (the keys and their order of every earlier version)."""
        if self.kind == "request":
            return {
                "kind": "request",
                "job": self.job,
                "method": self.method,
                "url": self.url,
                "reason": self.reason,
                "attempts": self.attempts,
                "status": self.status,
                "variables": self.variables,
                "copy": self.copy,
                "request": self.request,
            }
        if self.kind == "job":
            return {
                "kind": "job",
                "job": self.job,
                "reason": self.reason,
                "variables": self.variables,
                "copy": self.copy,
            }
        return {"kind": "record", "reason": self.reason, "record": self.record}


class DeadLetters:
    """One endpoint's dead-letter file: appended to, synced at barriers."""

    def __init__(self, root: Path, endpoint: str) -> None:
        self.path = root / FOLDER / endpoint / "dead-letters.jsonl"
        self._fh: IO[bytes] | None = None
        self.count = 0
        self.nbytes = self.path.stat().st_size if self.path.exists() else 0

    def add(self, letter: DeadLetter) -> None:
        """Append ``letter`` (with the time it was written)."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("ab")
        entry = letter.to_json()
        entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = _encode(entry) + b"\n"
        self._fh.write(line)
        self.nbytes += len(line)
        self.count += 1

    def sync(self) -> int:
        """Make every entry so far durable; returns the file's committed size."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return self.nbytes

    def close(self) -> None:
        """Close the file (what was not synced is lost, and not named in the state). Idempotent."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            # A full disk may fail the flush; what was not synced is not in the state.
            with contextlib.suppress(OSError):
                fh.close()

    def __repr__(self) -> str:
        return f"DeadLetters({self.path}, count={self.count})"


def _encode(entry: dict[str, Any]) -> bytes:
    try:
        return dumps(entry, default=str)
    except TypeError as exc:  # nested too deep for JSON text
        why = f"not writable as JSON ({exc}): kept as truncated text"
        for key in ("record", "variables", "copy", "request"):
            if key in entry:
                entry[key] = truncated_text(entry[key], TRUNCATED_CHARS)
        if "record" in entry:
            entry["record_truncated"] = True
        entry["reason"] = f"{entry.get('reason', '')}; {why}".lstrip("; ")
        return dumps(entry, default=str)


def count_left(path: Path, nbytes: int) -> tuple[int, int]:
    """``(failed requests, refused records)`` in the first ``nbytes`` of a dead-letter file:
    what a finished output still holds (every entry starts with its ``kind``)."""
    if nbytes <= 0 or not path.exists():
        return 0, 0
    with path.open("rb") as fh:
        data = fh.read(nbytes)
    requests = data.count(b'{"kind":"request"')
    return requests, data.count(b"\n") - requests
