"""A hostile HTTP server for the tests: named faults an attacker (or a broken API) would try.

Every request is logged as an :class:`Arrival` (monotonic time, raw path, query, headers), so
tests assert on what reached the server: how many requests per window, which exact raw path,
whether a secret was sent. Routes are plain aiohttp handlers under ``/h/<fault>``; the tests
start the app with ``aiohttp.test_utils.TestServer`` on loopback.

=====================  ==========================================================================
route                  what it does
=====================  ==========================================================================
/h/ok                  ``{"items": [{"id": 1}]}``
/h/reset-every-2nd     closes the connection without answering every other arrival of a query
/h/redirect            302 to ``/h/ok`` on every request
/h/redirect-loop       302 to itself (with the query string echoed back) forever
/h/huge-length         ``Content-Length: 2000000000`` and a few bytes
/h/endless             a chunked body that never ends
/h/gzip-bomb           a gzip body with a Content-Length that inflates far beyond it
/h/gzip-bomb-chunked   the same bomb without a Content-Length (chunked)
/h/trickle             one byte at a time, slowly
/h/deep                JSON nested 100,000 levels
/h/html                an HTML page with status 200
/h/nan                 ``NaN`` and ``Infinity`` in the JSON
/h/bad-utf8            invalid UTF-8 in a string
/h/empty               an empty 200
/h/no-content          204
/h/shape               records where the config says, but not a list of objects
/h/retry-after/{v}     429 with ``Retry-After: {v}`` the first time, then ok
/h/throttled           429 forever while ``healed`` is false, then ok
/h/ids/{id}            ``{"id": ...}`` echoing the raw path segment
/h/dot-records         records whose ids are ``..``, ``.`` and ``fine``
/h/echo-next           next link echoing the query string back (secrets included)
=====================  ==========================================================================
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

BOMB_INFLATED = 64 * 1024 * 1024  # what the gzip bomb inflates to (about 64 KB sent)
_ZERO_BLOCK = bytes(1024 * 1024)


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # time.monotonic() when the handler started
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]


def gzip_bomb(inflated: int = BOMB_INFLATED) -> bytes:
    """``inflated`` zero bytes, gzip-compressed (about 1000:1), built in 1 MB steps."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    out = [comp.compress(_ZERO_BLOCK) for _ in range(inflated // len(_ZERO_BLOCK))]
    out.append(comp.flush())
    return b"".join(out)


