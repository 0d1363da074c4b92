"""Case 3's cost per record of each stage, measured in one process on the crawl's own pages.

The pages are fetched first (untimed), then streamed through the stages one row group at a
time, the way the engine's writer sees them, each stage with its own timer:

``parse``      ``orjson.loads`` of the page bytes and ``extract_records`` (the engine's code)
``validate``   what the sink's ``BatchConverter`` does before Arrow: one list per declared
               column and the exact-type check of every value (``set(map(type, column))``)
``to Arrow``   ``pa.array(column, type)`` per column and ``pa.Table.from_arrays``
``write``      ``ParquetWriter.write_table`` (one row group, the run's codec) and ``close``

Two cross-checks: ``BatchConverter.convert`` as the sink runs it (it should cost about
validate + to Arrow), and pydantic's ``TypeAdapter.validate_json`` of the page bytes into
TypedDicts (parse and validate in one step, the alternative the issue measured).
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from typing_extensions import TypedDict  # pydantic needs it for TypedDicts before 3.12

from asyncingest.core.request import extract_records
from asyncingest.sink.schema import ARROW_TYPES, BatchConverter

_NONE = type(None)
# The types BatchConverter passes straight to pa.array for each declared type (see sink.schema).
_FAST: dict[str, set[type]] = {
    "string": {str, _NONE},
    "int64": {int, _NONE},
    "float64": {int, float, _NONE},
    "bool": {bool, _NONE},
}


class Lap(TypedDict):
    session_key: int
    driver_number: int
    lap_number: int
    lap_duration: float | None
    duration_sector_1: float | None
    duration_sector_2: float | None
    duration_sector_3: float | None
    is_pit_out_lap: bool
    st_speed: int | None


class LapsPage(TypedDict):
    results: list[Lap]
    total: int


async def fetch_pages(url: str, page_size: int, concurrency: int = 32) -> list[bytes]:
    """Every ``/v1/laps`` page of every session, as the bytes the server sent."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/sessions") as resp:
            keys = [s["session_key"] for s in orjson.loads(await resp.read())]
        pages: list[bytes] = []
        todo = iter(keys)

        async def walk() -> None:
            for key in todo:
                offset = 0
                while True:
                    params = {"session_key": key, "offset": offset, "limit": page_size}
                    async with session.get(f"{url}/v1/laps", params=params) as resp:
                        body = await resp.read()
                    pages.append(body)
                    n = len(orjson.loads(body)["results"])
                    offset += n
                    if n < page_size:
                        break

        await asyncio.gather(*(walk() for _ in range(concurrency)))
    return pages


class _Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def time(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
        return out


def _chunks(pages: list[bytes], records_per_chunk: int, page_size: int) -> Iterator[list[bytes]]:
    step = max(1, records_per_chunk // page_size)
    for i in range(0, len(pages), step):
        yield pages[i : i + step]


def _columns(records: list[dict[str, Any]], schema: dict[str, str]) -> list[list[Any]]:
    columns = []
    for name, ftype in schema.items():
        column = [r.get(name) for r in records]
        if not set(map(type, column)) <= _FAST[ftype]:
            raise ValueError(f"{name}: a value BatchConverter would convert one by one")
        columns.append(column)
    return columns


def _to_arrow(columns: list[list[Any]], schema: dict[str, str]) -> pa.Table:
    types = [ARROW_TYPES[t] for t in schema.values()]  # type: ignore[index]
    arrays = [pa.array(c, type=t) for c, t in zip(columns, types, strict=True)]
    return pa.Table.from_arrays(arrays, names=list(schema))


def _one_pass(
    pages: list[bytes], schema: dict[str, str], row_group_rows: int, compression: str
) -> tuple[dict[str, float], int]:
    from pydantic import TypeAdapter

    adapter = TypeAdapter(LapsPage)
    page_size = max(1, len(orjson.loads(pages[0])["results"]))
    converter = BatchConverter(schema)  # type: ignore[arg-type]
    timers = _Timers()
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        writer: pq.ParquetWriter | None = None
        for chunk in _chunks(pages, row_group_rows, page_size):
            records: list[dict[str, Any]] = []
            for body in chunk:
                page = timers.time("parse", orjson.loads, body)
                records.extend(timers.time("parse", extract_records, page, "results"))
            n += len(records)
            columns = timers.time("validate", _columns, records, schema)
            table = timers.time("to Arrow", _to_arrow, columns, schema)
            if writer is None:
                path = Path(tmp) / "stages.parquet"
                writer = pq.ParquetWriter(path, table.schema, compression=compression)
            timers.time("write", writer.write_table, table, table.num_rows)
            timers.time("BatchConverter.convert", converter.convert, records)
            for body in chunk:
                timers.time("pydantic validate_json", adapter.validate_json, body)
        if writer is not None:
            timers.time("write", writer.close)
    return timers.seconds, n


def measure_stages(spec: dict[str, Any]) -> dict[str, Any]:
    """Fetch the pages, then run the stages ``repeat`` times; the best time of each counts."""
    pages = asyncio.run(fetch_pages(spec["url"], spec["page_size"]))
    schema: dict[str, str] = spec["schema"]
    best: dict[str, float] = {}
    n = 0
    for _ in range(spec.get("repeat", 3)):
        gc.collect()
        seconds, n = _one_pass(pages, schema, spec["row_group_rows"], spec["compression"])
        for stage, s in seconds.items():
            best[stage] = min(best.get(stage, s), s)
    us = {stage: 1e6 * s / n for stage, s in best.items()} if n else {}
    return {"requests": len(pages), "records": n, "extra": {"us_per_record": us}}
