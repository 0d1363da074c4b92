"""Commit records and publishing: what makes a shard's output appear exactly once.

Under ``OUTPUT/_asyncingest/scale/<run-id>/``: ``run.json`` (the run record), ``staging/`` (one
private folder per attempt of a shard), ``committed/<shard>.json`` (the manifest: written once,
the first wins), ``failed/<shard>.json`` (a shard dead-lettered, with the reason) and
``inflight/<shard>`` (touched while a worker runs the shard). A manifest names each staging file
and its final, deterministic name; publishing moves them in (a roll-forward anyone holding the
shard can finish). ``OUTPUT`` is a shared folder or an object store (:mod:`.store`); on an
object store the engine writes into a local temporary folder and the write step uploads one
object per endpoint into the store's staging. See docs/scale-out.md for the order and the crash
points.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from ..core.crashpoints import crash_point
from ..errors import EnvironmentFailure
from .store import Store, open_store

_PART = re.compile(r"part-(\d+)\.parquet")


class RunFolder:
    """The scale-out bookkeeping of one run under the shared output (a folder or an object
    store)."""

    def __init__(self, output: str | os.PathLike[str], run_id: str) -> None:
        self.output = os.fspath(output)
        self.run_id = run_id
        self.store: Store = open_store(self.output)
        self.prefix = f"_asyncingest/scale/{run_id}"

    def __repr__(self) -> str:
        return f"RunFolder({self.store.where(self.prefix)})"

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def record(self) -> str:
        """Where the run record is (``run.json``)."""
        return self.store.where(self._key("run.json"))

    def manifest(self, shard_id: str) -> str:
        """Where shard ``shard_id``'s commit manifest is (``committed/<shard>.json``)."""
        return self.store.where(self._key("committed", f"{shard_id}.json"))

    def new_staging(self, shard_id: str) -> Path:
        """A fresh private local folder for one attempt at ``shard_id``: in the output folder
        (so publishing is a rename), or for an object store a temporary folder of this machine
        (``TMPDIR``) that :meth:`release` removes."""
        attempt = f"{shard_id}.{uuid.uuid4().hex[:12]}"
        if not self.store.local:
            return Path(tempfile.mkdtemp(prefix=f"asyncingest-{attempt}-"))
        path = Path(self.store.where(self._key("staging", attempt)))
        path.mkdir(parents=True)
        return path

    def release(self, staging: Path) -> None:
        """Remove a local temporary staging folder (an object store's; in a shared folder
        the staging was published or discarded already)."""
        if not self.store.local:
            shutil.rmtree(staging, ignore_errors=True)

    # -------------------------------------------------------------- the run record

    def _json(self, *parts: str) -> Any:
        raw = self.store.get(self._key(*parts))
        return None if raw is None else orjson.loads(raw)

    def write_record(self, record: dict[str, Any]) -> None:
        """Write the run record durably (replaced whole)."""
        self.store.put(self._key("run.json"), orjson.dumps(record, option=orjson.OPT_INDENT_2))

    def read_record(self) -> dict[str, Any] | None:
        """The run record, or None when none was written."""
        out: dict[str, Any] | None = self._json("run.json")
        return out

    # -------------------------------------------------------------- commit records

    def committed(self, shard_id: str) -> dict[str, Any] | None:
        """The shard's manifest, or None when it is not committed."""
        out: dict[str, Any] | None = self._json("committed", f"{shard_id}.json")
        return out

    def committed_ids(self) -> set[str]:
        """The ids of the shards with a commit manifest."""
        return {n[: -len(".json")] for n in self.store.names(self._key("committed"), ".json")}

    def failed_ids(self) -> set[str]:
        """The ids of the shards with a failure record (dead-lettered)."""
        return {n[: -len(".json")] for n in self.store.names(self._key("failed"), ".json")}

    def failure(self, shard_id: str) -> dict[str, Any] | None:
        """Shard ``shard_id``'s failure record, or None."""
        out: dict[str, Any] | None = self._json("failed", f"{shard_id}.json")
        return out

    def inflight_ids(self, fresh_seconds: float = 30.0) -> set[str]:
        """Shards whose worker touched their in-flight marker within ``fresh_seconds``."""
        ages = self.store.ages(self._key("inflight"))
        return {name for name, age in ages.items() if age <= fresh_seconds}

    def manifest_for(
        self, shard_id: str, staging: Path, summary: dict[str, Any], compression: str = "zstd"
    ) -> dict[str, Any]:
        """The manifest of a finished attempt: every part file and dead-letter file in
        ``staging`` with its final name (``<folder>/part-<run>-<shard>-<n>.parquet``,
        ``_dead_letter/<endpoint>/<run>-<shard>.jsonl``), relative to the output.

        On an object store this is also the write step: each endpoint's parts are merged into
        one object (``compression``), which is uploaded with the dead letters into the store's
        staging (``staging/<shard>.<attempt>/``); the manifest names those objects."""
        import pyarrow.parquet as pq

        local = self.store.local
        attempt = self._key("staging", f"{shard_id}.{uuid.uuid4().hex[:12]}")
        files: list[dict[str, Any]] = []
        for folder in sorted(p for p in staging.iterdir() if p.is_dir()):
            if folder.name.startswith(("_", ".")):
                continue
            parts = sorted(
                (p for p in folder.iterdir() if _PART.fullmatch(p.name)),
                key=lambda p: int(_PART.fullmatch(p.name).group(1)),  # type: ignore[union-attr]
            )
            if not parts:
                continue
            if local:
                for i, part in enumerate(parts):
                    rows = int(pq.ParquetFile(part).metadata.num_rows)
                    final = f"{folder.name}/part-{self.run_id}-{shard_id}-{i:05d}.parquet"
                    files.append({"from": self._rel(part), "to": final, "rows": rows})
                continue
            one = parts[0] if len(parts) == 1 else _merge(parts, compression)
            rows = int(pq.ParquetFile(one).metadata.num_rows)
            key = f"{attempt}/{folder.name}/part-00000.parquet"
            self.store.upload(one, key)
            final = f"{folder.name}/part-{self.run_id}-{shard_id}-00000.parquet"
            files.append({"from": key, "to": final, "rows": rows})
        dead = staging / "_dead_letter"
        if dead.is_dir():
            for f in sorted(dead.glob("*/*.jsonl")):
                final = f"_dead_letter/{f.parent.name}/{self.run_id}-{shard_id}.jsonl"
                if local:
                    files.append({"from": self._rel(f), "to": final})
                    continue
                key = f"{attempt}/_dead_letter/{f.parent.name}/{f.name}"
                self.store.upload(f, key)
                files.append({"from": key, "to": final})
        return {
            "run_id": self.run_id,
            "shard_id": shard_id,
            "staging": self._rel(staging) if local else attempt,
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
        key = self._key("committed", f"{shard_id}.json")
        won = self.store.create(key, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        if won and not self.store.local:  # no conditional PUT: read it back, the last one wins
            there = self.committed(shard_id) or {}
            won = there.get("staging") == manifest["staging"]
        if won:
            crash_point("scale-committed")
        return won

    def publish(self, manifest: dict[str, Any]) -> None:
        """Roll ``manifest`` forward: move each staging file to its final name (idempotent: a
        file already there and gone from staging is done), make the names durable, then
        delete every staging folder of the shard."""
        touched: set[str] = set()
        for f in manifest["files"]:
            try:
                self.store.move(f["from"], f["to"])
            except FileNotFoundError:
                raise EnvironmentFailure(
                    self.store.where(f["from"]),
                    f"shard {manifest['shard_id']} is committed but this file is gone",
                    "restore it from a backup, or delete the commit record "
                    f"{self.manifest(manifest['shard_id'])} and submit the run again",
                ) from None
            touched.add(f["to"].rpartition("/")[0])
        self.store.sync(touched)
        self.discard_staging(manifest["shard_id"])

    def discard_staging(self, shard_id: str, only: Path | None = None) -> None:
        """Delete the local staging folder ``only``, or every staging folder of ``shard_id``
        in the output (and, on an object store, its uploads)."""
        if only is not None:
            shutil.rmtree(only, ignore_errors=True)
            return
        self.store.delete_folders(self._key("staging"), f"{shard_id}.")

    def record_failure(self, shard_id: str, reason: str, deliveries: int) -> None:
        """Write shard ``shard_id``'s failure record durably (reason, deliveries, when, which
        worker), replacing any earlier one."""
        record = {
            "run_id": self.run_id,
            "shard_id": shard_id,
            "reason": reason,
            "deliveries": deliveries,
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "worker": f"pid {os.getpid()} on {socket.gethostname()}",
        }
        key = self._key("failed", f"{shard_id}.json")
        self.store.put(key, orjson.dumps(record, option=orjson.OPT_INDENT_2))

    def children_published(self, shard_id: str) -> list[str] | None:
        """The child shards ``shard_id`` published (confirmed), or None if not recorded."""
        out: list[str] | None = self._json("children", f"{shard_id}.json")
        return out

    def record_children(self, shard_id: str, children: list[str]) -> None:
        """Record durably that shard ``shard_id`` published ``children``."""
        self.store.put(self._key("children", f"{shard_id}.json"), orjson.dumps(children))

    def failed_attempts(self, shard_id: str) -> int:
        """Failures counted so far (for queues without ``x-delivery-count``)."""
        raw = self.store.get(self._key("attempts", shard_id))
        try:
            return int(raw or 0)
        except ValueError:
            return 0

    def count_failure(self, shard_id: str) -> int:
        """Count one more failed attempt at shard ``shard_id`` and return the count (for queues
        without ``x-delivery-count``)."""
        n = self.failed_attempts(shard_id) + 1
        self.store.put(self._key("attempts", shard_id), str(n).encode())
        return n

    def touch_inflight(self, shard_id: str) -> None:
        """Write shard ``shard_id``'s in-flight marker anew (a worker holds it now)."""
        self.store.put(self._key("inflight", shard_id), b"")

    def clear_inflight(self, shard_id: str) -> None:
        """Remove shard ``shard_id``'s in-flight marker (nothing if absent)."""
        self.store.delete(self._key("inflight", shard_id))


def _merge(parts: list[Path], compression: str) -> Path:
    """The Parquet files ``parts`` (one endpoint's, in order) as one file beside them, row
    group by row group (their schemas unified: a column a part lacks is null there)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [pq.ParquetFile(p) for p in parts]
    schema = pa.unify_schemas([f.schema_arrow for f in files], promote_options="permissive")
    out = parts[0].with_name(".merged.parquet")
    codec = None if compression == "none" else compression
    with pq.ParquetWriter(out, schema, compression=codec) as writer:
        for f in files:
            for i in range(f.num_row_groups):
                table = f.read_row_group(i)
                columns = [
                    table.column(field.name).cast(field.type)
                    if field.name in table.column_names
                    else pa.nulls(table.num_rows, field.type)
                    for field in schema
                ]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    return out