@dataclass
class HostileServer:
    """The app and what it saw. ``healed`` turns the 429-forever route into a good one."""

    arrivals: list[Arrival] = field(default_factory=list)
    healed: bool = False
    served_retry_after: set[str] = field(default_factory=set)
    on_arrival: Callable[[int], None] | None = None  # called with the arrival count
    _arrivals_of: Counter[str] = field(default_factory=Counter)  # reset-every-2nd, per query
    _bomb: bytes | None = None

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        for name, handler in {
            "ok": self.ok,
            "reset-every-2nd": self.reset_every_2nd,
            "redirect": self.redirect,
            "redirect-loop": self.redirect_loop,
            "huge-length": self.huge_length,
            "endless": self.endless,
            "gzip-bomb": self.gzip_bomb,
            "gzip-bomb-chunked": self.gzip_bomb_chunked,
            "trickle": self.trickle,
            "deep": self.deep,
            "html": self.html,
            "nan": self.nan,
            "bad-utf8": self.bad_utf8,
            "empty": self.empty,
            "no-content": self.no_content,
            "shape": self.shape,
            "throttled": self.throttled,
            "echo-next": self.echo_next,
            "dot-records": self.dot_records,
        }.items():
            r.add_get(f"/h/{name}", handler)
        r.add_get("/h/retry-after/{value}", self.retry_after)
        r.add_get("/h/ids/{id}", self.ids)
        r.add_get("/h/{tail:.*}", self.anything)
        return app

    def note(self, request: web.Request) -> None:
        self.arrivals.append(
            Arrival(
                time.monotonic(),
                request.path,
                request.raw_path,
                dict(request.query),
                dict(request.headers),
            )
        )
        if self.on_arrival is not None:
            self.on_arrival(len(self.arrivals))

    def bomb(self) -> bytes:
        if self._bomb is None:
            self._bomb = gzip_bomb()
        return self._bomb

    async def ok(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.json_response({"items": [{"id": 1}]})

    async def anything(self, request: web.Request) -> web.Response:
        """Whatever path a client resolved a template into (seen by tests via raw_path)."""
        self.note(request)
        return web.json_response({"items": [{"id": 0, "path": request.raw_path}]})

    async def reset_every_2nd(self, request: web.Request) -> web.StreamResponse:
        self.note(request)
        # per query, not per server: with a global count, concurrent requests could draw odd
        # numbers ten times running (the test then failed now and then); this way every
        # request is reset on its first arrival and answered on its second
        self._arrivals_of[request.query_string] += 1
        if self._arrivals_of[request.query_string] % 2 == 1:
            assert request.transport is not None
            request.transport.close()  # a keep-alive connection closed under the client
            await asyncio.sleep(0)
            raise ConnectionResetError
        return web.json_response({"items": [{"id": 1}]})

    async def redirect(self, request: web.Request) -> web.Response:
        self.note(request)
        raise web.HTTPFound("/h/ok")

    async def redirect_loop(self, request: web.Request) -> web.Response:
        self.note(request)
        raise web.HTTPFound(f"/h/redirect-loop?{request.query_string}")

    async def huge_length(self, request: web.Request) -> web.StreamResponse:
        self.note(request)
        resp = web.StreamResponse(headers={"Content-Length": "2000000000"})
        resp.content_type = "application/json"
        await resp.prepare(request)
        await resp.write(b'{"items": [')
        return resp  # the connection is dropped: the client must not wait for 2 GB

    async def endless(self, request: web.Request) -> web.StreamResponse:
        self.note(request)
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        await resp.write(b'{"items": [')
        chunk = b'{"id": 1},' * 6000
        try:
            while True:
                await resp.write(chunk)
        except (ConnectionError, RuntimeError):
            return resp

    async def gzip_bomb(self, request: web.Request) -> web.StreamResponse:
        self.note(request)
        body = self.bomb()
        resp = web.StreamResponse(
            headers={"Content-Encoding": "gzip", "Content-Length": str(len(body))}
        )
        resp.content_type = "application/json"
        await resp.prepare(request)
        try:
            for i in range(0, len(body), 64 * 1024):
                await resp.write(body[i : i + 64 * 1024])
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def gzip_bomb_chunked(self, request: web.Request) -> web.StreamResponse:
        self.note(request)
        body = self.bomb()
        resp = web.StreamResponse(headers={"Content-Encoding": "gzip"})
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for i in range(0, len(body), 64 * 1024):
                await resp.write(body[i : i + 64 * 1024])
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        self.note(request)
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        resp.content_type = "application/json"
        await resp.prepare(request)
        try:
            for _ in range(1000):
                await resp.write(b" ")
                await asyncio.sleep(0.2)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def deep(self, request: web.Request) -> web.Response:
        self.note(request)
        n = 100_000
        return web.Response(
            body=b'{"items": [' + b"[" * n + b"]" * n + b"]}", content_type="application/json"
        )

    async def html(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(text="<html><body>Maintenance</body></html>", content_type="text/html")

    async def nan(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(
            body=b'{"items": [{"id": 1, "x": NaN, "y": Infinity}]}',
            content_type="application/json",
        )

    async def bad_utf8(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(
            body=b'{"items": [{"id": 1, "name": "\xff\xfe"}]}', content_type="application/json"
        )

    async def empty(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(body=b"", content_type="application/json")

    async def no_content(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(status=204)

    async def shape(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.json_response({"items": {"id": 1}})

    async def retry_after(self, request: web.Request) -> web.Response:
        self.note(request)
        value = request.match_info["value"]
        if value not in self.served_retry_after:
            self.served_retry_after.add(value)
            headers = {"Retry-After": value}
            return web.json_response({"error": "slow down"}, status=429, headers=headers)
        return web.json_response({"items": [{"id": 1}]})

    async def throttled(self, request: web.Request) -> web.Response:
        self.note(request)
        if not self.healed:
            headers = {"Retry-After": "0"}
            return web.json_response({"error": "slow down"}, status=429, headers=headers)
        return web.json_response({"items": [{"id": int(request.query.get("n", "1"))}]})

    async def dot_records(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.json_response({"items": [{"id": ".."}, {"id": "."}, {"id": "fine"}]})

    async def ids(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.json_response({"items": [{"id": request.match_info["id"]}]})

    async def echo_next(self, request: web.Request) -> web.Response:
        self.note(request)
        page = int(request.query.get("page", "1"))
        nxt = f"/h/echo-next?{request.query_string}".replace(f"page={page}", f"page={page + 1}")
        if "page=" not in nxt:
            nxt += "&page=2"
        return web.json_response({"items": [{"id": page}], "next": nxt if page < 3 else None})


def encode_gzip(data: bytes) -> bytes:
    return gzip.compress(data)


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)
