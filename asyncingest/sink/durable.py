"""Making what was written durable: fsync a file by path, fsync a folder after a rename.

The one place both the sink (committing Parquet files) and the state (``state.json``,
compaction) make a rename survive a power cut: after ``os.replace`` the folder itself is
fsynced, or the new name may be lost.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk (a file written and closed by someone else)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries (names created, renamed or deleted in it) to disk."""
    if os.name == "nt":  # pragma: no cover - Windows cannot open a directory to fsync it
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
