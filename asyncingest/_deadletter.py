"""Dead letters: every request that gave up and every record that was refused, with why.

One JSON-lines file per endpoint under ``OUTPUT/_dead_letter/<endpoint>/``. The leading
underscore keeps the folder out of ``pyarrow.dataset`` discovery of the output. URLs arrive
here already redacted by the HTTP layer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

import orjson

FOLDER = "_dead_letter"


class DeadLetters:
    def __init__(self, root: Path, endpoint: str) -> None:
        self.path = root / FOLDER / endpoint / "dead-letters.jsonl"
        self._fh: IO[bytes] | None = None
        self.count = 0

    def _write(self, entry: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("ab")
        entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._fh.write(orjson.dumps(entry, default=str) + b"\n")
        self.count += 1

    def request_failed(
        self,
        *,
        url: str,
        method: str,
        reason: str,
        attempts: int,
        status: int | None,
        variables: dict[str, Any],
        body: Any = None,
    ) -> None:
        self._write(
            {
                "kind": "request",
                "method": method,
                "url": url,
                "reason": reason,
                "attempts": attempts,
                "status": status,
                "variables": variables,
                "body": body,
            }
        )

    def record_rejected(self, *, record: Any, reason: str) -> None:
        self._write({"kind": "record", "reason": reason, "record": record})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            self._fh.close()
            self._fh = None

    def __repr__(self) -> str:
        return f"DeadLetters({self.path}, count={self.count})"
