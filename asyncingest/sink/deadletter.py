"""Dead letters: every request that gave up and every record that was refused, with why.

One JSON-lines file per endpoint under ``OUTPUT/_dead_letter/<endpoint>/``. The leading
underscore keeps the folder out of ``pyarrow.dataset`` discovery of the output. URLs arrive
here already redacted by the HTTP layer.

Writing a dead letter never fails on what it carries: integers beyond 64 bits are written
exactly; a record that cannot be JSON at all (nested 255 levels or more, which orjson reads
but will not write) is kept as truncated text (``"record"`` a string, ``"record_truncated":
true``) and the reason says why, so one poisonous record costs one dead letter, not the run.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import IO, Any

from ..core.json import dumps, truncated_text

FOLDER = "_dead_letter"
#: How much of a record that cannot be written as JSON is kept (as text).
TRUNCATED_CHARS = 10_000


class DeadLetters:
    def __init__(self, root: Path, endpoint: str) -> None:
        self.path = root / FOLDER / endpoint / "dead-letters.jsonl"
        self._fh: IO[bytes] | None = None
        self.count = 0
        self.nbytes = self.path.stat().st_size if self.path.exists() else 0

    def _write(self, entry: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("ab")
        entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = _encode(entry) + b"\n"
        self._fh.write(line)
        self.nbytes += len(line)
        self.count += 1

    def request_failed(
        self,
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
    ) -> None:
        """``request`` is the serialized request the walk stopped at (``--retry-failed``)."""
        self._write(
            {
                "kind": "request",
                "job": job,
                "method": method,
                "url": url,
                "reason": reason,
                "attempts": attempts,
                "status": status,
                "variables": variables,
                "copy": copy,
                "request": request,
            }
        )

    def job_refused(
        self, *, job: int, reason: str, variables: dict[str, Any], copy: dict[str, Any]
    ) -> None:
        """A job that was never sent (a value that cannot be bound safely); not re-queued by
        ``--retry-failed``, which would refuse it again."""
        self._write(
            {"kind": "job", "job": job, "reason": reason, "variables": variables, "copy": copy}
        )

    def record_rejected(self, *, record: Any, reason: str) -> None:
        self._write({"kind": "record", "reason": reason, "record": record})

    def sync(self) -> int:
        """Make every entry so far durable; returns the file's committed size."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return self.nbytes

    def close(self) -> None:
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
