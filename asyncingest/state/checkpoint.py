"""Checkpoint state: what is durable, so a killed run resumes without gaps or duplicates.

Layout under the output directory::

    OUTPUT/_asyncingest/state.json          the state (atomic: temp file, fsync, rename, dir fsync)
    OUTPUT/_asyncingest/jobs/<child>.jsonl  journal of child jobs made from parent records
    OUTPUT/_asyncingest/runs/<run-id>.json  one report per run
    OUTPUT/<endpoint>/part-NNNNN.parquet    data; only files the state names survive a resume
    OUTPUT/_dead_letter/<endpoint>/...      truncated on resume to the size the state names

A *job* is one walk of an endpoint for one binding, numbered: the root walk is 0, an input
file's job is its row number, a child's job is its line in the journal. The state keeps the
done job numbers as ranges (:class:`RangeSet`), the next request of walks that are part way
through (per page), the committed Parquet files, and the committed lengths of the journals
and dead-letter files. See docs/architecture.md ("Checkpoints") for why a state written at a
writer barrier only ever names durable work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from yarl import URL

from ..core.crashpoints import crash_point
from ..core.json import dumps as json_dumps
from ..core.json import loads as json_loads
from ..core.request import Request
from ..errors import state_corrupt
from ..sink.deadletter import FOLDER as DEAD_LETTER_FOLDER
from ..sink.durable import fsync_dir
from .increments import PARTITION, Increment, partition_name
from .rangeset import RangeSet

STATE_FOLDER = "_asyncingest"
STATE_VERSION = 1


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        crash_point("state")
        os.replace(tmp, path)
    except BaseException:  # a full disk: leave the old file, and no half-written temp file
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# --------------------------------------------------------------------------- requests


def request_to_json(r: Request) -> dict[str, Any]:
    """A request as JSON data for the state (a part-way walk's next request)."""
    return {
        "method": r.method,
        "url": str(r.url),
        "params": [list(p) for p in r.params],
        "body": r.json_body,
        "page": r.page,
        "state": r.state,
    }


def request_from_json(d: dict[str, Any]) -> Request:
    """The inverse of :func:`request_to_json`."""
    return Request(
        method=d["method"],
        url=URL(d["url"], encoded=True),
        params=tuple((str(k), str(v)) for k, v in d["params"]),
        json_body=d["body"],
        page=int(d["page"]),
        state=d["state"],
    )


# --------------------------------------------------------------------------- state


@dataclass
class EndpointState:
    """One endpoint's checkpoint: committed files, done jobs as ranges, part-way walks' next
    requests, committed journal and dead-letter lengths, finished or not, and a compaction
    committed but not yet finished.
    """

    files: list[str] = field(default_factory=list)
    done: RangeSet = field(default_factory=RangeSet)
    partial: dict[int, dict[str, Any]] = field(default_factory=dict)  # job -> next request
    journal_lines: int = 0  # committed child-job journal (this endpoint's own jobs)
    journal_bytes: int = 0
    dead_letter_bytes: int = 0
    finished: bool = False
    # A compaction committed but not finished (asyncingest.state.compact): hidden staging name ->
    # final name of the merged files, and the files they replace.
    compaction: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """This state as JSON-ready data (the form :meth:`from_json` reads)."""
        return {
            "files": self.files,
            "done": self.done.ranges(),
            "partial": {str(k): v for k, v in self.partial.items()},
            "journal_lines": self.journal_lines,
            "journal_bytes": self.journal_bytes,
            "dead_letter_bytes": self.dead_letter_bytes,
            "finished": self.finished,
            "compaction": self.compaction,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EndpointState:
        """The state :meth:`to_json` wrote."""
        return cls(
            files=list(d["files"]),
            done=RangeSet(tuple(r) for r in d["done"]),
            partial={int(k): v for k, v in d["partial"].items()},
            journal_lines=int(d["journal_lines"]),
            journal_bytes=int(d["journal_bytes"]),
            dead_letter_bytes=int(d["dead_letter_bytes"]),
            finished=bool(d["finished"]),
            compaction=d.get("compaction"),
        )


@dataclass
class RunState:
    """The whole checkpoint (``_asyncingest/state.json``): fingerprint and what it hashes, status,
    the runs that wrote it, and every endpoint's state.
    """

    fingerprint: str
    status: str = "running"  # running | interrupted | complete
    runs: list[str] = field(default_factory=list)
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    note: str = ""
    # What the fingerprint hashes (config/identity.py), so a refused resume names the changed
    # fields; None in a state written before it was stored.
    identity: dict[str, Any] | None = None
    # Incremental configs (asyncingest.state.increments): the increment under way or last
    # completed (0: not incremental, files directly in each folder), every increment's record,
    # each endpoint's committed high-water mark and the end a bounded backfill has reached.
    increment: int = 0
    increments: list[Increment] = field(default_factory=list)
    marks: dict[str, Any] = field(default_factory=dict)
    backfilled: dict[str, Any] = field(default_factory=dict)

    @property
    def current_increment(self) -> Increment | None:
        """The increment under way or last completed (None: none yet, or not incremental)."""
        return self.increments[-1] if self.increments else None

    def folder_path(self, output: Path, folder: str) -> Path:
        """Where ``folder``'s committed files are: ``output/folder``, or for an incremental
        config the current increment's partition ``output/folder/increment=<n>``."""
        base = output / folder
        return base / partition_name(self.increment) if self.increment else base

    def endpoint(self, name: str) -> EndpointState:
        """The state of endpoint ``name`` (made empty on first use)."""
        return self.endpoints.setdefault(name, EndpointState())

    def to_bytes(self) -> bytes:
        """The state as JSON; an integer beyond 64 bits (a cursor, a body value of a walk part
        way through) is written exactly, and :meth:`from_bytes` reads it back exactly."""
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "status": self.status,
            "runs": self.runs,
            "note": self.note,
            "endpoints": {k: v.to_json() for k, v in self.endpoints.items()},
            "identity": self.identity,
        }
        if self.increment:  # left out otherwise: a non-incremental state is as it was
            data["increment"] = self.increment
            data["increments"] = [i.to_json() for i in self.increments]
            data["marks"] = self.marks
            data["backfilled"] = self.backfilled
        return json_dumps(data, indent=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> RunState:
        """The state a state file holds; ValueError for another version."""
        d = json_loads(data)
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"state version {d.get('version')} is not {STATE_VERSION}")
        return cls(
            fingerprint=d["fingerprint"],
            status=d["status"],
            runs=list(d["runs"]),
            note=d.get("note", ""),
            endpoints={k: EndpointState.from_json(v) for k, v in d["endpoints"].items()},
            identity=d.get("identity"),
            increment=int(d.get("increment", 0)),
            increments=[Increment.from_json(i) for i in d.get("increments", [])],
            marks=dict(d.get("marks", {})),
            backfilled=dict(d.get("backfilled", {})),
        )

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{k}: {len(v.done)} done/{len(v.partial)} partial/{len(v.files)} files"
            for k, v in self.endpoints.items()
        )
        return f"RunState({self.status}, {parts})"


