"""Ids for fan-out, streamed from a CSV, JSONL or Parquet column in chunks.

Only one chunk is in memory at a time, so a file of millions of ids costs what one chunk
costs. Each id comes with its row number in the file (0-based, data rows only), which is
what a checkpoint can later record compactly as ranges.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError, Problem
from .models import FromFile

CHUNK = 2_000


def iter_ids(spec: FromFile, chunk: int = CHUNK) -> Iterator[list[tuple[int, Any]]]:
    """Yield lists of ``(row_number, id)``; rows with an empty id are skipped."""
    path = Path(spec.path)
    if not path.is_file():
        raise ConfigError(spec.path, [Problem("from_file.path", "input file not found")])
    fmt = spec.file_format
    if fmt == "csv":
        yield from _csv(path, spec, chunk)
    elif fmt == "jsonl":
        yield from _jsonl(path, spec, chunk)
    else:
        yield from _parquet(path, spec, chunk)


def iter_id_rows(
    spec: FromFile, chunk: int = CHUNK
) -> Iterator[list[tuple[int, Any, dict[str, Any]]]]:
    """Like :func:`iter_ids`, with each id's ``copy`` fields (JSONL only; a missing field is
    None): ``(row_number, id, {field: value})``."""
    path = Path(spec.path)
    if not path.is_file():
        raise ConfigError(spec.path, [Problem("from_file.path", "input file not found")])
    out: list[tuple[int, Any, dict[str, Any]]] = []
    for line_no, obj in _jsonl_objects(path, spec):
        value = obj.get(spec.column)
        if value is not None and value != "":
            out.append((line_no, value, {k: obj.get(k) for k in spec.copy_fields}))
            if len(out) >= chunk:
                yield out
                out = []
    if out:
        yield out


def check_ids_file(spec: FromFile) -> None:
    """Fail before the run starts if the file is missing or lacks the column."""
    for _chunk in iter_ids(spec, chunk=1):
        return


def count_ids(spec: FromFile) -> int | None:
    """Data rows in an input file, cheaply: Parquet metadata, or newlines counted in binary
    chunks (CSV minus its header). Quoted newlines and blank lines make CSV/JSONL counts
    approximate (they feed progress bars and estimates); ``None`` when unreadable."""
    if spec.file_format == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(spec.path).metadata.num_rows)
        except Exception:
            return None
    try:
        with Path(spec.path).open("rb") as fh:
            lines, last = 0, b"\n"
            while chunk := fh.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError:
        return None
    if last != b"\n":
        lines += 1  # a last line without a newline
    return max(0, lines - 1) if spec.file_format == "csv" else lines


def _csv(path: Path, spec: FromFile, chunk: int) -> Iterator[list[tuple[int, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        names = [h.strip() for h in header]
        if spec.column not in names:
            raise ConfigError(
                spec.path,
                [
                    Problem(
                        "from_file.column",
                        f"no column '{spec.column}' (columns: {', '.join(names)})",
                    )
                ],
            )
        col = names.index(spec.column)
        out: list[tuple[int, Any]] = []
        for row_no, row in enumerate(reader):
            if col < len(row) and row[col].strip():
                out.append((row_no, row[col].strip()))
                if len(out) >= chunk:
                    yield out
                    out = []
        if out:
            yield out


def _jsonl_objects(path: Path, spec: FromFile) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for each JSON object line; blank lines and non-objects are
    skipped, invalid JSON is a :class:`ConfigError` naming the line."""
    with path.open("rb") as fh:
        for line_no, line in enumerate(io.BufferedReader(fh)):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(
                    spec.path, [Problem(f"line {line_no + 1}", f"invalid JSON: {exc}")]
                ) from None
            if isinstance(obj, dict):
                yield line_no, obj


def _jsonl(path: Path, spec: FromFile, chunk: int) -> Iterator[list[tuple[int, Any]]]:
    out: list[tuple[int, Any]] = []
    for line_no, obj in _jsonl_objects(path, spec):
        value = obj.get(spec.column)
        if value is not None and value != "":
            out.append((line_no, value))
            if len(out) >= chunk:
                yield out
                out = []
    if out:
        yield out


def _parquet(path: Path, spec: FromFile, chunk: int) -> Iterator[list[tuple[int, Any]]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if spec.column not in pf.schema_arrow.names:
        raise ConfigError(
            spec.path,
            [
                Problem(
                    "from_file.column",
                    f"no column '{spec.column}' (columns: {', '.join(pf.schema_arrow.names)})",
                )
            ],
        )
    row_no = 0
    for batch in pf.iter_batches(batch_size=chunk, columns=[spec.column]):
        values = batch.column(0).to_pylist()
        out = [(row_no + i, v) for i, v in enumerate(values) if v is not None and v != ""]
        row_no += len(values)
        if out:
            yield out
