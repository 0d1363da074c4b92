"""Transforms for the CPU stage's tests. They run in worker processes, so they live in a module.

Markers in a record choose a fault: ``boom`` (raise), ``die`` (the process exits at once, as if
killed), ``sleep`` (seconds to sleep before answering).
"""

from __future__ import annotations

import os
import time
from typing import Any

Record = dict[str, Any]

_init_calls = 0


def identity(batch: list[Record]) -> list[Record]:
    return batch


def sizes(batch: list[Record]) -> list[Record]:
    """One row per batch: its size and the ids it held."""
    return [{"size": len(batch), "ids": [r["id"] for r in batch]}]


def raise_on_marker(batch: list[Record]) -> list[Record]:
    for r in batch:
        if r.get("boom"):
            raise ValueError(f"bad record id={r['id']}: {r['boom']}")
    return batch


def exit_on_marker(batch: list[Record]) -> list[Record]:
    """A worker that dies mid-batch (``os._exit`` skips every cleanup, like SIGKILL)."""
    if any(r.get("die") for r in batch):
        os._exit(13)
    return batch


def slow(batch: list[Record]) -> list[Record]:
    time.sleep(max((r.get("sleep", 0.0) for r in batch), default=0.0))
    return batch


def pid(batch: list[Record]) -> list[Record]:
    return [{"pid": os.getpid(), "init_calls": _init_calls, "size": len(batch)}]


def not_a_list(batch: list[Record]) -> Any:
    return {"size": len(batch)}


def count_init() -> None:
    global _init_calls
    _init_calls += 1


def failing_init() -> None:
    raise RuntimeError("no lookup table today")


def raise_on_lap_7(batch: list[Record]) -> list[Record]:
    """For engine tests: a batch holding lap number 7 fails, the others pass through."""
    if any(r.get("lap_number") == 7 for r in batch):
        raise ValueError("lap 7 is unlucky")
    return [
        {
            "session_key": r["session_key"],
            "driver_number": r["driver_number"],
            "lap_number": r["lap_number"],
        }
        for r in batch
    ]


def die_on_lap_7(batch: list[Record]) -> list[Record]:
    """For engine tests: the worker dies on a batch holding lap 7, every time."""
    if any(r.get("lap_number") == 7 for r in batch):
        os._exit(13)
    return raise_on_lap_7(batch)
