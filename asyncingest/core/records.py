"""What a page yields, as pure functions shared by both engines (async ``engine/endpoint.py`` and
the thread-pool ``sync`` package).

Sharing approach: *shared pure parts, small I/O parts* (not httpcore-style generation). The two
engines differ in more than ``async``/``await``: aiohttp vs requests, futures and ``call_at``
vs ``threading.Condition``, worker coroutines per endpoint vs one pool of threads. A regex
"unasync" pass cannot turn one into the other, and generating from a file that several people
edit at once would break on every change. So everything that decides *what* happens (parse a
body, where the records are, primary keys, parent fields, child bindings, whether and how long
to retry, pagination, Parquet, dead letters, counters and events) lives in modules without
I/O or waiting, and each engine keeps only how it waits and how it talks HTTP. Both engines then
produce the same records by construction; ``tests/test_sync_mode.py`` checks it end to end.

Nothing here blocks, sleeps or locks. See docs/architecture.md, steps 5-7.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config.models import EndpointConfig, ForEach
from .json import loads as json_loads
from .request import Page, Record, Request, WrongShape, extract_records, lookup
from .retry import Failure, FailureKind


# Not frozen (treat as immutable): a frozen dataclass costs ~0.6 us more per instance, and
# the engine makes one per request.
@dataclass(slots=True)
class Job:
    """One walk of an endpoint (all its pages) for one binding: the root call (number 0), an
    input file's row (its row number) or a parent record (its child-journal line). ``copy``
    holds fields set in every record the walk yields; ``resume`` continues a walk part way."""

    number: int
    variables: dict[str, Any]
    copy: dict[str, Any] = field(default_factory=dict)
    resume: Request | None = None


def parse_page(
    request: Request,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    endpoint: EndpointConfig,
) -> Page | Failure:
    """A successful response's body as a :class:`Page`, or why it is unusable (retryable
    ``MALFORMED_JSON`` / ``WRONG_SHAPE``). An empty body is ``null``: no records."""
    data: Any = None
    if body and not body.isspace():
        try:
            data = json_loads(body)  # orjson; integers beyond 64 bits exact
        except orjson.JSONDecodeError as exc:  # also nesting beyond 1,024 levels
            return Failure(FailureKind.MALFORMED_JSON, f"malformed JSON: {exc}", status)
    try:
        records = extract_records(data, endpoint.records, endpoint.single_record)
    except WrongShape as exc:
        return Failure(FailureKind.WRONG_SHAPE, f"unexpected body: {exc}", status)
    return Page(request, status, headers, data, records)


def copy_parent_fields(records: list[Record], copy: Mapping[str, Any]) -> None:
    """Set ``copy``'s fields in every record that lacks them (in place)."""
    if copy:
        for r in records:
            for k, v in copy.items():
                r.setdefault(k, v)


def missing_key_reason(primary_key: tuple[str, ...]) -> str:
    """The dead-letter reason of a record without its primary key."""
    return f"primary key {list(primary_key)} missing or null"


def split_by_key(
    records: list[Record], primary_key: tuple[str, ...]
) -> tuple[list[Record], list[Record]]:
    """``(keyed, unkeyed)``: records with every primary-key field set, and the others (to be
    dead-lettered with :func:`missing_key_reason`). No key: every record is keyed."""
    if not primary_key:
        return records, []
    if len(primary_key) == 1:
        (k,) = primary_key
        if all(r.get(k) is not None for r in records):
            return records, []
        return [r for r in records if r.get(k) is not None], [
            r for r in records if r.get(k) is None
        ]
    good = [r for r in records if None not in map(r.get, primary_key)]
    if len(good) == len(records):
        return records, []
    bad = [r for r in records if None in map(r.get, primary_key)]
    return good, bad


def bind_children(
    records: list[Record], spec: ForEach, child: str, numbers: Iterator[int]
) -> tuple[list[Job], list[tuple[Record, str]]]:
    """The jobs of endpoint ``child`` that ``records`` give rise to under ``spec``, numbered
    from ``numbers``, and the parent records that cannot be bound, with why (they are
    dead-lettered on the parent endpoint)."""
    jobs: list[Job] = []
    unbound: list[tuple[Record, str]] = []
    bind, copy_fields = spec.bind.items(), spec.copy_fields.items()
    for r in records:
        variables = {var: lookup(r, path) for var, path in bind}
        if None in variables.values():
            missing = [spec.bind[var] for var, v in variables.items() if v is None]
            unbound.append((r, f"no {missing} to bind for child endpoint '{child}'"))
            continue
        jobs.append(Job(next(numbers), variables, {k: lookup(r, p) for k, p in copy_fields}))
    return jobs, unbound
