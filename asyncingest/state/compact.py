"""Compaction: an output folder's many small committed Parquet files merged into few, exactly once.

Every checkpoint commits a file per endpoint, so a long run leaves many small files. Files
smaller than ``output.min_rows_per_file`` are "small". Two moments merge them into files of
``max_rows_per_file`` rows:

- during the run (:func:`compact_running`, after a checkpoint): a folder's small files, once
  they add up to ``min_rows_per_file`` rows, so a run killed in its fifth hour has not left
  thousands; it runs on the engine's one file thread, serialized with the sinks, takes its
  file names from the folder's sink and tells the sink which files it replaced;
- at the end (:func:`compact_folders`, after the final checkpoint, and again on an output
  found complete): all of them, so at most one file per folder stays small.

Where it sits in the data flow: docs/architecture.md, "Checkpoints".

The commit protocol (each step is a named crash point, see tests/test_compact.py):

1. **Stage.** The merged files are written as ``.part-NNNNN.parquet.compact`` (hidden from
   ``pyarrow.dataset`` and from ``*.parquet`` globs), one row group at a time, fsynced, and the
   folder fsynced. ``compact-staged``: a kill here leaves the state naming the old files; the
   next start deletes the staging files.
2. **Commit.** One atomic ``state.json`` replace names the new files instead of the old ones
   and records the step as pending (staging -> final names, the files replaced). This is the
   commit point. ``compact-state``: from here on the next start finishes the step.
3. **Delete the old files** (folder fsynced). ``compact-deleted``.
4. **Rename** each staging file to its final name (folder fsynced). ``compact-renamed``.
5. The pending record is cleared with the next state save.

Deleting before renaming means a reader scanning the folder while step 3-4 runs may miss the
rows being moved for a moment, but never sees a row twice. Once the run has finished, the
folder holds exactly the files the state names.

Memory: files are streamed (``iter_batches``) into the open writer; about one row group is
held. The file's schema, with the field types asyncingest records in its metadata (read by a
resume), is kept; only files with the same schema are merged together (at the end of a run the
sink has already given each folder one schema). Compression and ``row_group_rows`` are those of
the config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from ..config.models import OutputConfig
from ..core.crashpoints import crash_point
from ..core.result import Compaction
from ..errors import StateCorrupt
from ..sink import committed
from ..sink.chunked import ChunkedWriter
from ..sink.durable import fsync_dir
from ..sink.parquet import ParquetSink
from .checkpoint import EndpointState, RunState, save_state

__all__ = ["CommittedFile", "CompactOptions", "compact_folders", "compact_running", "recover"]

_PART: Final = re.compile(r"part-(\d+)\.parquet")
_STAGED: Final = re.compile(r"\.part-\d+\.parquet\.compact")


@dataclass(frozen=True)
class CompactOptions:
    """Where merged files go and how they are laid out."""

    compression: str
    row_group_rows: int
    max_rows_per_file: int
    min_rows_per_file: int

    @classmethod
    def from_config(cls, output: OutputConfig) -> CompactOptions:
        """The compaction settings of an ``output`` section."""
        return cls(
            compression=output.compression,
            row_group_rows=output.row_group_rows,
            max_rows_per_file=output.max_rows_per_file,
            min_rows_per_file=output.min_rows,
        )


@dataclass(frozen=True)
class CommittedFile:
    """A committed Parquet file of a folder: its name, rows and schema."""

    name: str
    rows: int
    schema: pa.Schema


# --------------------------------------------------------------------------- resume


def recover(output: Path, state: RunState) -> bool:
    """Finish every compaction the state names as pending; delete unnamed staging files.

    Run when a run starts, before uncommitted files are discarded. Returns whether the state
    changed (the caller saves it; until then finishing again is harmless).
    """
    changed = False
    for folder, es in state.endpoints.items():
        directory = state.folder_path(output, folder)
        if es.compaction is not None:
            _finish(directory, es.compaction)
            es.compaction = None
            changed = True
        if directory.is_dir():
            stale = [p for p in directory.iterdir() if _STAGED.fullmatch(p.name)]
            for p in stale:
                p.unlink(missing_ok=True)
            if stale:
                fsync_dir(directory)
    return changed


def _finish(directory: Path, pending: dict[str, Any]) -> None:
    """Steps 3 and 4 of a committed compaction; safe to repeat after a kill at any point."""
    for name in pending["replaced"]:
        (directory / name).unlink(missing_ok=True)
    fsync_dir(directory)
    crash_point("compact-deleted")
    for staging_name, final_name in pending["staged"]:
        staging, final = directory / staging_name, directory / final_name
        if staging.exists():
            os.replace(staging, final)
        elif not final.exists():
            raise StateCorrupt(
                str(final),
                f"the checkpoint names this compacted file, but neither it nor its staging "
                f"file {staging_name} exists",
                "the output is damaged; --fresh starts over",
            )
    fsync_dir(directory)
    crash_point("compact-renamed")


# --------------------------------------------------------------------------- compaction


def compact_folders(
    output: Path, state: RunState, folders: Iterable[str], options: CompactOptions
) -> list[Compaction]:
    """Merge each folder's small committed files, committing each folder through the state.

    Blocking (run it in a thread). The state must not change meanwhile (the engine calls this
    after its final checkpoint, when the sinks are closed). Folders with at most one small
    file are left alone.
    """
    done: list[Compaction] = []
    for folder in folders:
        es = state.endpoints.get(folder)
        if es is None or len(es.files) < 2:
            continue
        merged = _compact_folder(output, state, folder, es, options, enough=0)
        if merged is not None:
            done.append(merged.report)
    if done:
        save_state(output, state)  # clears the last folder's pending record
    return done


def compact_running(
    output: Path,
    state: RunState,
    folder: str,
    options: CompactOptions,
    sink: ParquetSink,
    known: dict[str, CommittedFile],
) -> Compaction | None:
    """During a run: merge a folder's small committed files once they add up to
    ``min_rows_per_file`` rows, so a long run killed in its fifth hour has not left thousands.

    Call it on the thread that uses ``sink`` (names come from it, and it is told which files
    were replaced), right after a checkpoint saved ``state``; nothing else may change the state
    meanwhile. ``known`` caches the files' descriptions between calls, so a checkpoint opens
    only new files: while the sink is open, committed files do not change and names are never
    reused. Once the sink is closed (its unify may have rewritten files to a wider schema)
    the folder waits for the end-of-run compaction. The pending record is saved with the next
    checkpoint.
    """
    es = state.endpoints.get(folder)
    if es is None or len(es.files) < 2 or sink.closed:
        return None
    merged = _compact_folder(
        output,
        state,
        folder,
        es,
        options,
        enough=options.min_rows_per_file,
        names=iter(sink.reserve_path, None),
        known=known,
    )
    if merged is None:
        return None
    directory = state.folder_path(output, folder)
    for old, new, schema in merged.groups:
        sink.replaced([directory / n for n in old], [directory / n for n in new], schema)
        for name in old:
            known.pop(name, None)
    return merged.report


@dataclass(frozen=True)
class _Merged:
    report: Compaction
    groups: list[tuple[list[str], list[str], pa.Schema]]  # replaced, made, their schema


def _compact_folder(
    output: Path,
    state: RunState,
    folder: str,
    es: EndpointState,
    options: CompactOptions,
    *,
    enough: int,
    names: Iterator[Path] | None = None,
    known: dict[str, CommittedFile] | None = None,
) -> _Merged | None:
    directory = state.folder_path(output, folder)
    small = _small_files(directory, es.files, options.min_rows_per_file, known)
    groups = [g for g in plan(small, options.min_rows_per_file) if sum(f.rows for f in g) >= enough]
    if not groups:
        return None
    before = len(es.files)
    names = names or _names(directory, es.files)
    staged: list[tuple[str, str]] = []
    merges: list[tuple[list[str], list[str], pa.Schema]] = []
    try:
        for group in groups:
            made = _merge(directory, group, options, names)
            staged.extend((s.name, f.name) for s, f in made)
            merges.append(([f.name for f in group], [f.name for _, f in made], group[0].schema))
        fsync_dir(directory)
    except BaseException:
        for staging_name, _ in staged:  # not committed: the old files stay, nothing else
            (directory / staging_name).unlink(missing_ok=True)
        raise
    crash_point("compact-staged")

    replaced = [name for old, _, _ in merges for name in old]
    gone = set(replaced)
    es.files = [f for f in es.files if f not in gone] + [final for _, final in staged]
    es.compaction = {"staged": [list(p) for p in staged], "replaced": replaced}
    save_state(output, state)  # the commit point
    crash_point("compact-state")
    _finish(directory, es.compaction)
    es.compaction = None  # saved with the next commit or checkpoint
    rows = sum(f.rows for g in groups for f in g)
    return _Merged(Compaction(folder, len(es.files), before, rows), merges)


def plan(files: list[CommittedFile], min_rows: int) -> list[list[CommittedFile]]:
    """Groups of files to merge: those under ``min_rows`` rows, by schema, two or more each."""
    by_schema: list[list[CommittedFile]] = []
    for f in files:
        if f.rows >= min_rows:
            continue
        for group in by_schema:
            if group[0].schema.equals(f.schema, check_metadata=True):
                group.append(f)
                break
        else:
            by_schema.append([f])
    return [g for g in by_schema if len(g) > 1]


def _small_files(
    directory: Path, files: list[str], min_rows: int, known: dict[str, CommittedFile] | None
) -> list[CommittedFile]:
    """The committed files under ``min_rows`` rows, described (from ``known`` if given)."""
    out = []
    for name in files:
        described = known.get(name) if known is not None else None
        if described is None:
            described = _describe(directory, name)
            if known is not None:
                known[name] = described
        if described.rows < min_rows:
            out.append(described)
    return out


def _describe(directory: Path, name: str) -> CommittedFile:
    rows, schema = committed.describe(directory / name)  # a damaged file: StateCorrupt
    return CommittedFile(name, rows, schema)


def _names(directory: Path, committed: list[str]) -> Iterator[Path]:
    """Final names for merged files: numbered after every ``part-N`` in the folder or state."""
    taken = [p.name for p in directory.iterdir()] + committed
    numbers = [int(m[1]) for n in taken if (m := _PART.fullmatch(n))]
    n = 1 + max(numbers, default=-1)
    while True:
        yield directory / f"part-{n:05d}.parquet"
        n += 1


def _merge(
    directory: Path, group: list[CommittedFile], options: CompactOptions, names: Iterator[Path]
) -> list[tuple[Path, Path]]:
    """Stream ``group`` into staging files of up to ``max_rows_per_file`` rows, fsynced.

    Returns (staging, final) per file made. Staging names are the final ones hidden:
    ``.part-NNNNN.parquet.compact``."""
    made: list[tuple[Path, Path]] = []

    def next_staging() -> Path:
        final = next(names)
        staging = final.with_name(f".{final.name}.compact")
        made.append((staging, final))
        return staging

    out = ChunkedWriter(
        group[0].schema,
        compression=options.compression,
        row_group_rows=options.row_group_rows,
        max_rows_per_file=options.max_rows_per_file,
        next_path=next_staging,
    )
    try:
        for f in group:
            for table in committed.batches(directory / f.name, options.row_group_rows):
                out.add(table)
        out.close()
        return made
    except BaseException:
        out.abort()
        for staging, _ in made:
            staging.unlink(missing_ok=True)
        raise
