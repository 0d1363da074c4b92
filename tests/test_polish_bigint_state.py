"""A checkpoint holds integers beyond 64 bits exactly: a walk whose cursor (or request body)
holds such an integer is saved part way, and the resumed run sends the very same request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import asyncingest
from asyncingest import Engine, config_from_dict
from asyncingest.state.checkpoint import load_state, state_path

BIG = 18446744073709551617  # 2**64 + 1: orjson cannot write it, and reads it as a float
BIGGER = 18446744073709551619


class CursorAPI:
    """Three pages; the second cursor is ``BIG`` (a JSON number) and asking for it stops
    the engine, so the run is checkpointed in the middle of the walk."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []
        self.engine: Engine | None = None

    async def items(self, request: web.Request) -> web.Response:
        cursor = request.query.get("after")
        self.asked.append(cursor)
        if cursor is None:
            body = b'{"items": [{"id": 1}, {"id": 2}], "next": %d}' % BIG
        elif cursor == str(BIG):
            if self.engine is not None and self.engine.phase == "running":
                self.engine.stop()
                return web.Response(status=503)  # the walk stops before this page
            body = b'{"items": [{"id": 3}], "next": %d}' % BIGGER
        elif cursor == str(BIGGER):
            body = b'{"items": [{"id": 4}], "next": null}'
        else:
            return web.Response(status=400, text=f"unknown cursor {cursor!r}")
        return web.Response(body=body, content_type="application/json")


@pytest.fixture
async def cursor_api() -> AsyncIterator[tuple[CursorAPI, str]]:
    api = CursorAPI()
    app = web.Application()
    app.router.add_get("/items", api.items)
    server = TestServer(app)
    await server.start_server()
    try:
        yield api, str(server.make_url(""))
    finally:
        await server.close()


def cursor_config(url: str, out: Path) -> dict[str, Any]:
    return {
        "api": {
            "base_url": url,
            "retry": {"max_attempts": 3, "backoff_base": 0.01, "backoff_max": 0.02},
            "adaptive_rate": False,
        },
        "output": {"directory": str(out), "checkpoint_seconds": 0.05},
        "endpoints": [
            {
                "name": "items",
                "path": "/items",
                "primary_key": "id",
                "records": "items",
                "pagination": {"type": "cursor", "cursor_path": "next", "limit_param": None},
            }
        ],
    }


async def test_a_cursor_beyond_64_bits_is_checkpointed_and_resumed_exactly(
    tmp_path: Path, cursor_api: tuple[CursorAPI, str]
) -> None:
    api, url = cursor_api
    out = tmp_path / "out"
    cfg = config_from_dict(cursor_config(url, out))
    api.engine = Engine(cfg)
    first = await api.engine.run()
    assert first.stopped
    assert str(BIG) in state_path(out).read_text()  # the next request, with its cursor
    state = load_state(out)
    assert state is not None and state.endpoints["items"].partial
    api.engine = None
    second = await asyncingest.run(cfg)
    assert second.ok and second.note == "resumed"
    assert api.asked[-2:] == [str(BIG), str(BIGGER)]  # not 1.8446744073709552e+19
    assert api.asked.count(None) == 1  # the first page is not asked again
    ids = sorted(pq.read_table(out / "items").column("id").to_pylist())
    assert ids == [1, 2, 3, 4]


class AccountsAPI(CursorAPI):
    """One account whose id is ``BIG``; its items are asked by POST with the id in the body
    (a placeholder keeps the parent field's JSON type) and walked by cursor."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    async def accounts(self, request: web.Request) -> web.Response:
        return web.Response(body=b'[{"id": %d}]' % BIG, content_type="application/json")

    async def post_items(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return await self.items(request)


async def test_a_walk_whose_body_holds_an_integer_beyond_64_bits_resumes_exactly(
    tmp_path: Path,
) -> None:
    api = AccountsAPI()
    app = web.Application()
    app.router.add_get("/accounts", api.accounts)
    app.router.add_post("/items", api.post_items)
    server = TestServer(app)
    await server.start_server()
    try:
        raw = cursor_config(str(server.make_url("")), tmp_path / "out")
        items = raw["endpoints"][0]
        items |= {
            "method": "POST",
            "body": {"account": "{account}"},
            "for_each": {"endpoint": "accounts", "bind": {"account": "id"}},
        }
        raw["endpoints"].insert(0, {"name": "accounts", "path": "/accounts", "primary_key": "id"})
        cfg = config_from_dict(raw)
        api.engine = Engine(cfg)
        assert (await api.engine.run()).stopped
        state = load_state(tmp_path / "out")
        assert state is not None
        (walk,) = state.endpoints["items"].partial.values()
        assert walk["body"] == {"account": BIG}  # exact, not 1.8446744073709552e+19
        api.engine = None
        assert (await asyncingest.run(cfg)).ok
    finally:
        await server.close()
    assert api.asked[-2:] == [str(BIG), str(BIGGER)] and api.asked.count(None) == 1
    assert {b.replace(b" ", b"") for b in api.bodies} == {b'{"account":%d}' % BIG}
    ids = sorted(pq.read_table(tmp_path / "out" / "items").column("id").to_pylist())
    assert ids == [1, 2, 3, 4]
