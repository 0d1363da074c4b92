"""Named crash points for the crash-safety tests.

``ASYNCINGEST_CRASH_AT=name:n`` makes the process SIGKILL itself the n-th time it reaches
the point ``name`` (``commit``: a Parquet file is fsynced but not yet renamed; ``state``: the
new state is fsynced under its temporary name but not yet renamed; ``page``: a page was
fetched but not yet handed to the writer; ``compact-staged``, ``compact-state``,
``compact-deleted``, ``compact-renamed``: after each step of a compaction, see
:mod:`asyncingest.state.compact`; ``current-partial``, ``current-staged``,
``current-switched``, ``current-cleaned``: during a current table's rebuild, see
:mod:`asyncingest.state.current`; ``sweep``: a batch of a ``for_each: {parents: all}`` sweep
was handed to the writer and its jobs queued). Unset (always, outside those tests) a point
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("ASYNCINGEST_CRASH_AT", "")
_NAME, _, _N = _SPEC.partition(":")
_COUNT = int(_N) if _N.isdigit() else 1
_seen = 0


def crash_point(name: str) -> None:
    """SIGKILL this process if ``ASYNCINGEST_CRASH_AT`` names ``name`` and this is its n-th visit;
    else nothing.
    """
    global _seen
    if not _NAME or name != _NAME:
        return
    _seen += 1
    if _seen >= _COUNT:
        os.kill(os.getpid(), signal.SIGKILL)
