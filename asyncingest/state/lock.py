"""One run per output folder: an exclusive OS lock on ``OUTPUT/_asyncingest/lock``.

Two runs writing one output would number child jobs in the same journal, delete each
other's staging files and overwrite each other's state. The run holds ``fcntl.flock`` on the
lock file from before it reads the state (or ``--fresh`` deletes anything) until it has
written its report; a second run, in another process or the same one (a flock belongs to an
open file, and each run opens its own), fails at once with :class:`OutputLocked` naming who
holds it. The kernel drops the lock when its holder dies, so a SIGKILLed run never blocks
the next one; the file itself stays (deleting it would let two runs lock two different files).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import orjson

from ..errors import OutputLocked

LOCK_NAME = "lock"


class OutputLock:
    """``with OutputLock(output): ...`` holds the output folder for the block."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output / "_asyncingest" / LOCK_NAME
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"OutputLock({self.path}, {'held' if self._fd is not None else 'free'})"

    def acquire(self) -> None:
        """Take the lock or raise :class:`OutputLocked` at once (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                raise OutputLocked(str(self.output), _holder(fd))
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(info) + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing its descriptor). Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of the open file drops the lock

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


if sys.platform == "win32":  # pragma: no cover - not run in CI
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the file (it may not have yet)."""
    try:
        info = orjson.loads(os.pread(fd, 4096, 0))
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run that has just started"
