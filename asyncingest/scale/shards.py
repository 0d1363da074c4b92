"""Cutting a job into deterministic shards, and the config a worker runs one shard with.

A shard is a message: self-contained (the run, the ids it covers or the walk it starts, the
output folder and the job's config as JSON), so a worker needs no local copy of the config or of
the input file. The same config and input cut the same shards with the same ids, which is what
lets ``submit --run-id`` republish only the shards not committed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ..config.models import EndpointConfig, FromFile, PipelineConfig
from ..config.sources import iter_ids
from ..core.records import bind_children

DEFAULT_SHARD_SIZE = 2_000
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def valid_run_id(run_id: str) -> bool:
    """A run id names folders and queues: 1-100 letters, digits, ``_``, ``-``, ``.``."""
    return bool(_RUN_ID.match(run_id)) and ".." not in run_id


class Shard(BaseModel):
    """One unit of work: the tree under ``endpoint`` for the ids in ``ids`` (``kind`` ``ids``, a
    ``from_file`` root) or for its one root walk (``kind`` ``walk``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    shard_id: str
    endpoint: str
    kind: Literal["ids", "walk", "rows"]
    ids: tuple[Any, ...] = ()
    rows: tuple[dict[str, Any], ...] = Field(
        (), description="kind rows: a child shard's bindings and copied fields, one per job"
    )
    split: bool = Field(True, description="children with one bound variable become shards")
    shard_size: int = DEFAULT_SHARD_SIZE
    first_row: int = 0
    last_row: int = 0
    output: str = Field(description="the shared output: an absolute folder or a store URI")
    config: dict[str, Any] = Field(description="the job's config, as JSON (no secrets)")

    @property
    def message_id(self) -> str:
        """The message id, ``<run_id>/<shard_id>``: the same for every delivery of the shard."""
        return f"{self.run_id}/{self.shard_id}"

    def to_bytes(self) -> bytes:
        """The shard as a JSON message body (what :meth:`from_bytes` reads)."""
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, body: bytes) -> Shard:
        """The shard a message body holds; a pydantic ``ValidationError`` for anything else."""
        return cls.model_validate(orjson.loads(body))


def config_json(cfg: PipelineConfig) -> dict[str, Any]:
    """The config as JSON that :meth:`PipelineConfig.model_validate` reads back unchanged."""
    out: dict[str, Any] = cfg.model_dump(mode="json", by_alias=True)
    return out


def splits(e: EndpointConfig, split: bool = True) -> bool:
    """Whether child endpoint ``e`` runs as shards of its own: with ``split``, when it binds one
    variable (a child shard feeds its ids as an input file does)."""
    return split and e.for_each is not None and len(e.for_each.bind) == 1


def subtree(cfg: PipelineConfig, root: str, split: bool = False) -> list[str]:
    """``root`` and every endpoint iterating over it, transitively, in config order; with
    ``split``, not the children that become shards of their own (nor theirs)."""
    names = {root}
    for e in cfg.order():
        if e.parent in names and not splits(e, split):
            names.add(e.name)
    return [e.name for e in cfg.endpoints if e.name in names]


def cut(
    cfg: PipelineConfig,
    run_id: str,
    output: str | Path,
    size: int = DEFAULT_SHARD_SIZE,
    *,
    split: bool = True,
) -> Iterator[Shard]:
    """Every shard of the job known before it runs, in order: per root, one ``walk`` shard, or
    its input file's ids in shards of ``size`` (``<endpoint>-<k>``, k from 0). Ids are streamed:
    one shard in memory. With ``split``, children found at run time become shards too
    (:func:`child_shards`)."""
    raw = config_json(cfg)
    for root in cfg.order():
        if root.parent is not None:
            continue
        common = {
            "run_id": run_id,
            "endpoint": root.name,
            "output": str(output),
            "config": raw,
            "split": split,
            "shard_size": size,
        }
        if root.from_file is None:
            yield Shard(shard_id=f"{root.name}-walk", kind="walk", **common)
            continue
        for k, chunk in enumerate(iter_ids(root.from_file, chunk=size)):
            yield Shard(
                shard_id=f"{root.name}-{k:05d}",
                kind="ids",
                ids=tuple(v for _, v in chunk),
                first_row=chunk[0][0],
                last_row=chunk[-1][0],
                **common,
            )


