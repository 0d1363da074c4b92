"""Commit records and publishing by rename: what makes a shard's output appear exactly once.

Under ``OUTPUT/_asyncingest/scale/<run-id>/``: ``run.json`` (the run record), ``staging/`` (one
private folder per attempt of a shard), ``committed/<shard>.json`` (the manifest: written once,
the first ``link()`` wins), ``failed/<shard>.json`` (a shard dead-lettered, with the reason) and
``inflight/<shard>`` (touched while a worker runs the shard). A manifest names each staging file
and its final, deterministic name; publishing renames them in (a roll-forward anyone holding the
shard can finish). See docs/scale-out.md for the order and the crash points.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from ..core.crashpoints import crash_point
from ..errors import EnvironmentFailure
from ..sink.durable import fsync_dir

_PART = re.compile(r"part-(\d+)\.parquet")


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class RunFolder:
    """The scale-out bookkeeping of one run under the shared output folder."""

    def __init__(self, output: str | os.PathLike[str], run_id: str) -> None:
        self.output = Path(output)
        self.run_id = run_id
        self.root = self.output / "_asyncingest" / "scale" / run_id

    def __repr__(self) -> str:
        return f"RunFolder({self.root})"

    @property
    def record(self) -> Path:
        """The run record's path, ``run.json``."""
        return self.root / "run.json"

    def manifest(self, shard_id: str) -> Path:
        """Where shard ``shard_id``'s commit manifest is (``committed/<shard>.json``)."""
        return self.root / "committed" / f"{shard_id}.json"

    def failure(self, shard_id: str) -> Path:
        """Where shard ``shard_id``'s failure record is (``failed/<shard>.json``)."""
        return self.root / "failed" / f"{shard_id}.json"

    def inflight(self, shard_id: str) -> Path:
        """Shard ``shard_id``'s in-flight marker (``inflight/<shard>``)."""
        return self.root / "inflight" / shard_id

    def new_staging(self, shard_id: str) -> Path:
        """A fresh private folder for one attempt at ``shard_id``."""
        path = self.root / "staging" / f"{shard_id}.{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        return path

    # -------------------------------------------------------------- the run record

    def write_record(self, record: dict[str, Any]) -> None:
        """Write the run record durably: a fsynced temporary file renamed over ``run.json``, then
        the folder fsynced."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_name(f".run.json.{uuid.uuid4().hex[:8]}.tmp")
        _write_durably(tmp, orjson.dumps(record, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.record)
        fsync_dir(self.root)

    def read_record(self) -> dict[str, Any] | None:
        """The run record, or None when none was written."""
        try:
            out: dict[str, Any] = orjson.loads(self.record.read_bytes())
        except FileNotFoundError:
            return None
        return out

    # -------------------------------------------------------------- commit records

    def committed(self, shard_id: str) -> dict[str, Any] | None:
        """The shard's manifest, or None when it is not committed."""
        try:
            out: dict[str, Any] = orjson.loads(self.manifest(shard_id).read_bytes())
        except FileNotFoundError:
            return None
        return out

    def committed_ids(self) -> set[str]:
        """The ids of the shards with a commit manifest."""
        folder = self.root / "committed"
        if not folder.is_dir():
            return set()
        return {p.name[: -len(".json")] for p in folder.glob("*.json")}

    def failed_ids(self) -> set[str]:
        """The ids of the shards with a failure record (dead-lettered)."""
        folder = self.root / "failed"
        if not folder.is_dir():
            return set()
        return {p.name[: -len(".json")] for p in folder.glob("*.json")}

    def inflight_ids(self, fresh_seconds: float = 30.0) -> set[str]:
        """Shards whose worker touched their in-flight marker within ``fresh_seconds``."""
        folder = self.root / "inflight"
        if not folder.is_dir():
            return set()
        now = time.time()
        out = set()
        for p in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - p.stat().st_mtime <= fresh_seconds:
                    out.add(p.name)
        return out

    def manifest_for(self, shard_id: str, staging: Path, summary: dict[str, Any]) -> dict[str, Any]:
        """The manifest of a finished attempt: every part file and dead-letter file in
        ``staging`` with its final name (``<folder>/part-<run>-<shard>-<n>.parquet``,
        ``_dead_letter/<endpoint>/<run>-<shard>.jsonl``), relative to the output folder."""
        import pyarrow.parquet as pq

        files: list[dict[str, Any]] = []
        for folder in sorted(p for p in staging.iterdir() if p.is_dir()):
            if folder.name.startswith(("_", ".")):
                continue
            parts = sorted(
                (p for p in folder.iterdir() if _PART.fullmatch(p.name)),
                key=lambda p: int(_PART.fullmatch(p.name).group(1)),  # type: ignore[union-attr]
            )
            for i, part in enumerate(parts):
                rows = int(pq.ParquetFile(part).metadata.num_rows)
                final = f"{folder.name}/part-{self.run_id}-{shard_id}-{i:05d}.parquet"
                files.append({"from": self._rel(part), "to": final, "rows": rows})
        dead = staging / "_dead_letter"
        if dead.is_dir():
            for f in sorted(dead.glob("*/*.jsonl")):
                final = f"_dead_letter/{f.parent.name}/{self.run_id}-{shard_id}.jsonl"
                files.append({"from": self._rel(f), "to": final})
        return {
            "run_id": self.run_id,
            "shard_id": shard_id,
            "staging": self._rel(staging),
            "files": files,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "worker": f"pid {os.getpid()} on {socket.gethostname()}",
            **summary,
        }

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.output).as_posix()

    def commit(self, manifest: dict[str, Any]) -> bool:
        """Write ``manifest`` as the shard's commit record, atomically and at most once: True if
        this call committed it, False if another attempt had (then this one's staging is waste).
        """
        shard_id = manifest["shard_id"]
        final = self.manifest(shard_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{shard_id}.{uuid.uuid4().hex[:8]}.tmp")
        _write_durably(tmp, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        try:
            os.link(tmp, final)
            won = True
        except FileExistsError:
            won = False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)
        if won:
            crash_point("scale-committed")
        return won

    def publish(self, manifest: dict[str, Any]) -> None:
        """Roll ``manifest`` forward: rename each staging file to its final name (idempotent: a
        file already there and gone from staging is done), fsync the folders, then delete every
        staging folder of the shard."""
        touched: set[Path] = set()
        for f in manifest["files"]:
            src, dst = self.output / f["from"], self.output / f["to"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(src, dst)
            except FileNotFoundError:
                if not dst.exists():
                    raise EnvironmentFailure(
                        str(src),
                        f"shard {manifest['shard_id']} is committed but this file is gone",
                        "restore it from a backup, or delete the commit record "
                        f"{self.manifest(manifest['shard_id'])} and submit the run again",
                    ) from None
            touched.add(dst.parent)
        for folder in touched:
            fsync_dir(folder)
        self.discard_staging(manifest["shard_id"])

    def discard_staging(self, shard_id: str, only: Path | None = None) -> None:
        """Delete the staging folder ``only``, or every staging folder of ``shard_id``."""
        if only is not None:
            shutil.rmtree(only, ignore_errors=True)
            return
        staging = self.root / "staging"
        if staging.is_dir():
            for p in staging.glob(f"{shard_id}.*"):
                shutil.rmtree(p, ignore_errors=True)

    def record_failure(self, shard_id: str, reason: str, deliveries: int) -> None:
        """Write shard ``shard_id``'s failure record durably (reason, deliveries, when, which
        worker), replacing any earlier one."""
        path = self.failure(shard_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{shard_id}.{uuid.uuid4().hex[:8]}.tmp")
        record = {
            "run_id": self.run_id,
            "shard_id": shard_id,
            "reason": reason,
            "deliveries": deliveries,
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "worker": f"pid {os.getpid()} on {socket.gethostname()}",
        }
        _write_durably(tmp, orjson.dumps(record, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def children_marker(self, shard_id: str) -> Path:
        """Where shard ``shard_id``'s record of published child shards is
        (``children/<shard>.json``)."""
        return self.root / "children" / f"{shard_id}.json"

    def children_published(self, shard_id: str) -> list[str] | None:
        """The child shards ``shard_id`` published (confirmed), or None if not recorded."""
        try:
            out: list[str] = orjson.loads(self.children_marker(shard_id).read_bytes())
        except FileNotFoundError:
            return None
        return out

    def record_children(self, shard_id: str, children: list[str]) -> None:
        """Record durably that shard ``shard_id`` published ``children`` (rename into place, folder
        fsynced)."""
        path = self.children_marker(shard_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{shard_id}.{uuid.uuid4().hex[:8]}.tmp")
        _write_durably(tmp, orjson.dumps(children))
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def failed_attempts(self, shard_id: str) -> int:
        """Failures counted so far (for queues without ``x-delivery-count``)."""
        try:
            return int((self.root / "attempts" / shard_id).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def count_failure(self, shard_id: str) -> int:
        """Count one more failed attempt at shard ``shard_id`` and return the count (for queues
        without ``x-delivery-count``)."""
        path = self.root / "attempts" / shard_id
        path.parent.mkdir(parents=True, exist_ok=True)
        n = self.failed_attempts(shard_id) + 1
        tmp = path.with_name(f".{shard_id}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(str(n))
        os.replace(tmp, path)
        return n

    def touch_inflight(self, shard_id: str) -> None:
        """Create or touch shard ``shard_id``'s in-flight marker (a worker holds it now)."""
        path = self.inflight(shard_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def clear_inflight(self, shard_id: str) -> None:
        """Remove shard ``shard_id``'s in-flight marker (nothing if absent)."""
        self.inflight(shard_id).unlink(missing_ok=True)
