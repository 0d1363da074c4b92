"""Arrow tables into Parquet files of bounded size: the layout shared by the current table
(``asyncingest.state.current``) and compaction (``asyncingest.state.compact``).

Tables given to :meth:`ChunkedWriter.add` wait until a row group of ``row_group_rows`` is full
(or, at the end, whatever is left); each row group is written to the open file, and a file is
closed at ``max_rows_per_file`` rows (its last row group cut to fit). At most about one row
group plus one open writer are held. A closed file is fsynced, then handed to ``after_close``
(a crash point, say). Where files go is the caller's: ``next_path`` names each new file
(staging names, numbering), and publishing them (rename, folder fsync, the state) stays with
the caller.

:class:`asyncingest.sink.parquet.ParquetSink` keeps its own loop: its schema may widen between
row groups (a new file then, every buffered table conformed), and it commits each file by
rename as it closes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .durable import fsync_file

__all__ = ["ChunkedWriter"]


class ChunkedWriter:
    """Tables of one schema into Parquet files: row groups of ``row_group_rows``, files of at
    most ``max_rows_per_file`` rows (``None``: one file, any size), each fsynced when closed.

    ``next_path`` is called once per file, when its first row group is written; ``after_close``
    (if given) once per file, after its fsync. Blocking; one thread at a time.
    """

    def __init__(
        self,
        schema: pa.Schema,
        *,
        compression: str,
        row_group_rows: int,
        max_rows_per_file: int | None,
        next_path: Callable[[], Path],
        after_close: Callable[[Path], None] | None = None,
    ) -> None:
        self.schema = schema
        self.compression = compression
        self.row_group_rows = row_group_rows
        self.max_rows_per_file = max_rows_per_file
        self._next_path = next_path
        self._after_close = after_close
        self.files: list[Path] = []
        """Every file started, in order (the last one may still be open)."""
        self.rows = 0
        """Rows written to files so far."""
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0  # rows in the open file
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, table: pa.Table) -> None:
        """Buffer ``table`` (of this writer's schema); write every full row group."""
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            self._drain(everything=False)

    def close(self, *, at_least_one_file: bool = False) -> None:
        """Write what is buffered and close the open file. ``at_least_one_file``: with no rows
        at all, still write one empty file (so readers find the schema)."""
        self._drain(everything=True)
        if at_least_one_file and not self.files:
            self._start()
        self._end()

    def abort(self) -> None:
        """Close the open file after a failure; deleting the files is the caller's choice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _drain(self, *, everything: bool) -> None:
        while self._pending_rows:
            size = self.row_group_rows
            if self.max_rows_per_file is not None:
                size = min(size, self.max_rows_per_file - self._in_file)
            if self._pending_rows < size:
                if not everything:
                    return
                size = self._pending_rows
            table = pa.concat_tables(self._pending)
            writer = self._writer or self._start()
            writer.write_table(table.slice(0, size), row_group_size=size)
            self._in_file += size
            self.rows += size
            rest = table.slice(size)
            self._pending = [rest] if rest.num_rows else []
            self._pending_rows -= size
            if self.max_rows_per_file is not None and self._in_file >= self.max_rows_per_file:
                self._end()

    def _start(self) -> pq.ParquetWriter:
        path = self._next_path()
        self.files.append(path)
        self._writer = pq.ParquetWriter(path, self.schema, compression=self.compression)
        return self._writer

    def _end(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer, self._in_file = None, 0
        fsync_file(self.files[-1])
        if self._after_close is not None:
            self._after_close(self.files[-1])