def state_path(output: Path) -> Path:
    """Where an output folder's state is saved."""
    return output / STATE_FOLDER / "state.json"


def load_state(output: Path) -> RunState | None:
    """The saved state, ``None`` when there is none; ``StateCorrupt`` when it is damaged."""
    path = state_path(output)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return RunState.from_bytes(data)
    except orjson.JSONDecodeError as exc:
        raise state_corrupt(path, f"not valid JSON, truncated? ({exc})") from exc
    except KeyError as exc:
        raise state_corrupt(path, f"the field {exc} is missing") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise state_corrupt(path, str(exc)) from exc


def save_state(output: Path, state: RunState) -> None:
    """Save ``state`` atomically (temporary file, fsync, rename, folder fsync)."""
    write_atomic(state_path(output), state.to_bytes())


# --------------------------------------------------------------------------- journal


class Journal:
    """Append-only child-job journal; a job's number is its line number."""

    def __init__(self, output: Path, endpoint: str) -> None:
        self.path = output / STATE_FOLDER / "jobs" / f"{endpoint}.jsonl"
        self._fh: IO[bytes] | None = None
        self.lines = 0
        self.nbytes = 0

    def open(self, lines: int, nbytes: int) -> None:
        """Start appending after the committed ``lines``/``nbytes`` (dropping anything later)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < nbytes:  # truncate() would pad it with zeros: jobs would be lost
            raise state_corrupt(
                self.path, f"{size:,} bytes, shorter than the {nbytes:,} the state names"
            )
        fh = self.path.open("ab")
        fh.truncate(nbytes)
        fh.seek(nbytes)
        self._fh, self.lines, self.nbytes = fh, lines, nbytes

    def append(self, variables: dict[str, Any], copy: dict[str, Any]) -> int:
        """Append one child job (its variables and copied fields); returns its line number, the
        job's number. Not durable until :meth:`sync`."""
        assert self._fh is not None
        line = json_dumps({"v": variables, "c": copy}, default=str) + b"\n"  # ints exact
        self._fh.write(line)
        self.nbytes += len(line)
        self.lines += 1
        return self.lines - 1

    def sync(self) -> tuple[int, int]:
        """Flush and fsync; returns ``(lines, nbytes)`` now durable, for the state to name."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return self.lines, self.nbytes

    def close(self) -> None:
        """Close the file (what was not synced is lost, and not named in the state). Idempotent."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            # A full disk may fail the flush; what was not synced is not in the state.
            with contextlib.suppress(OSError):
                fh.close()

    def replay(self, lines: int) -> Iterator[tuple[int, dict[str, Any], dict[str, Any]]]:
        """Jobs ``0..lines-1`` as ``(number, variables, copy)``, read from the file."""
        if lines <= 0 or not self.path.exists():
            return
        read = 0
        with self.path.open("rb") as fh:
            for raw in fh:
                if read >= lines:
                    return
                try:
                    entry = json_loads(raw)
                    job = read, dict(entry["v"]), dict(entry["c"])
                except (ValueError, KeyError, TypeError) as exc:
                    why = f"line {read + 1} cannot be read ({exc})"
                    raise state_corrupt(self.path, why) from exc
                read += 1
                yield job
        if read < lines:
            why = f"{read:,} lines, fewer than the {lines:,} the state names"
            raise state_corrupt(self.path, why)


