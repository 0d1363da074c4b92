"""Shared helpers: read an endpoint's Parquet back, compare with what the server holds."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest


def read_records(output: Path, endpoint: str) -> list[dict[str, Any]]:
    folder = output / endpoint
    if not folder.exists():
        return []
    return ds.dataset(folder, format="parquet").to_table().to_pylist()  # type: ignore[no-any-return]


def by_key(
    records: Iterable[dict[str, Any]], pk: Sequence[str]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = tuple(r[k] for k in pk)
        assert key not in out, f"duplicate record {key}"
        out[key] = r
    return out


def assert_same_records(
    got: list[dict[str, Any]], expected: list[dict[str, Any]], pk: Sequence[str]
) -> None:
    """Every server record exactly once; every field the server sent has the same value."""
    got_by_key = by_key(got, pk)
    want_by_key = by_key(expected, pk)
    missing = sorted(set(want_by_key) - set(got_by_key))
    extra = sorted(set(got_by_key) - set(want_by_key))
    assert not missing, f"{len(missing)} records missing, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} unexpected records, e.g. {extra[:3]}"
    for key, want in want_by_key.items():
        row = got_by_key[key]
        for field, value in want.items():
            assert _norm(row[field]) == _norm(value), (key, field, row[field], value)


def _norm(v: Any) -> Any:
    import orjson

    if isinstance(v, dict | list):
        return orjson.loads(orjson.dumps(v))
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return orjson.loads(v)
        except orjson.JSONDecodeError:
            return v
    return v


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)


def service_required() -> bool:
    return os.environ.get("CI", "").lower() == "true"
