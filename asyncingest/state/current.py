"""The current table of an incremental endpoint (``merge: latest``): one row per primary key, the
newest version, rebuilt after each increment and published atomically.

Where it sits: each increment ``n`` of an endpoint lands in ``OUTPUT/<endpoint>/increment=<n>/``
(the engine's part). With ``merge: latest`` the engine then calls :func:`rebuild_current`, which
publishes ``OUTPUT/<endpoint>_current/``: a folder of ``part-NNNNN.parquet`` files that DuckDB
(``read_parquet('OUTPUT/contacts_current/*.parquet')``), ``pyarrow.dataset`` and polars read as
one table.

Which version of a key wins
    The one with the highest cursor: ``timestamp`` values are compared as instants (ISO 8601
    text with ``Z``, an offset or none, which is UTC; a column typed timestamp as is),
    ``epoch_s``, ``epoch_ms`` and ``integer`` numerically (digit strings too). A null or
    unreadable cursor ranks below every value. Equal cursors, a ``token`` cursor type or no
    ``cursor_field``: the later increment wins, and within one increment the later row (files
    in the order given, rows in file order). A version whose ``deleted_field`` is truthy (true,
    a non-zero number, any text but ``""``, ``false``, ``0``, ``no``) removes the key.
    ``replace=True`` (a full refresh): the increment alone is the truth; keys it does not hold
    are gone.

How (``current(n) = current(n-1) merged with increment n``)
    1. The increment's files are read whole (conformed to the united schema, below) and reduced
       to one winning row per key: a dict ``key -> (cursor, row)``. This is the only part held
       in memory, so **memory follows the size of the increment, not of the table**.
    2. The previous version is streamed batch by batch (``row_group_rows`` rows): a row whose
       key the increment does not touch is written through; one it does is kept only if its
       cursor is strictly higher (the increment's row is then stale and dropped), else dropped.
       Only the key column (and, for candidate rows, the cursor) is looked at in Python; the
       first key column is pre-filtered with ``pyarrow.compute.is_in``.
    3. The increment's winners that were not stale are appended.
    Every rebuild therefore reads and writes the whole table once (streamed), and the files are
    ``max_rows_per_file`` rows each (row groups of ``row_group_rows``), not one per increment.

    Deleted keys are kept as tombstones (the deleted version's row) beside the table, in the
    version's ``tombstones.parquet``, so an older version of the key arriving later (a lagging
    page) does not bring it back. With a ``token`` cursor or none, a later increment always wins and
    no tombstones are kept.

    A time cursor beyond ``future_limit`` (the run's start plus ``future_tolerance``: bad data,
    year 9999) ranks at the limit in the increment that brings it (it replaces the believable
    versions before it, as the API's latest) and like an unreadable one once it is in the
    table, so any later version replaces it: it cannot hold its key for good.

Schema
    The new version's schema is the union (:func:`asyncingest.sink.schema.union_schema`) of the
    previous version's and the increment files' schemas, as the sink widens them (new columns,
    int64 -> float64, new struct fields, conflicts to JSON text); older rows get nulls for a
    column added later. ``replace=True`` takes the increment's schema alone.

Atomic publication (readers only ever see a complete version)
    ``OUTPUT/<endpoint>_current`` is a symbolic link to the ``data`` folder of a hidden version
    folder (hidden from ``pyarrow.dataset`` discovery and from ``*`` globs)::

        OUTPUT/.<endpoint>_current.v<n>/data/part-NNNNN.parquet   the table (nothing else:
                                                                  polars refuses a folder of
                                                                  mixed files)
        OUTPUT/.<endpoint>_current.v<n>/tombstones.parquet        deleted keys (see above)
        OUTPUT/.<endpoint>_current.v<n>/manifest.json             the figures; written last

    A rebuild:

    1. deletes a leftover ``v<n>`` folder (a killed attempt), writes the new version into it,
       fsyncs every file, writes ``manifest.json`` and fsyncs the folders and ``OUTPUT``.
       Crash points ``current-partial`` (after the first file) and
       ``current-staged``: a kill leaves the old link, and the next call redoes the version.
    2. switches: a link ``.<endpoint>_current.tmp`` to the new folder is made and renamed over
       ``<endpoint>_current`` (``os.replace``: atomic), and ``OUTPUT`` is fsynced. This is the
       commit point. ``current-switched``: a kill leaves the new version published; the next
       call for ``n`` only cleans up.
    3. deletes every version folder but the new one and the one it replaced, which is kept
       until the next rebuild so a reader that resolved the old link a moment ago can finish.
       ``current-cleaned``.

    Why a link and not a rename of folders: a folder cannot be replaced by ``rename`` while it
    holds files, so renaming would need two steps (old away, new in) with a moment where no
    table is there; a link is replaced in one atomic step and costs no copy. Its target is
    relative, so the output folder can be moved or copied (``cp -r`` keeps links; ``rsync -a``
    too). The price: a filesystem without symbolic links (some Windows setups) is not
    supported.

Idempotent: called again for the same ``n`` after a kill at any point, it finishes (published
already: clean up and return the recorded figures; a partial ``v<n>``: delete and redo). The
engine asks :func:`current_version` whether a rebuild finished.

Revisions (``--retry-failed``)
    A retry reopens increment ``n`` after its table was published, and adds files to it. The
    engine then asks for *revision* ``r`` (1, 2, ... one per retry, kept in the state) of
    version ``n``: it is built exactly like a version, into ``.<endpoint>_current.v<n>.r<r>/``,
    as the published table merged with **all** of increment ``n``'s files (the ones already
    merged and the retry's). Merging rows already merged changes nothing (the same winner per
    key, the same ties to the later row, deletes kept as tombstones), so the result is what a
    single rebuild of ``n`` from all its files gives, and the commit protocol, the crash points
    and the idempotence are the version's: a kill before the switch leaves revision ``r - 1``
    published and the next call redoes ``r``; after it, the next call only cleans up.
    :func:`current_revision` names the published ``(version, revision)``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ..core.crashpoints import crash_point
from ..errors import StateCorrupt
from ..sink import committed
from ..sink.chunked import ChunkedWriter
from ..sink.durable import fsync_dir
from ..sink.parquet import safe_dir_name
from ..sink.schema import TYPES_KEY, UNDECIDED_TYPE, conform, union_schema

__all__ = [
    "CURSOR_TYPES",
    "CurrentResult",
    "CursorType",
    "LayoutOptions",
    "current_path",
    "current_revision",
    "current_version",
    "published_folder",
    "rebuild_current",
    "sweep_rows",
    "table_keys",
]

CursorType = Literal["timestamp", "epoch_s", "epoch_ms", "integer", "token"]
CURSOR_TYPES: Final[tuple[str, ...]] = ("timestamp", "epoch_s", "epoch_ms", "integer", "token")

SUFFIX: Final = "_current"
DATA: Final = "data"
TOMBSTONES: Final = "tombstones.parquet"
MANIFEST: Final = "manifest.json"
_PART: Final = re.compile(r"part-(\d+)\.parquet")
_FALSE_TEXT: Final = frozenset({"", "false", "0", "no"})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LOW: Final = (0, 0)  # the rank of a null or unreadable cursor: below every value


class LayoutOptions(Protocol):
    """How the current table's files are laid out: what ``SinkOptions`` and the compaction's
    ``CompactOptions`` both have."""

    @property
    def compression(self) -> str: ...
    @property
    def row_group_rows(self) -> int: ...
    @property
    def max_rows_per_file(self) -> int: ...


@dataclass(frozen=True)
class CurrentResult:
    """What a rebuild published (the same figures when a re-run finds it published)."""

    endpoint: str
    version: int
    """The increment the table is current up to."""
    path: Path
    """``OUTPUT/<endpoint>_current`` (the link readers open)."""
    rows: int
    """Rows (keys) in the table."""
    files: int
    upserted: int
    """Rows of the increment that became their key's current version."""
    deleted: int
    """Keys the increment deleted (its winning version had ``deleted_field`` set)."""
    stale: int
    """Rows of the increment older than the version already current (kept out)."""
    tombstones: int
    """Deleted keys remembered (hidden), so an older version cannot bring them back."""
    replaced: bool
    """A full refresh: the increment alone made the table."""
    revision: int = 0
    """Rebuilds of this version after a ``--retry-failed`` added files to it (0: none)."""


