"""The Parquet sink: record batches in, complete Parquet files out, one folder per endpoint.

Where it sits (see docs/architecture.md): the engine decodes each page into a list of dicts and
hands it to the endpoint's sink from one writer task via ``asyncio.to_thread``. Every method
here is synchronous and blocking. A sink is used by one thread at a time and does no locking;
one sink (one process) per folder at a time.

Files
    ``root/<safe_dir_name(name)>/part-00000.parquet``, ``part-00001.parquet``, ... Numbering
    continues after the highest ``part-N.parquet`` already in the folder (a resumed run adds
    ``part-00007`` after ``part-00006``); gaps are kept, never filled.

Atomic visibility
    A file is written as ``.part-NNNNN.parquet.inprogress``: it neither ends in ``.parquet``
    (DuckDB's ``read_parquet('dir/**/*.parquet')``) nor escapes the leading dot that
    ``pyarrow.dataset`` discovery ignores. To commit, the writer is closed, the file fsynced,
    renamed with ``os.replace`` and the folder fsynced: every ``*.parquet`` a reader can see is
    complete. Staging files left by a killed run are deleted when a sink starts on the folder
    (``removed_stale``), so never start two sinks on one folder.

Memory and layout
    Accepted rows wait, as Arrow tables, until a row group of ``row_group_rows`` is full; then
    they go to the open ``ParquetWriter``. A file is committed at ``max_rows_per_file`` rows
    (its last row group is cut to fit), at ``flush()`` and at ``close()``. At most about one
    row group plus one open writer are held; an endpoint is never held whole.

Schema (types live in :mod:`asyncingest.sink.schema`)
    Declared fields never change. Inferred ones may widen (a new field, an undecided field
    gets a type, int64 -> float64 or decimal, a new struct field, a column falls back to JSON
    text); the next row group then starts a new file with the wider schema. Every file records
    the column kinds in its schema metadata (``asyncingest.types``). At ``close()`` earlier
    files whose schema differs are rewritten to the final schema, one row group at a time and
    with the same staging/fsync/rename steps, so the folder has one schema again. That
    includes files an earlier run of this output committed (a resume): the sink starts from
    the kinds the newest of them recorded. A sink on an empty folder given ``seed_from`` (an
    incremental run's new partition, with the last increment's partition) starts from the
    kinds of that folder's newest file instead, so the increments of an endpoint agree; files
    there are never rewritten.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from asyncingest.sink.schema import (
    BatchConverter,
    Columns,
    FieldType,
    RejectedRecord,
    conform,
    fallbacks_of,
    kinds_of,
    same_schema,
)

from ..core.crashpoints import crash_point
from . import committed
from .durable import fsync_dir, fsync_file

__all__ = ["FieldType", "ParquetSink", "RejectedRecord", "SinkOptions", "safe_dir_name"]

_COMPRESSIONS: Final = frozenset({"none", "snappy", "gzip", "brotli", "lz4", "lz4_raw", "zstd"})
_PART: Final = re.compile(r"part-(\d+)\.parquet")
_STAGING: Final = re.compile(r"\.part-\d+\.parquet\.inprogress")
_MAX_NAME: Final = 200


def safe_dir_name(name: str) -> str:
    """Return ``name`` as a folder name, or raise ``ValueError`` if it could escape or hide.

    Rejected: empty; ``/`` or ``\\`` (so no absolute or nested paths); ``:`` (Windows drives);
    NUL and other control characters; a leading ``.`` (``.``, ``..``, hidden) or ``_`` (both
    are skipped by ``pyarrow.dataset`` discovery); more than 200 characters.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid folder name {name!r}: must be a non-empty string")
    if len(name) > _MAX_NAME:
        raise ValueError(f"invalid folder name {name[:20]!r}...: longer than {_MAX_NAME}")
    bad = sorted({c for c in name if c in "/\\:" or ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(f"invalid folder name {name!r}: contains {''.join(bad)!r}")
    if name[0] in "._":
        raise ValueError(
            f"invalid folder name {name!r}: must not start with '.' or '_' "
            "(path escape, or hidden from dataset readers)"
        )
    return name


@dataclass(frozen=True)
class SinkOptions:
    """How a sink lays out its files. ``compression``: a Parquet codec name or ``"none"``."""

    compression: str = "zstd"
    row_group_rows: int = 10_000
    max_rows_per_file: int = 1_000_000

    def __post_init__(self) -> None:
        codec = self.compression.lower()
        if codec not in _COMPRESSIONS or (codec != "none" and not pa.Codec.is_available(codec)):
            raise ValueError(
                f"compression {self.compression!r} unavailable; use one of {sorted(_COMPRESSIONS)}"
            )
        if self.row_group_rows < 1 or self.max_rows_per_file < 1:
            raise ValueError("row_group_rows and max_rows_per_file must be >= 1")


@dataclass
class _OpenFile:
    final: Path
    staging: Path
    writer: pq.ParquetWriter
    rows: int = 0


class ParquetSink:
    """Writes one endpoint's records into ``root/<name>/part-NNNNN.parquet`` files."""

    def __init__(
        self,
        root: Path,
        name: str,
        options: SinkOptions,
        schema: Mapping[str, FieldType] | None = None,
        columns: Columns = "all",
        seed_from: Path | None = None,
    ) -> None:
        self.name = name
        # A folder whose newest file's column kinds this sink starts from when its own folder
        # has none (the previous increment's partition: later increments keep its types).
        self._seed_from = seed_from
        self.options = options
        self.directory = Path(root) / safe_dir_name(name)
        self._converter = BatchConverter(schema, columns)
        _make_dir(self.directory)
        self._removed_stale = tuple(self._remove_stale())
        self._next_index = 1 + max(
            (int(m[1]) for p in self.directory.iterdir() if (m := _PART.fullmatch(p.name))),
            default=-1,
        )
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._open: _OpenFile | None = None
        self._files: list[Path] = []
        self._file_schemas: dict[Path, pa.Schema] = {}
        self._reported = 0  # files[:_reported] were returned by flush()
        self._rows_written = 0
        self._closed = False
        # Files an earlier run of this output committed (a resume): inferred fields start
        # from the kinds they recorded, and unify-at-close rewrites them too if the kinds
        # widen, so the folder keeps one schema across runs.
        self._earlier: list[Path] = []
        self._merged_away: set[Path] = set()  # committed files a compaction replaced
        # With ``tap`` on, every row group written is also kept as one RecordBatch (its exact
        # rows, columns and types) until ``take_batches``: what ``Pipeline.batches`` hands out.
        self.tap = False
        self._batches: list[pa.RecordBatch] = []
        self._adopt_earlier_files()

    def _adopt_earlier_files(self) -> None:
        parts = sorted(
            (p for p in self.directory.iterdir() if _PART.fullmatch(p.name)),
            key=lambda p: int(_PART.fullmatch(p.name)[1]),  # type: ignore[index]
        )
        for path in parts:
            file_schema = committed.read_schema(path)  # a damaged file: StateCorrupt
            if kinds_of(file_schema) is None:
                continue  # not written by asyncingest: leave it alone
            self._earlier.append(path)
            self._file_schemas[path] = file_schema
        if self._earlier:
            newest = self._file_schemas[self._earlier[-1]]
            kinds = kinds_of(newest)
            assert kinds is not None
            self._converter.seed(kinds, fallbacks_of(newest))
        elif self._seed_from is not None and self._seed_from.is_dir():
            found = [
                (int(m[1]), p) for p in self._seed_from.iterdir() if (m := _PART.fullmatch(p.name))
            ]
            if found:
                newest = committed.read_schema(max(found)[1])
                kinds = kinds_of(newest)
                if kinds is not None:
                    self._converter.seed(kinds, fallbacks_of(newest))

    # -- state ---------------------------------------------------------------------------------

    @property
    def rows_written(self) -> int:
        """Rows in committed files (visible to readers)."""
        return self._rows_written

    @property
    def rows_pending(self) -> int:
        """Accepted rows not committed yet: buffered plus in the open file."""
        return self._pending_rows + (self._open.rows if self._open else 0)

    @property
    def files(self) -> list[Path]:
        """Every file committed by this sink, in order."""
        return list(self._files)

    @property
    def dropped_fields(self) -> Mapping[str, int]:
        """Fields dropped because they are not declared (``only_declared``): name -> values."""
        return self._converter.dropped_fields

    @property
    def json_fallbacks(self) -> Mapping[str, str]:
        """Inferred columns written as JSON text instead of a typed column, and why."""
        return self._converter.json_fallbacks

    @property
    def field_types(self) -> Mapping[str, Any]:
        """Current kinds (see ``core.nested``); ``None`` marks a field seen only as null so far."""
        return self._converter.types

    @property
    def removed_stale(self) -> tuple[Path, ...]:
        """Staging files of a killed run that this sink deleted on start."""
        return self._removed_stale

    # -- the three verbs -----------------------------------------------------------------------

    def write(self, records: Sequence[Mapping[str, Any]]) -> list[RejectedRecord]:
        """Convert and buffer ``records``; write full row groups. Returns the records refused."""
        self._check_usable()
        if not records:
            return []
        table, rejected = self._converter.convert(records)
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            self._drain(everything=False)
        return rejected

    def flush(self) -> list[Path]:
        """Write buffered rows and commit the open file; return files committed since last time.

        Each flush with rows pending ends a file, so flush at checkpoints, not per page.
        """
        self._check_usable()
        self._drain(everything=True)
        if self._open is not None:
            self._commit()
        new = self._files[self._reported :]
        self._reported = len(self._files)
        return new

    def close(self) -> list[Path]:
        """Flush, give every file of this sink the final schema; return all its files."""
        if not self._closed:
            self.flush()
            self._unify()
            self._closed = True
        return list(self._files)

    def take_batches(self) -> list[pa.RecordBatch]:
        """The row groups written since the last call, one RecordBatch each (``tap`` on)."""
        out, self._batches = self._batches, []
        return out

    # -- internals -----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _drain(self, *, everything: bool) -> None:
        """Write row groups while a full one is buffered (or, with ``everything``, any rows)."""
        while self._pending_rows:
            schema = self._converter.arrow_schema()
            if self._open is not None and not same_schema(self._open.writer.schema, schema):
                self._commit()  # the schema widened: the rest goes to a new file
            room = self.options.max_rows_per_file - (self._open.rows if self._open else 0)
            size = min(self.options.row_group_rows, room)
            if self._pending_rows < size:
                if not everything:
                    return
                size = self._pending_rows
            self._write_row_group(schema, size)

    def _write_row_group(self, schema: pa.Schema, size: int) -> None:
        if self._open is None:
            self._open = self._start_file(schema)
        table = pa.concat_tables([conform(t, schema) for t in self._pending])
        group = table.slice(0, size)
        self._open.writer.write_table(group, row_group_size=size)
        if self.tap:
            self._batches.extend(group.combine_chunks().to_batches())
        self._open.rows += size
        rest = table.slice(size)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows -= size
        if self._open.rows >= self.options.max_rows_per_file:
            self._commit()

    def _start_file(self, schema: pa.Schema) -> _OpenFile:
        final = self.directory / f"part-{self._next_index:05d}.parquet"
        self._next_index += 1
        staging = _staging_path(final)
        # The schema's metadata holds the kinds (json vs string, fields still undecided,
        # nested types), so a later run over this folder can continue exactly.
        writer = pq.ParquetWriter(staging, schema, compression=self.options.compression)
        return _OpenFile(final, staging, writer)

    def _commit(self) -> None:
        assert self._open is not None
        done, self._open = self._open, None
        done.writer.close()
        _publish(done.staging, done.final)
        self._files.append(done.final)
        self._file_schemas[done.final] = done.writer.schema
        self._rows_written += done.rows

    @property
    def closed(self) -> bool:
        """Closed (or aborted): it writes nothing more."""
        return self._closed

    def reserve_path(self) -> Path:
        """A final file name this sink will never use itself (for a compaction's output)."""
        final = self.directory / f"part-{self._next_index:05d}.parquet"
        self._next_index += 1
        return final

    def replaced(self, old: Sequence[Path], new: Sequence[Path], schema: pa.Schema) -> None:
        """A compaction (``asyncingest.state.compact``) merged committed files ``old`` into ``new``:
        unify-at-close rewrites ``new`` if the schema widens, and no longer opens ``old``.
        Call it from the thread that uses the sink."""
        self._merged_away.update(old)
        self._earlier = [p for p in self._earlier if p not in self._merged_away]
        self._earlier.extend(new)
        for path in new:
            self._file_schemas[path] = schema

    def _unify(self) -> None:
        """Rewrite this sink's files whose schema is older than the final one."""
        target = self._converter.arrow_schema()
        live = [p for p in [*self._earlier, *self._files] if p not in self._merged_away]
        for path in live:
            if same_schema(self._file_schemas[path], target):
                continue
            staging = _staging_path(path)
            with pq.ParquetWriter(staging, target, compression=self.options.compression) as out:
                for read in committed.row_groups(path):
                    group = conform(read, target)
                    out.write_table(group, row_group_size=max(1, group.num_rows))
            _publish(staging, path)
            self._file_schemas[path] = target

    def abort(self) -> None:
        """Give up after a failure (a full disk): close the open file quietly and delete
        every staging file; committed files stay as they are. The sink is closed after."""
        if self._open is not None:
            done, self._open = self._open, None
            with contextlib.suppress(Exception):  # it may fail again the same way
                done.writer.close()
        with contextlib.suppress(OSError):
            self._remove_stale()
        self._pending, self._pending_rows, self._closed = [], 0, True
        self._batches = []

    def _remove_stale(self) -> list[Path]:
        stale = [p for p in self.directory.iterdir() if _STAGING.fullmatch(p.name)]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def __repr__(self) -> str:
        current = self._open.final.name if self._open else None
        return (
            f"ParquetSink(name={self.name!r}, current={current!r}, "
            f"buffered_rows={self._pending_rows}, rows_written={self._rows_written}, "
            f"files={len(self._files)}, fields={len(self._converter.types)}"
            f"{', closed' if self._closed else ''})"
        )


def _staging_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.inprogress")


def _publish(staging: Path, final: Path) -> None:
    """Make a finished staging file visible under its final name, durably."""
    fsync_file(staging)
    crash_point("commit")
    os.replace(staging, final)
    fsync_dir(final.parent)


def _make_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    fsync_dir(directory.parent)  # make the new folder's entry durable too
