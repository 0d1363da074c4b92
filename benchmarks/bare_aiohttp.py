"""The ceiling: a hand-written aiohttp loop doing what the fan-out benchmark asks of asyncingest.

Same requests (``GET /partner/users/{id}`` for every id of a CSV), same JSON parser (orjson),
same Parquet output (the columns asyncingest infers for that endpoint, zstd, row groups of
``row_group_rows``, written to a hidden staging file, fsynced and renamed), same concurrency
(a fixed set of ``concurrency`` worker coroutines over one connection pool of that size), on
whatever event loop the caller runs. What it leaves out is everything that makes asyncingest
a tool: rate limits, retries, pagination, templates, events, dead letters, schema inference.
The gap between the two is the engine's overhead.

    python -m benchmarks.bare_aiohttp URL IDS.csv OUTPUT_DIR [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

USERS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("score", pa.float64()),
        ("tier", pa.string()),
        ("eligible", pa.bool_()),
        ("cards", pa.string()),  # a list in the JSON; asyncingest infers json (compact text)
    ]
)


@dataclass
class BareResult:
    requests: int = 0
    records: int = 0
    failed: int = 0


def iter_ids(path: Path, column: str = "user_id") -> Iterator[str]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        col = next(reader).index(column)
        for row in reader:
            if row[col]:
                yield row[col].strip()


class _Writer:
    """Buffers records; every ``row_group_rows`` turns them into Arrow columns, one row group."""

    def __init__(self, directory: Path, row_group_rows: int, compression: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.final = directory / "part-00000.parquet"
        self.staging = directory / ".part-00000.parquet.inprogress"
        self.writer = pq.ParquetWriter(self.staging, USERS_SCHEMA, compression=compression)
        self.row_group_rows = row_group_rows
        self.buffer: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.row_group_rows:
            self.flush()

    def flush(self) -> None:
        rows, self.buffer = self.buffer, []
        if not rows:
            return
        columns = [
            pa.array([r["user_id"] for r in rows], pa.string()),
            pa.array([r["score"] for r in rows], pa.float64()),
            pa.array([r["tier"] for r in rows], pa.string()),
            pa.array([r["eligible"] for r in rows], pa.bool_()),
            pa.array([orjson.dumps(r["cards"]).decode() for r in rows], pa.string()),
        ]
        table = pa.Table.from_arrays(columns, schema=USERS_SCHEMA)
        self.writer.write_table(table, row_group_size=len(rows))

    def close(self) -> None:
        self.flush()
        self.writer.close()
        fd = os.open(self.staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.staging, self.final)


async def crawl(
    base_url: str,
    ids_csv: Path,
    output: Path,
    *,
    concurrency: int = 64,
    row_group_rows: int = 10_000,
    compression: str = "zstd",
) -> BareResult:
    """Fetch every id's record with ``concurrency`` workers and write them to Parquet."""
    ids = iter_ids(ids_csv)  # shared by the workers; next() never awaits, so no lock
    writer = _Writer(output / "users", row_group_rows, compression)
    result = BareResult()
    prefix = f"{base_url.rstrip('/')}/partner/users/"
    headers = {"User-Agent": "bare-aiohttp", "Accept": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        for user_id in ids:
            result.requests += 1
            async with session.get(prefix + user_id, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
            if status != 200:
                result.failed += 1
                continue
            writer.add(orjson.loads(body))
            result.records += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    writer.close()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("ids", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    print(asyncio.run(crawl(args.url, args.ids, args.output, concurrency=args.concurrency)))


if __name__ == "__main__":
    main()
