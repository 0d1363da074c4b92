"""Properties over wide input spaces (``hypothesis``): the range set, the sliding-window
limiter, the paginators and the sink's schema inference, each against a plain reference.

Deterministic and quick: the ``ci`` profile (``tests/conftest.py``) derandomizes, drops the
deadline (a loaded machine must not fail a test on time) and keeps example counts small.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pyarrow.dataset as ds
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from asyncingest.config.models import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    OffsetPagination,
    PagePagination,
)
from asyncingest.core.pagination import paginator_for
from asyncingest.core.request import Page, Request
from asyncingest.limits.limiter import SlidingWindowLimiter
from asyncingest.sink.parquet import ParquetSink, SinkOptions
from asyncingest.state.rangeset import RangeSet
from asyncingest.testing import FakeClock

# -- the range set against a plain set ----------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 60)),
    st.tuples(st.just("range"), st.integers(0, 60), st.integers(0, 60)),
)


@given(
    initial=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6),
    ops=st.lists(op, max_size=40),
)
def test_the_range_set_is_the_set_of_what_was_added(
    initial: list[tuple[int, int]], ops: list[tuple[Any, ...]]
) -> None:
    s, ref = RangeSet(initial), {n for a, b in initial for n in range(a, b)}
    for o in ops:
        if o[0] == "add":
            s.add(o[1])
            ref.add(o[1])
        else:
            s.add_range(o[1], o[2])
            ref.update(range(o[1], o[2]))
    assert list(s) == sorted(ref) and len(s) == len(ref) and bool(s) == bool(ref)
    assert all((n in s) == (n in ref) for n in range(-1, 63))
    ranges = s.ranges()  # canonical: sorted, non-empty, neither overlapping nor touching
    assert all(a < b for a, b in ranges)
    assert all(b1 < a2 for (_, b1), (a2, _) in itertools.pairwise(ranges))
    assert RangeSet(ranges) == s


# -- the sliding-window limiter against a brute-force count -------------------------------------

TICK = 1 / 32  # every time is a multiple: exact binary floats, so instants compare with ==
windows_st = st.lists(
    st.tuples(st.integers(1, 4), st.integers(1, 64).map(lambda n: n * TICK * 4)),
    min_size=1,
    max_size=2,
)
requests_st = st.lists(
    st.tuples(
        st.sampled_from("abc"),  # key
        st.integers(0, 96).map(lambda n: n * TICK),  # asks at
        st.integers(0, 64).map(lambda n: n * TICK),  # holds the permit for
    ),
    min_size=1,
    max_size=25,
)


async def _schedule(
    windows: list[tuple[int, float]], plan: list[tuple[str, float, float]], bucketed: bool
) -> list[tuple[str, float, float, float]]:
    clock = FakeClock(start=0.0)
    # bucketed: every window counts releases in 4 buckets (what a 625,000/day window does)
    extra = {"exact_max": 0, "buckets": 4} if bucketed else {}
    limiter = SlidingWindowLimiter(windows, clock, **extra)
    done: list[tuple[str, float, float, float]] = []

    async def one(key: str, at: float, hold: float) -> None:
        await clock.sleep(at)
        permit = await limiter.acquire(key)
        granted = clock.time()
        await clock.sleep(hold)
        done.append((key, at, granted, clock.time()))
        permit.release()

    async with clock.auto_advance():
        await asyncio.gather(*(one(*p) for p in plan))
    return done


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(windows=windows_st, plan=requests_st, bucketed=st.booleans())
def test_the_limiter_never_exceeds_a_window_and_starves_no_waiter(
    windows: list[tuple[int, float]], plan: list[tuple[str, float, float]], bucketed: bool
) -> None:
    done = asyncio.run(_schedule(windows, plan, bucketed))
    assert len(done) == len(plan)  # everyone was granted (no deadlock, no lost wake-up)
    for limit, seconds in windows:
        # A slot is held from the grant until release + seconds (strict as the server counts
        # arrivals anywhere in between): at every grant instant, count the holders.
        for _, _, g, _ in done:
            holders = sum(1 for _, _, g2, r2 in done if g2 <= g < r2 + seconds)
            assert holders <= limit, (limit, seconds, g)
        # The server's view: arrivals at the grant, or at the release, in any (t - W, t].
        for arrivals in ([d[2] for d in done], [d[3] for d in done]):
            for t in arrivals:
                assert sum(1 for a in arrivals if t - seconds < a <= t) <= limit
    # No waiter starved: while anyone waits, some slot frees within (longest hold + longest
    # window, doubled for buckets), and round-robin between keys grants a waiter within
    # (same-key waiters ahead of it + 1) rounds of at most one grant per key.
    hold = max(h for _, _, h in plan)
    window = max(w for _, w in windows) * (2 if bucketed else 1)
    keys = len({k for k, _, _ in plan})
    for key, asked, granted, _ in done:
        ahead = sum(1 for k, a, g, _ in done if k == key and a <= asked and g > asked) - 1
        assert granted - asked <= (ahead + 1) * keys * (hold + window) + 1e-9


# -- paginators against a server with random page sizes and totals ------------------------------

BASE = URL("https://api.test/items")


class Server:
    """A list of ``total`` records, served at most ``cap`` a page whatever the client asks."""

    def __init__(self, total: int, cap: int) -> None:
        self.records = [{"id": i} for i in range(total)]
        self.cap = cap

    def page(self, kind: str, request: Request, size: int) -> tuple[Any, dict[str, str], list[Any]]:
        q = request.full_url.query
        n = len(self.records)
        if kind == "offset":
            start = int(q["offset"])
            got = self.records[start : start + min(int(q["limit"]), self.cap)]
            return {"total": n, "results": got}, {}, got
        if kind == "page":
            p = int(q["page"]) - 1
            got = self.records[p * size : (p + 1) * size]
            return {"pages": math.ceil(n / size), "count": n, "results": got}, {}, got
        start = int(q.get("after", "0"))
        got = self.records[start : start + size]
        more = start + size < n
        nxt = str(start + size) if more else None
        if kind == "cursor":
            return {"cursor": nxt, "results": got}, {}, got
        link = f"/items?after={nxt}" if more else None
        if kind == "next_url":
            return {"next": link, "results": got}, {}, got
        return {"results": got}, ({"Link": f'<{link}>; rel="next"'} if link else {}), got


def config_for(kind: str, size: int, with_total: bool) -> Any:
    if kind == "offset":
        total = {"total_path": "total"} if with_total else {}
        return OffsetPagination(type="offset", limit=size, **total)
    if kind == "page":
        totals = [{}, {"total_pages_path": "pages"}, {"total_path": "count"}]
        return PagePagination(type="page", size=size, **totals[with_total + (size % 2)])
    if kind == "cursor":
        return CursorPagination(type="cursor", cursor_path="cursor", limit=size)
    if kind == "next_url":
        return NextUrlPagination(type="next_url")
    return LinkHeaderPagination(type="link_header")


@pytest.mark.parametrize("with_total", [False, True], ids=["no-total", "total"])
@pytest.mark.parametrize("kind", ["offset", "page", "cursor", "next_url", "link_header"])
@given(total=st.integers(0, 60), size=st.integers(1, 15), cap=st.integers(1, 15))
def test_a_walk_returns_every_record_exactly_once_and_ends(
    kind: str, total: int, size: int, cap: int, with_total: bool
) -> None:
    if kind != "offset" or not with_total:
        cap = size  # only a total lets a paginator tell a capped page from the last one
    server = Server(total, cap)
    paginator = paginator_for(config_for(kind, size, with_total))
    request: Request | None = paginator.first(Request("GET", BASE))
    seen: list[Any] = []
    pages = 0
    while request is not None:
        pages += 1
        assert pages <= total + 2, "the walk does not end"
        body, headers, records = server.page(kind, request, size)
        seen.extend(records)
        request = paginator.next(Page(request, 200, headers, body, records))
    assert seen == server.records
    # and no request more than needed: the last page is recognised as the last
    per_page = min(size, cap)
    no_total = not with_total and (kind == "offset" or (kind == "page" and size % 2 == 0))
    # without a total, only a short (or empty) page ends the walk
    needed = total // per_page + 1 if no_total else max(1, math.ceil(total / per_page))
    assert pages == needed


# -- schema inference and widening against random record streams --------------------------------

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=4),
)
small_number = st.integers(-5, 5) | st.floats(-5, 5, width=32)  # int widens to float inside too
nested = st.one_of(
    st.fixed_dictionaries({}, optional={"x": small_number | st.none(), "y": st.text(max_size=2)}),
    st.lists(small_number, max_size=3),
)
# At least one field: a batch of records without any is dropped, see the xfail test below.
record = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), scalar | nested, min_size=1, max_size=4
)


def norm(v: Any) -> Any:
    """A value as compared: numbers as floats (an int64 column widens to float64), bools and
    text kept apart from them, objects without their null members (a struct reads back every
    key the column ever had), and an empty object as null (how the sink stores one)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int | float):
        return ("number", float(v))
    if isinstance(v, Mapping):  # an object with no (non-null) member is stored as null
        members = {k: norm(x) for k, x in v.items() if x is not None}
        return members or None
    if isinstance(v, list):
        return [norm(x) for x in v]
    raise AssertionError(f"unexpected {v!r}")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(record, max_size=6), min_size=1, max_size=5),
    max_rows=st.integers(1, 8),
)
def test_what_the_sink_writes_reads_back_equal_to_the_records_it_accepted(
    batches: list[list[dict[str, Any]]], max_rows: int
) -> None:
    with TemporaryDirectory() as tmp:
        sink = ParquetSink(
            Path(tmp), "r", SinkOptions(row_group_rows=3, max_rows_per_file=max_rows)
        )
        accepted: list[dict[str, Any]] = []
        for batch in batches:
            refused = sink.write(batch)
            gone = Counter(id(r.record) for r in refused)
            accepted.extend(r for r in batch if not gone[id(r)])
            assert all(r.reason for r in refused)  # a refused record says why
        sink.close()
        as_json = set(sink.json_fallbacks)
        table = ds.dataset(Path(tmp) / "r", format="parquet").to_table() if accepted else None
        rows = table.to_pylist() if table is not None else []
    assert len(rows) == len(accepted) == sink.rows_written
    for got, want in zip(rows, accepted, strict=True):
        for name in set(got) | set(want):
            value = got.get(name)
            if name in as_json and value is not None:
                value = json.loads(value)
            assert norm(value) == norm(want.get(name)), (name, got, want)