# --------------------------------------------------------------------------- reading


def current_path(output: Path, endpoint: str) -> Path:
    """``OUTPUT/<endpoint>_current``: where readers find the current table."""
    return Path(output) / safe_dir_name(endpoint + SUFFIX)


def _version_name(endpoint: str, version: int, revision: int = 0) -> str:
    name = f".{endpoint}{SUFFIX}.v{version}"
    return f"{name}.r{revision}" if revision else name


def _version_pattern(endpoint: str) -> str:
    """A version folder's name: groups 1 (version) and 2 (revision, absent for 0)."""
    return re.escape(f".{endpoint}{SUFFIX}.v") + r"(\d+)(?:\.r(\d+))?"


def current_version(output: Path, endpoint: str) -> int | None:
    """The increment the published current table is up to, or None when none is published.

    Raises :class:`~asyncingest.errors.StateCorrupt` when ``<endpoint>_current`` is there but
    not a link to a complete version folder (deleted by hand, or made by something else).
    """
    published = current_revision(output, endpoint)
    return None if published is None else published[0]


def current_revision(output: Path, endpoint: str) -> tuple[int, int] | None:
    """The published ``(version, revision)`` (revision 0 until a ``--retry-failed`` of that
    increment rebuilt it), or None; raises like :func:`current_version`."""
    link = current_path(output, endpoint)
    if not link.is_symlink():
        if link.exists():
            raise StateCorrupt(
                str(link),
                "this should be a link to the current table's version folder, but is not",
                "move it away; the next run publishes the current table again",
            )
        return None
    target = os.readlink(link)
    m = re.fullmatch(_version_pattern(endpoint) + "/" + DATA, target)
    if m is None or not (link.parent / target).parent.joinpath(MANIFEST).is_file():
        raise StateCorrupt(
            str(link),
            f"the current table's link points at {target!r}, which is not a complete version",
            "delete the link; the next run publishes the current table again",
        )
    return int(m[1]), int(m[2] or 0)


