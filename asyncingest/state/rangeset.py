"""A compact set of non-negative integers stored as sorted half-open ranges.

Completed job numbers (input row numbers, journal line numbers) arrive almost in order, with
a few stragglers from concurrent workers, so two million done ids are usually one range:
``[[0, 2000000]]``. That is what keeps checkpoint state small as fan-out grows.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator


class RangeSet:
    """A set of integers (done job numbers) kept as sorted half-open ranges, so a million done jobs
    in a row take two numbers.
    """

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(ranges):
            for n in (start, end):
                if n < 0:
                    raise ValueError(f"negative bound {n}")
            if end > start:
                self._add_range(start, end)

    def add(self, n: int) -> None:
        """Add ``n`` (merging adjacent ranges)."""
        self._add_range(n, n + 1)

    def add_range(self, start: int, end: int) -> None:
        """Add ``start .. end-1``."""
        if end > start:
            self._add_range(start, end)

    def _add_range(self, start: int, end: int) -> None:
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, start) - 1
        # Fast path: extends the last range (the common, in-order case).
        if i == len(starts) - 1 and i >= 0 and ends[i] >= start:
            if end > ends[i]:
                ends[i] = end
            return
        if i >= 0 and ends[i] >= start:
            start = starts[i]
            end = max(end, ends[i])
            lo = i
        else:
            lo = i + 1
        hi = lo
        while hi < len(starts) and starts[hi] <= end:
            end = max(end, ends[hi])
            hi += 1
        starts[lo:hi] = [start]
        ends[lo:hi] = [end]

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        i = bisect_right(self._starts, n) - 1
        return i >= 0 and n < self._ends[i]

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def __bool__(self) -> bool:
        return bool(self._starts)

    def ranges(self) -> list[tuple[int, int]]:
        """The set as sorted, disjoint half-open ``(start, end)`` ranges."""
        return list(zip(self._starts, self._ends, strict=True))

    def __iter__(self) -> Iterator[int]:
        for s, e in zip(self._starts, self._ends, strict=True):
            yield from range(s, e)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self.ranges() == other.ranges()

    def __repr__(self) -> str:
        shown = ", ".join(f"{s}-{e - 1}" if e - s > 1 else str(s) for s, e in self.ranges()[:5])
        more = f", ... ({len(self._starts)} ranges)" if len(self._starts) > 5 else ""
        return f"RangeSet({shown}{more})"
