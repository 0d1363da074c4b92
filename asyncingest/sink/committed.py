"""Reading committed Parquet files back: a resumed sink continues their schema, unify-at-close
and compaction (``asyncingest.state.compact``) rewrite them.

A file damaged on disk (truncated, overwritten) makes pyarrow raise ``ArrowInvalid`` (no
magic bytes, a size of 0) or an ``OSError`` without an errno (``Couldn't deserialize thrift``,
``Corrupt snappy compressed data``). Here both become :class:`~asyncingest.errors.StateCorrupt`
naming the file, which the CLI reports with exit 4 and no traceback; an ``OSError`` *with* an
errno (a failing disk, a permission) is left to the engines, which report it as the
environment failure it is. Only the reads are guarded: an error raised by the caller between
two row groups (its own writer) passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import damaged_data_file

__all__ = ["batches", "describe", "read_schema", "row_groups"]

_T = TypeVar("_T")


def _guarded(path: Path, read: Callable[[], _T]) -> _T:
    try:
        return read()
    except pa.ArrowInvalid as exc:
        raise damaged_data_file(path, _printable(exc)) from exc
    except OSError as exc:
        if exc.errno is not None:
            raise  # the machine, not the file's bytes
        raise damaged_data_file(path, _printable(exc)) from exc


def _printable(exc: Exception) -> str:
    """pyarrow's message, which may quote the damaged bytes, fit for one terminal line."""
    return "".join(c if c.isprintable() else "?" for c in str(exc).strip())


def read_schema(path: Path) -> pa.Schema:
    """The schema a committed file was written with."""
    return _guarded(path, lambda: pq.read_schema(path))


def describe(path: Path) -> tuple[int, pa.Schema]:
    """``(rows, schema)`` of a committed file, from its footer."""

    def read() -> tuple[int, pa.Schema]:
        with pq.ParquetFile(path) as pf:
            return pf.metadata.num_rows, pf.schema_arrow

    return _guarded(path, read)


def row_groups(path: Path) -> Iterator[pa.Table]:
    """The file's row groups, one table each, in order."""
    pf = _guarded(path, lambda: pq.ParquetFile(path))
    with pf:
        for i in range(pf.num_row_groups):
            yield _guarded(path, partial(pf.read_row_group, i))


def batches(path: Path, batch_size: int) -> Iterator[pa.Table]:
    """The file's rows as tables of at most ``batch_size`` rows, in order."""
    pf = _guarded(path, lambda: pq.ParquetFile(path))
    with pf:
        it = iter(pf.iter_batches(batch_size=batch_size))
        while True:
            batch = _guarded(path, lambda: next(it, None))
            if batch is None:
                return
            yield pa.Table.from_batches([batch])