def published_folder(output: Path, endpoint: str) -> tuple[str, int] | None:
    """The published version's folder name (``.<endpoint>_current.v<n>[.r<r>]``) and its rows,
    or None when no table is published."""
    published = current_revision(output, endpoint)
    if published is None:
        return None
    name = _version_name(endpoint, *published)
    return name, int(_read_manifest(Path(output) / name)["rows"])


def table_keys(files: Sequence[Path], primary_key: tuple[str, ...]) -> set[tuple[Any, ...]]:
    """The primary keys of the rows of ``files`` (only the key columns are read)."""
    keys: set[tuple[Any, ...]] = set()
    for path in files:
        names = committed.read_schema(path).names
        columns = list(
            dict.fromkeys(k.split(".")[0] for k in primary_key if k.split(".")[0] in names)
        )
        for batch in _projected(path, columns, 65_536):
            keys.update(_keys(batch, primary_key))
    return keys


def sweep_rows(
    output: Path,
    folder: str,
    fields: Sequence[str],
    primary_key: tuple[str, ...],
    batch_size: int,
    skip: int,
) -> Iterator[tuple[list[dict[str, Any]], list[tuple[Any, ...]], int]]:
    """The rows of the current-table version ``folder`` (a name :func:`published_folder`
    gave), after the first ``skip``, in a fixed order (parts in order, rows in file order):
    ``(rows, keys, consumed)`` per batch of at most ``batch_size``, each row a dict of the
    top-level columns that ``fields`` (dotted paths) and ``primary_key`` name. Streamed: memory
    is one batch."""
    data = Path(output) / folder / DATA
    wanted = list(dict.fromkeys(f.split(".")[0] for f in [*fields, *primary_key]))
    seen = 0
    for path in _parts(data):
        rows_in_file = committed.describe(path)[0]
        if seen + rows_in_file <= skip:
            seen += rows_in_file
            continue
        names = committed.read_schema(path).names
        columns = [c for c in wanted if c in names]
        for batch in _projected(path, columns, batch_size):
            if seen + batch.num_rows <= skip:
                seen += batch.num_rows
                continue
            if seen < skip:
                batch = batch.slice(skip - seen)
                seen = skip
            seen += batch.num_rows
            yield batch.to_pylist(), _keys(batch, primary_key), batch.num_rows