def shard_config(shard: Shard, staging: Path) -> PipelineConfig:
    """The config one shard runs with: the job's config cut down to the shard's tree, output into
    ``staging``, and for an ``ids`` shard the root reading the shard's ids from a JSONL file
    written into ``staging`` (same column, same variable: the records come out as in one run)."""
    cfg = PipelineConfig.model_validate(shard.config)
    keep = set(subtree(cfg, shard.endpoint, shard.split))
    endpoints = []
    for e in cfg.endpoints:
        if e.name not in keep:
            continue
        if e.name == shard.endpoint and shard.kind == "rows" and e.for_each is not None:
            ((var, _),) = e.for_each.bind.items()
            ids_path = staging / "_ids.jsonl"
            staging.mkdir(parents=True, exist_ok=True)
            ids_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in shard.rows))
            spec = FromFile(
                path=str(ids_path),
                column=var,
                format="jsonl",
                copy_id=False,
                copy_fields=tuple(e.for_each.copy_fields),
            )
            e = e.model_copy(update={"from_file": spec, "for_each": None})
        source = e.from_file or e.from_queue
        if e.name == shard.endpoint and source is not None and shard.kind == "ids":
            ids_path = staging / "_ids.jsonl"
            staging.mkdir(parents=True, exist_ok=True)
            column = source.column if isinstance(source, FromFile) else source.field
            ids_path.write_bytes(b"".join(orjson.dumps({column: v}) + b"\n" for v in shard.ids))
            spec = FromFile(
                path=str(ids_path),
                column=column,
                var=source.variable,
                format="jsonl",
                copy_id=source.copy_id,
            )
            e = e.model_copy(update={"from_file": spec, "from_queue": None})
        endpoints.append(e)
    output = cfg.output.model_copy(update={"directory": str(staging)})
    return cfg.model_copy(update={"endpoints": tuple(endpoints), "output": output})


def queue_run_id(queue: str) -> str:
    """The run id a ``from_queue`` worker keeps its commit records under: ``queue-<name>``."""
    return "queue-" + re.sub(r"[^A-Za-z0-9_.-]", "_", queue)[:90]


def message_shard(
    cfg_json: dict[str, Any], endpoint: str, output: str, queue: str, key: str, value: Any
) -> Shard:
    """One message of a ``from_queue`` endpoint as a shard of one id, named by the message's key
    (its ``message_id``, or a hash of its body): a redelivered message finds its commit record."""
    return Shard(
        run_id=queue_run_id(queue),
        shard_id=f"msg-{key}",
        endpoint=endpoint,
        kind="ids",
        ids=(value,),
        output=output,
        config=cfg_json,
    )


def child_shards(shard: Shard, staging: Path) -> list[Shard]:
    """The shards of the children ``shard``'s finished run gives rise to: per endpoint of its
    tree, per child that :func:`splits`, the child bindings of its records (read back from the
    staging folder), sorted so a rerun of the parent cuts the same shards with the same ids
    (``<parent-shard>~<child>-<k>``), ``shard_size`` bindings each."""
    if not shard.split:
        return []
    import pyarrow.dataset as ds

    cfg = PipelineConfig.model_validate(shard.config)
    out: list[Shard] = []
    for name in subtree(cfg, shard.endpoint, True):
        kids = [c for c in cfg.children(name) if splits(c)]
        folder = staging / name
        if not kids or not folder.is_dir():
            continue
        records = ds.dataset(folder, format="parquet").to_table().to_pylist()
        for child in kids:
            assert child.for_each is not None
            jobs, _unbound = bind_children(records, child.for_each, child.name, itertools.count())
            rows = sorted(
                ({**job.variables, **job.copy} for job in jobs),
                key=lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS),
            )
            size = shard.shard_size
            for k in range(0, len(rows), size):
                out.append(
                    shard.model_copy(
                        update={
                            "shard_id": f"{shard.shard_id}~{child.name}-{k // size:05d}",
                            "endpoint": child.name,
                            "kind": "rows",
                            "ids": (),
                            "rows": tuple(rows[k : k + size]),
                            "first_row": k,
                            "last_row": min(len(rows), k + size) - 1,
                        }
                    )
                )
    return out