# --------------------------------------------------------------------------- resume / fresh


def discard_uncommitted(output: Path, state: RunState, folder_of: dict[str, str]) -> list[Path]:
    """Delete Parquet files the state does not name; cut dead letters to their committed size."""
    removed: list[Path] = []
    for name, folder in folder_of.items():
        es = state.endpoints.get(name, EndpointState())
        keep = set(es.files)
        d = state.folder_path(output, folder)
        if d.is_dir():
            for p in d.glob("part-*.parquet"):
                if p.name not in keep:
                    p.unlink()
                    removed.append(p)
            if removed:
                fsync_dir(d)
        dead = output / DEAD_LETTER_FOLDER / folder / "dead-letters.jsonl"
        if dead.exists() and dead.stat().st_size > es.dead_letter_bytes:
            with dead.open("r+b") as fh:
                fh.truncate(es.dead_letter_bytes)
    return removed


def has_data(output: Path, folders: list[str]) -> bool:
    """Whether any of ``folders`` under ``output`` holds a committed Parquet file (directly, or
    in an increment's partition)."""
    patterns = ("part-*.parquet", f"{PARTITION}=*/part-*.parquet")
    return any(any((output / f).glob(p)) for f in folders for p in patterns)


def wipe(output: Path, folders: list[str], tables: Sequence[str] = ()) -> None:
    """What ``--fresh`` deletes: data (increment partitions too), the current ``tables`` of
    ``merge: latest`` endpoints, dead letters, journals and state; run reports stay."""
    for f in folders:
        for p in (output / f).glob("part-*.parquet"):
            p.unlink()
        for part in (output / f).glob(f"{PARTITION}=*"):
            if part.is_dir():
                shutil.rmtree(part)
        shutil.rmtree(output / DEAD_LETTER_FOLDER / f, ignore_errors=True)
    for t in tables:  # a link to hidden version folders (state/current.py): both go
        link = output / t
        if link.is_symlink():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        for hidden in output.glob(f".{t}.*"):
            if hidden.is_dir() and not hidden.is_symlink():
                shutil.rmtree(hidden, ignore_errors=True)
            else:  # a link, a file, or anything else by that name (rmtree would block on a FIFO)
                hidden.unlink()
    shutil.rmtree(output / STATE_FOLDER / "jobs", ignore_errors=True)
    state_path(output).unlink(missing_ok=True)