def _projected(path: Path, columns: list[str], batch_size: int) -> Iterator[pa.Table]:
    """``path``'s rows as tables of ``columns`` only, at most ``batch_size`` rows each (read as
    every committed file is: a damaged one is an environment failure naming it)."""
    for batch in committed.batches(path, batch_size):
        yield batch.select(columns)


def _read_manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((folder / MANIFEST).read_bytes())
    return data


def _parts(folder: Path) -> list[Path]:
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _PART.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


# --------------------------------------------------------------------------- the rebuild


def rebuild_current(
    output: Path,
    endpoint: str,
    increment: int,
    increment_files: Sequence[Path],
    *,
    primary_key: tuple[str, ...],
    cursor_field: str | None,
    cursor_type: str,
    deleted_field: str | None,
    replace: bool,
    options: LayoutOptions,
    revision: int = 0,
    future_limit: float | None = None,
) -> CurrentResult:
    """Publish ``OUTPUT/<endpoint>_current`` at version ``increment``: the previous version
    merged with ``increment_files`` (see the module docstring for the rules, the memory bound
    and the commit protocol). Blocking; run it in a thread.

    ``increment_files``: the increment's committed Parquet files in order (normally increment
    ``n``'s; after a version that was never built, those of every increment since the
    published one, oldest first). ``primary_key``, ``cursor_field`` and ``deleted_field`` may
    be dotted paths into struct columns. ``revision`` > 0: a rebuild of version ``increment``
    after a retry added files to it (module docstring, "Revisions"): the published table
    merged with all of them. Idempotent for one ``(increment, revision)``; one lower than the
    published one raises ``ValueError``. ``future_limit``: seconds since the epoch; a time
    cursor (``timestamp``, ``epoch_s``, ``epoch_ms``) later than it is bad data: it ranks at
    the limit among the increment's rows, and below every value among the previous version's
    (module docstring, "Which version of a key wins").
    """
    if not primary_key:
        raise ValueError("a current table needs a primary_key")
    if cursor_type not in CURSOR_TYPES:
        raise ValueError(f"cursor_type must be one of {CURSOR_TYPES}, got {cursor_type!r}")
    if increment < 0:
        raise ValueError(f"increment must be >= 0, got {increment}")
    if revision < 0:
        raise ValueError(f"revision must be >= 0, got {revision}")
    output = Path(output)
    link = current_path(output, endpoint)
    target = (increment, revision)
    published = current_revision(output, endpoint)
    if published is not None and published > target:
        raise ValueError(
            f"{link.name} is already at increment {published[0]} (revision {published[1]}); "
            f"cannot rebuild {increment} (revision {revision})"
        )
    if published == target:
        _clean_up(output, endpoint, target, keep=None)
        return _result_from(output, endpoint, target)
    previous = None if published is None else output / _version_name(endpoint, *published)
    folder = output / _version_name(endpoint, increment, revision)
    if folder.exists() or folder.is_symlink():
        shutil.rmtree(folder)  # a killed attempt at this version: redo it
        fsync_dir(output)
    folder.mkdir()
    fsync_dir(output)
    try:
        figures = _Merge(
            primary_key=primary_key,
            cursor_field=None if cursor_type == "token" else cursor_field,
            cursor_type=cursor_type,
            deleted_field=deleted_field,
            options=options,
            future_limit=future_limit,
        ).run(folder, previous if not replace else None, increment_files)
        fsync_dir(folder / DATA)
        manifest = {
            "endpoint": endpoint,
            "version": increment,
            "revision": revision,
            "replaced": replace,
            "primary_key": list(primary_key),
            "cursor_field": cursor_field,
            "cursor_type": cursor_type,
            "deleted_field": deleted_field,
            **figures,
        }
        _write_durably(folder / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # never published: nothing else changed
        raise
    crash_point("current-staged")
    _switch(output, link, f"{folder.name}/{DATA}")
    crash_point("current-switched")
    _clean_up(output, endpoint, target, keep=published)
    crash_point("current-cleaned")
    return _result_from(output, endpoint, target)


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _switch(output: Path, link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (a sibling folder) in one atomic step, durably."""
    tmp = output / f".{link.name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(output)


def _clean_up(
    output: Path, endpoint: str, version: tuple[int, int], keep: tuple[int, int] | None
) -> None:
    """Delete every version folder but ``version`` and ``keep`` (the one it replaced, which a
    reader may still be reading), and a leftover temporary link. When ``keep`` is None (a
    re-run), the newest older version is kept."""
    versions = dict(_iter_versions(output, endpoint))
    if keep is None:
        keep = max((v for v in versions if v < version), default=None)
    removed = False
    for v, path in versions.items():
        if v not in (version, keep):
            shutil.rmtree(path, ignore_errors=True)
            removed = True
    tmp = output / f".{endpoint}{SUFFIX}.tmp"
    if tmp.is_symlink():
        tmp.unlink()
        removed = True
    if removed:
        fsync_dir(output)


def _result_from(output: Path, endpoint: str, version: tuple[int, int]) -> CurrentResult:
    m = _read_manifest(output / _version_name(endpoint, *version))
    return CurrentResult(
        endpoint=endpoint,
        version=version[0],
        path=current_path(output, endpoint),
        rows=m["rows"],
        files=m["files"],
        upserted=m["upserted"],
        deleted=m["deleted"],
        stale=m["stale"],
        tombstones=m["tombstones"],
        replaced=m["replaced"],
        revision=m.get("revision", 0),
    )


# --------------------------------------------------------------------------- the merge


@dataclass(frozen=True)
class _Figures:
    rows: int
    files: int
    upserted: int
    deleted: int
    stale: int
    tombstones: int


class _Merge:
    """One rebuild's merge: the rules of the module docstring, steps 1-3."""

    def __init__(
        self,
        *,
        primary_key: tuple[str, ...],
        cursor_field: str | None,
        cursor_type: str,
        deleted_field: str | None,
        options: LayoutOptions,
        future_limit: float | None = None,
    ) -> None:
        self.key = primary_key
        self.cursor_field = cursor_field
        self.cursor_type = cursor_type
        self.deleted_field = deleted_field
        self.options = options
        self.future_limit = future_limit  # seconds since the epoch, or None
        # Without a cursor the later increment always wins: nothing to remember of deletes.
        self.keep_tombstones = cursor_field is not None

    def run(
        self, folder: Path, previous: Path | None, increment_files: Sequence[Path]
    ) -> dict[str, int]:
        before = [] if previous is None else _parts(previous / DATA)
        tomb_before = None if previous is None else previous / TOMBSTONES
        if tomb_before is not None and not tomb_before.exists():
            tomb_before = None
        schemas = [committed.read_schema(p) for p in [*before[:1], *increment_files]]
        if not schemas:  # no rows yet at all: the key columns, undecided, for every reader
            names = dict.fromkeys(k.split(".")[0] for k in self.key)
            metadata = {TYPES_KEY: orjson.dumps(dict.fromkeys(names))}
            schemas = [pa.schema([(n, UNDECIDED_TYPE) for n in names], metadata=metadata)]
        schema = union_schema(schemas)
        for column in self.key:
            if column.split(".")[0] not in schema.names:
                raise ValueError(f"primary_key field {column!r} is in no file of the increment")

        # 1. The increment, reduced to one winning row per key.
        table = _read_all(increment_files, schema)
        keys = _keys(table, self.key)
        ranks = self._ranks(table, range(table.num_rows))
        winners: dict[tuple[Any, ...], tuple[Any, int]] = {}
        for row, (key, rank) in enumerate(zip(keys, ranks, strict=True)):
            best = winners.get(key)
            if best is None or rank >= best[0]:  # equal: the later row
                winners[key] = (rank, row)
        stale: set[tuple[Any, ...]] = set()  # keys whose previous version is newer
        first: pa.Array | None = None  # the first key column's values, for pc.is_in
        if winners:
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                first = pa.array([k[0] for k in winners], type=_key_type(schema, self.key[0]))

        # 2. The previous version, streamed.
        (folder / DATA).mkdir()
        parts = _data_writer(folder / DATA, schema, self.options)
        tombs = _tombstone_writer(folder, schema, self.options) if self.keep_tombstones else None
        try:
            for path in before:
                for batch in committed.batches(path, self.options.row_group_rows):
                    parts.add(self._survivors(conform(batch, schema), winners, first, stale))
            if tomb_before is not None and tombs is not None:
                for batch in committed.batches(tomb_before, self.options.row_group_rows):
                    tombs.add(self._survivors(conform(batch, schema), winners, first, stale))

            # 3. The increment's winners, in increment order.
            fresh = sorted(row for key, (_, row) in winners.items() if key not in stale)
            taken = table.take(pa.array(fresh, type=pa.int64()))
            deleted = self._deleted(taken)
            live = taken.filter(pa.array([not d for d in deleted], type=pa.bool_()))
            parts.add(live)
            if tombs is not None:
                tombs.add(taken.filter(pa.array(deleted, type=pa.bool_())))
            parts.close(at_least_one_file=True)
            rows, files = parts.rows, len(parts.files)
            tombstones = 0
            if tombs is not None:
                tombs.close()
                tombstones = tombs.rows
        except BaseException:
            parts.abort()
            if tombs is not None:
                tombs.abort()
            raise
        figures = _Figures(
            rows=rows,
            files=files,
            upserted=live.num_rows,
            deleted=sum(deleted),
            stale=len(stale),
            tombstones=tombstones,
        )
        return asdict(figures)

    def _survivors(
        self,
        batch: pa.Table,
        winners: dict[tuple[Any, ...], tuple[Any, int]],
        first: pa.Array | None,
        stale: set[tuple[Any, ...]],
    ) -> pa.Table:
        """The rows of a previous version's batch that stay: keys the increment does not touch,
        and those whose version is newer than the increment's (whose key is then stale)."""
        if not winners or batch.num_rows == 0:
            return batch
        rows = list(range(batch.num_rows))
        if first is not None:
            column = _column(batch, self.key[0])
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            with contextlib.suppress(
                pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError
            ):
                candidate = pc.fill_null(pc.is_in(column, value_set=first), False)
                rows = pc.indices_nonzero(candidate).to_pylist()
        if not rows:
            return batch
        sub = batch.take(pa.array(rows, type=pa.int64()))
        keys = _keys(sub, self.key)
        ranks = (
            None
            if self.cursor_field is None
            else self._ranks(sub, range(sub.num_rows), previous=True)
        )
        drop: list[int] = []
        for i, key in enumerate(keys):
            won = winners.get(key)
            if won is None:
                continue
            if ranks is not None and ranks[i] > won[0]:  # strictly newer: the old row stays
                stale.add(key)
            else:
                drop.append(rows[i])
        if not drop:
            return batch
        mask = [True] * batch.num_rows
        for r in drop:
            mask[r] = False
        return batch.filter(pa.array(mask, type=pa.bool_()))

    def _ranks(self, table: pa.Table, rows: range, previous: bool = False) -> list[Any]:
        """Each row's cursor as a comparable ``(1, value)``, or ``(0, 0)`` (null, unreadable, no
        cursor): equal ranks fall to the later row or increment. A time cursor beyond
        ``future_limit`` ranks at the limit in the increment (newer than every believable
        version before it) and low in the ``previous`` version (older than every version
        after it)."""
        if self.cursor_field is None:
            return [_LOW] * len(rows)
        column = _column(table, self.cursor_field)
        if pa.types.is_timestamp(column.type):
            column = pc.cast(column, pa.timestamp("us", tz="UTC"))
            values = pc.cast(column, pa.int64()).to_pylist()
            ranks = [_LOW if v is None else (1, v) for v in values]
            return self._believable(ranks, 1_000_000, previous)
        read = _instant if self.cursor_type == "timestamp" else _number
        ranks = [_rank(read, v) for v in column.to_pylist()]
        scale = {"timestamp": 1_000_000, "epoch_s": 1, "epoch_ms": 1000}.get(self.cursor_type)
        return ranks if scale is None else self._believable(ranks, scale, previous)

    def _believable(self, ranks: list[Any], scale: int, previous: bool) -> list[Any]:
        """``ranks`` with those beyond ``future_limit`` (in units of ``1/scale`` s) at the
        limit, or low for a ``previous`` version's rows."""
        if self.future_limit is None:
            return ranks
        limit = self.future_limit * scale
        beyond = _LOW if previous else (1, limit)
        return [beyond if r is not _LOW and r[1] > limit else r for r in ranks]

    def _deleted(self, table: pa.Table) -> list[bool]:
        if self.deleted_field is None or table.num_rows == 0:
            return [False] * table.num_rows
        return [_truthy(v) for v in _column(table, self.deleted_field).to_pylist()]


def _rank(read: Any, value: Any) -> Any:
    if value is None:
        return _LOW
    try:
        return (1, read(value))
    except (ValueError, TypeError, ArithmeticError):
        return _LOW


def _instant(value: Any) -> int:
    """An ISO 8601 instant as UTC microseconds (no zone: UTC); a datetime as is."""
    if isinstance(value, datetime):
        t = value
    else:
        text = str(value).strip()
        m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)", text)
        if m is not None:  # Python reads at most 6 fractional digits; nanoseconds are cut
            text = f"{m[1]}.{m[2][:6].ljust(6, '0')}{m[3]}"
        t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _number(value: Any) -> int | float | Decimal:
    """An epoch or integer cursor: numbers as they are, digit text as an integer."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a cursor")
    if isinstance(value, int | float | Decimal):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_TEXT
    return bool(value)


def _column(table: pa.Table, path: str) -> pa.ChunkedArray | pa.Array:
    """A column by dotted path into structs; all nulls when it is not there."""
    name, *rest = path.split(".")
    if name not in table.schema.names:
        return pa.nulls(table.num_rows)
    column: Any = table.column(name)
    for part in rest:
        if not pa.types.is_struct(column.type) or column.type.get_field_index(part) < 0:
            return pa.nulls(table.num_rows)
        column = pc.struct_field(column, part)
    return column


def _key_type(schema: pa.Schema, path: str) -> pa.DataType:
    name, *rest = path.split(".")
    t = schema.field(name).type
    for part in rest:
        if not pa.types.is_struct(t) or t.get_field_index(part) < 0:
            return pa.null()
        t = t.field(part).type
    return t


def _keys(table: pa.Table, key: tuple[str, ...]) -> list[tuple[Any, ...]]:
    columns = [_column(table, k).to_pylist() for k in key]
    return list(zip(*columns, strict=True)) if columns else []


def _read_all(files: Sequence[Path], schema: pa.Schema) -> pa.Table:
    tables = [conform(t, schema) for path in files for t in committed.row_groups(path)]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def _data_writer(folder: Path, schema: pa.Schema, options: LayoutOptions) -> ChunkedWriter:
    """Rows into ``part-NNNNN.parquet`` files of ``max_rows_per_file`` rows (row groups of
    ``row_group_rows``), each fsynced when closed; the first one closed is the
    ``current-partial`` crash point. Close it with ``at_least_one_file``, so readers always
    find the schema."""
    numbers = itertools.count()
    first = folder / "part-00000.parquet"

    def after_close(path: Path) -> None:
        if path == first:
            crash_point("current-partial")

    return ChunkedWriter(
        schema,
        compression=options.compression,
        row_group_rows=options.row_group_rows,
        max_rows_per_file=options.max_rows_per_file,
        next_path=lambda: folder / f"part-{next(numbers):05d}.parquet",
        after_close=after_close,
    )


def _tombstone_writer(folder: Path, schema: pa.Schema, options: LayoutOptions) -> ChunkedWriter:
    """The deleted versions, in one file beside the table (fsynced), only when there are any."""
    return ChunkedWriter(
        schema,
        compression=options.compression,
        row_group_rows=options.row_group_rows,
        max_rows_per_file=None,
        next_path=lambda: folder / TOMBSTONES,
    )


def _iter_versions(output: Path, endpoint: str) -> Iterator[tuple[tuple[int, int], Path]]:
    pattern = re.compile(_version_pattern(endpoint))
    for p in output.iterdir():
        m = pattern.fullmatch(p.name)
        if m is not None:
            yield (int(m[1]), int(m[2] or 0)), p
