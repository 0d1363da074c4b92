"""The sink of ``output: none``: records into Arrow batches, no files.

Same conversion as the Parquet sink (:class:`asyncingest.sink.schema.BatchConverter`: declared
fields typed, the others inferred and widened, refused records returned with a reason), so a
batch has the columns and types a Parquet file of the same records would have. Each ``write``
call becomes one RecordBatch (the writer calls it once ``row_group_rows`` records are buffered,
so a batch ends with the page that filled it; fewer at a checkpoint or the end). Nothing is
kept once ``take_batches`` hands it out, and nothing at all unless ``tap`` is on (an endpoint
nobody reads). Blocking and single-threaded, like :class:`asyncingest.sink.parquet.ParquetSink`,
whose interface it shares as far as the writer uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from .schema import BatchConverter, Columns, FieldType, RejectedRecord

__all__ = ["BatchSink"]


class BatchSink:
    """One endpoint's records as Arrow batches (``output: none``)."""

    def __init__(
        self,
        root: Path,
        name: str,
        schema: Mapping[str, FieldType] | None = None,
        columns: Columns = "all",
    ) -> None:
        self.name = name
        self.directory = Path(root)  # named in errors; nothing is written here
        self._converter = BatchConverter(schema, columns)
        self.tap = False
        self._batches: list[pa.RecordBatch] = []
        self._rows = 0
        self._closed = False

    @property
    def files(self) -> list[Path]:
        """No files, ever."""
        return []

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dropped_fields(self) -> Mapping[str, int]:
        return self._converter.dropped_fields

    @property
    def json_fallbacks(self) -> Mapping[str, str]:
        return self._converter.json_fallbacks

    @property
    def rows_converted(self) -> int:
        """Rows accepted so far."""
        return self._rows

    def write(self, records: Sequence[Mapping[str, Any]]) -> list[RejectedRecord]:
        """Convert ``records`` into one batch (kept while ``tap`` is on); returns those refused."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if not records:
            return []
        table, rejected = self._converter.convert(records)
        self._rows += table.num_rows
        if self.tap and table.num_rows:
            self._batches.extend(table.combine_chunks().to_batches())
        return rejected

    def take_batches(self) -> list[pa.RecordBatch]:
        """The batches converted since the last call."""
        out, self._batches = self._batches, []
        return out

    def flush(self) -> list[Path]:
        return []

    def close(self) -> list[Path]:
        self._closed = True
        return []

    def abort(self) -> None:
        self._closed = True
        self._batches = []

    def __repr__(self) -> str:
        return (
            f"BatchSink(name={self.name!r}, rows={self._rows}, waiting={len(self._batches)}, "
            f"tap={'on' if self.tap else 'off'}{', closed' if self._closed else ''})"
        )
