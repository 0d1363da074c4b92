"""Cutting a job into deterministic shards, and the config a worker runs one shard with.

A shard is a message: self-contained (the run, the ids it covers or the walk it starts, the
output folder and the job's config as JSON), so a worker needs no local copy of the config or of
the input file. The same config and input cut the same shards with the same ids, which is what
lets ``submit --run-id`` republish only the shards not committed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ..config.models import PipelineConfig
from ..config.sources import iter_ids

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
    kind: Literal["ids", "walk"]
    ids: tuple[Any, ...] = ()
    first_row: int = 0
    last_row: int = 0
    output: str = Field(description="the shared output folder, absolute")
    config: dict[str, Any] = Field(description="the job's config, as JSON (no secrets)")

    @property
    def message_id(self) -> str:
        return f"{self.run_id}/{self.shard_id}"

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, body: bytes) -> Shard:
        return cls.model_validate(orjson.loads(body))


def config_json(cfg: PipelineConfig) -> dict[str, Any]:
    """The config as JSON that :meth:`PipelineConfig.model_validate` reads back unchanged."""
    out: dict[str, Any] = cfg.model_dump(mode="json", by_alias=True)
    return out


def subtree(cfg: PipelineConfig, root: str) -> list[str]:
    """``root`` and every endpoint iterating over it, transitively, in config order."""
    names = {root}
    for e in cfg.order():
        if e.parent in names:
            names.add(e.name)
    return [e.name for e in cfg.endpoints if e.name in names]


def cut(
    cfg: PipelineConfig, run_id: str, output: Path, size: int = DEFAULT_SHARD_SIZE
) -> Iterator[Shard]:
    """Every shard of the job, in order: per root, one ``walk`` shard, or its input file's ids in
    shards of ``size`` (``<endpoint>-<k>``, k from 0). Ids are streamed: one shard in memory."""
    raw = config_json(cfg)
    for root in cfg.order():
        if root.parent is not None:
            continue
        common = {"run_id": run_id, "endpoint": root.name, "output": str(output), "config": raw}
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
    keep = set(subtree(cfg, shard.endpoint))
    endpoints = []
    for e in cfg.endpoints:
        if e.name not in keep:
            continue
        if e.name == shard.endpoint and e.from_file is not None and shard.kind == "ids":
            ids_path = staging / "_ids.jsonl"
            staging.mkdir(parents=True, exist_ok=True)
            column = e.from_file.column
            ids_path.write_bytes(b"".join(orjson.dumps({column: v}) + b"\n" for v in shard.ids))
            spec = e.from_file.model_copy(update={"path": str(ids_path), "format": "jsonl"})
            e = e.model_copy(update={"from_file": spec})
        endpoints.append(e)
    output = cfg.output.model_copy(update={"directory": str(staging)})
    return cfg.model_copy(update={"endpoints": tuple(endpoints), "output": output})
