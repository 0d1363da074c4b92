"""A nested column (an object or a list) that is null in every record of a later batch.

Found by the sink property in ``test_properties.py``: the all-null batch skipped widening and
reached the scalar converter with a nested kind, which crashed the sink (``TypeError`` for an
object, ``KeyError`` for a list), so one page whose ``meta`` was null throughout ended the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from asyncingest.sink.parquet import ParquetSink, SinkOptions


@pytest.mark.parametrize(
    ("first", "read_back"),
    [({"x": 1}, {"x": 1}), ([1, 2], [1, 2]), ({}, None)],  # an empty object is stored as null
    ids=["object", "list", "empty-object"],
)
def test_a_batch_where_a_nested_column_is_all_null_is_written(
    tmp_path: Path, first: Any, read_back: Any
) -> None:
    sink = ParquetSink(tmp_path, "r", SinkOptions())
    assert sink.write([{"id": 1, "a": first}]) == []
    assert sink.write([{"id": 2, "a": None}, {"id": 3}]) == []
    assert sink.write([{"id": 4, "a": first}]) == []
    sink.close()
    rows = pq.read_table(tmp_path / "r").to_pylist()
    assert rows == [
        {"id": 1, "a": read_back},
        {"id": 2, "a": None},
        {"id": 3, "a": None},
        {"id": 4, "a": read_back},
    ]
