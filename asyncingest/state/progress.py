"""A run's progress as the writer folds it and the checkpoint saves it: which jobs are done
(ranges), which walks are part-way (the next request) and what was committed at a barrier.
Shared by the async writer (which builds it) and resume (which saves it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.request import Request
from .rangeset import RangeSet


# Not frozen (treat as immutable): a frozen dataclass costs ~0.6 us more per instance, and
# the engine makes one per request.
@dataclass(slots=True)
class Token:
    """Job ``job`` got a page: its walk continues at ``next`` (``None``: the walk is over)."""

    job: int
    next: Request | None


@dataclass(slots=True)
class Progress:
    """Progress tokens folded as they arrive: done jobs as ranges, part-way walks by job."""

    done: RangeSet = field(default_factory=RangeSet)
    partial: dict[int, Request] = field(default_factory=dict)

    def add(self, token: Token) -> None:
        """Apply one written page's token: its job is done (no next request) or continues from
        ``token.next``."""
        if token.next is None:
            self.done.add(token.job)
            self.partial.pop(token.job, None)
        else:
            self.partial[token.job] = token.next

    def __bool__(self) -> bool:
        return bool(self.partial) or bool(self.done)


@dataclass(slots=True)
class BarrierResult:
    """What the writer had committed at a barrier: the state a checkpoint saves."""

    progress: Progress
    files: list[str]  # every file this run's sink committed so far (names)
    journals: dict[str, tuple[int, int]]  # child endpoint -> committed (lines, bytes)
    dead_letter_bytes: int
    finished: bool = False
    extra_files: dict[str, list[str]] = field(default_factory=dict)  # transform folder -> names
    # Incremental endpoints: the highest cursor (newest token) of the records this barrier made
    # durable (None: none moved it), the rows it made durable, records without a readable cursor.
    cursor: Any = None
    rows: int = 0
    unreadable: int = 0
    # Records whose (time) cursor was beyond the run's start + future_tolerance (they do not
    # move the mark), and the first one's cursor value as the record had it.
    future: int = 0
    future_value: Any = None
    # for_each parents: all: rows of the parent's current table swept into child jobs (their
    # jobs are in the journal lines this barrier committed).
    swept: int = 0