number_record = st.dictionaries(
    st.sampled_from(["a", "b"]),
    st.none() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False),
    min_size=1,
)


@given(batches=st.lists(st.lists(number_record, max_size=6), min_size=1, max_size=4))
def test_ints_and_floats_in_one_column_are_never_refused(
    batches: list[list[dict[str, Any]]],
) -> None:
    """int64 widens to float64: numbers of either kind, in any order, are all written."""
    with TemporaryDirectory() as tmp:
        sink = ParquetSink(Path(tmp), "r", SinkOptions(row_group_rows=3, max_rows_per_file=4))
        for batch in batches:
            assert sink.write(batch) == []
        sink.close()
        rows = ds.dataset(Path(tmp) / "r", format="parquet").to_table().to_pylist()
    want = [r for b in batches for r in b]
    assert [{k: norm(v) for k, v in r.items() if v is not None} for r in rows] == [
        {k: norm(v) for k, v in r.items() if v is not None} for r in want
    ]


@pytest.mark.xfail(
    strict=True,
    reason="found by the property above: a batch whose records have no field at all makes a "
    "table of no columns and so no rows; the records are neither written nor refused",
)
def test_a_batch_of_records_without_fields_is_written_or_refused(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "r", SinkOptions())
    refused = sink.write([{}, {}])
    sink.close()
    assert sink.rows_written + len(refused) == 2
