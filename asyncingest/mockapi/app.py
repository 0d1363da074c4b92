"""The mock server: one request pipeline, started by :class:`MockAPI` (tests, ``asyncingest
demo``, benchmarks) or :func:`serve` (``asyncingest mock-api``).

Every non-admin request goes through the same steps, in order:

1. arrival: read the loop clock once (``now``), count the request, its route and credentials;
2. referee: each sliding window counts the arrival; a violation is counted and, when enforcing,
   answered 429 with ``Retry-After`` (see ``ratelimit.py`` for which arrivals count);
3. auth: with ``settings.token`` set, a request without ``Authorization: Bearer <token>``,
   ``X-API-Key: <token>`` or ``?api_key=<token>`` gets 401; with ``settings.oauth`` set, one
   without a bearer token the token endpoint issued (live, not revoked) gets 401;
4. fault choice (``faults.py``), per URL and attempt;
5. latency: ``latency_ms`` plus seeded jitter (skipped entirely when both are 0);
6. endpoint (``routes.py``) -> reply, then sent as is or broken by the chosen fault;
7. the status is counted and ``(now, method, path, status)`` appended to the bounded log.

``GET /_stats``, ``POST /_reset``, ``POST /_revoke`` (revoke every OAuth token), ``POST /_edit``
(change the CRM records: ``Routes.edit``, e.g. ``curl -XPOST localhost:8000/_edit -d
'{"fraction": 0.01, "advance": 86400}'`` for a day and 1% of the contacts) and the OAuth
token endpoint (``oauth.py``: counted apart, never refereed) skip all of it. aiohttp's
low-level ``web.Server`` is used (no router, no middlewares, no access log) to keep the
per-request path short.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web

from .data import Dataset
from .faults import JSON, FaultPlan, Reply, send_fault
from .oauth import TokenIssuer
from .ratelimit import SlidingWindowReferee
from .routes import BadRequest, Call, Route, Routes, error_reply, json_reply
from .settings import MockSettings
from .stats import MockStats

logger = logging.getLogger("asyncingest.mockapi")

_STATUS_FAULTS = frozenset({"status_500", "status_503", "status_429"})
_ADMIN = frozenset({"/_stats", "/_reset", "/_revoke", "/_edit"})


class _Pipeline:
    """The request handler aiohttp calls; see the module docstring for the steps."""

    def __init__(self, api: MockAPI) -> None:
        s = api.settings
        self.api = api
        self.stats = api.stats
        self.routes = Routes(api.dataset)
        self.referee = api.referee if s.rate_limits else None
        self.faults = api.faults if api.faults.active else None
        self.token = s.token
        self.bearer = f"Bearer {s.token}"
        self.issuer = api.issuer
        self.token_path = s.oauth.token_path if s.oauth is not None else None
        self.protected = s.token is not None or s.oauth is not None
        self.slow_body_seconds = s.slow_body_seconds
        self.fault_retry_after = s.fault_retry_after
        self.latency = s.latency_ms / 1000 if s.has_latency else None
        self.jitter = s.latency_jitter_ms / 1000
        self.rng = random.Random(f"latency:{s.seed}")
        self.time = asyncio.get_running_loop().time

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path in _ADMIN:
            return await self._admin(request, path)
        now = self.time()
        if path == self.token_path and self.issuer is not None:
            return await self._token(request, self.issuer, now)
        stats = self.stats
        stats.requests += 1
        found = self.routes.resolve(path)
        stats.by_path[found[0].template if found is not None else "<unmatched>"] += 1
        query = request.query
        headers = request.headers
        if "Authorization" in headers or "X-API-Key" in headers or "api_key" in query:
            stats.auth_seen += 1
        reply: Reply | None = None
        fault = None
        if self.referee is not None:
            wait = self.referee.arrive(now)
            if wait is not None:
                stats.throttled += 1
                header = {"Retry-After": self.referee.retry_after_header(wait)}
                reply = error_reply(429, "rate limit exceeded", header, retry_after=round(wait, 3))
        if reply is None and self.protected and not self._authorized(request, now):
            stats.unauthorized += 1
            challenge = "Bearer"
            if self.issuer is not None:
                self.issuer.stats.rejected_bearer += 1
                challenge = 'Bearer error="invalid_token"'
            reply = Reply(
                401, b'{"error":"unauthorized","status":401}', {"WWW-Authenticate": challenge}
            )
        if reply is None and self.faults is not None:
            fault = self.faults.choose(path, request.query_string)
        if self.latency is not None:
            await asyncio.sleep(self.latency + self.jitter * self.rng.random())
        if reply is None and fault not in _STATUS_FAULTS:
            reply = await self._endpoint(request, found)
        if fault is not None:
            stats.faults[fault] += 1
            response = await send_fault(
                fault,
                request,
                reply or Reply(200, b"{}"),
                self.slow_body_seconds,
                self.fault_retry_after,
            )
        else:
            assert reply is not None
            response = web.Response(
                status=reply.status, body=reply.body, headers=reply.headers, content_type=JSON
            )
        stats.finish(now, request.method, path, response.status)
        return response

    async def _token(
        self, request: web.BaseRequest, issuer: TokenIssuer, now: float
    ) -> web.StreamResponse:
        """The OAuth token endpoint: counted apart, never refereed (``oauth.py``)."""
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        answer = issuer.token_request(request.headers, await request.read(), now)
        return web.Response(
            status=answer.status, body=answer.body, headers=answer.headers, content_type=JSON
        )

    def _authorized(self, request: web.BaseRequest, now: float) -> bool:
        headers = request.headers
        if self.issuer is not None and self.issuer.valid(headers.get("Authorization"), now):
            return True
        if self.token is None:
            return False
        return (
            headers.get("Authorization") == self.bearer
            or headers.get("X-API-Key") == self.token
            or request.query.get("api_key") == self.token
        )

    async def _endpoint(
        self, request: web.BaseRequest, found: tuple[Route, str | None] | None
    ) -> Reply:
        if found is None:
            return error_reply(404, "not found", path=request.path)
        route, param = found
        if request.method != route.method:
            return Reply(
                405, b'{"error":"method not allowed","status":405}', {"Allow": route.method}
            )
        body = await request.read() if route.method == "POST" else b""
        try:
            return route.endpoint(Call(request.query, param, body, f"http://{request.host}"))
        except BadRequest as exc:
            return error_reply(400, str(exc))

    async def _admin(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        if path == "/_stats" and request.method == "GET":
            try:
                log = int(request.query.get("log", "0"))
            except ValueError:
                log = 0
            reply = json_reply(self.stats.to_dict(log=log))
        elif path == "/_reset" and request.method == "POST":
            self.api.reset()
            reply = json_reply({"reset": True})
        elif path == "/_revoke" and request.method == "POST":
            reply = json_reply({"revoked": self.api.revoke_tokens()})
        elif path == "/_edit" and request.method == "POST":
            call = Call(request.query, None, await request.read(), f"http://{request.host}")
            try:
                reply = self.routes.edit(call)
            except BadRequest as exc:
                reply = error_reply(400, str(exc))
        else:
            reply = Reply(405, b'{"error":"method not allowed","status":405}')
        return web.Response(status=reply.status, body=reply.body, content_type=JSON)


class MockAPI:
    """The mock API on a free loopback port for the life of an ``async with`` block.

    >>> async with MockAPI(MockSettings.small()) as api:    # doctest: +SKIP
    ...     api.url, api.stats.requests, api.dataset.laps[0]
    """

    def __init__(
        self,
        settings: MockSettings | None = None,
        *,
        dataset: Dataset | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.settings = settings if settings is not None else MockSettings.small()
        self.dataset = dataset if dataset is not None else Dataset.build(self.settings)
        self.referee = SlidingWindowReferee(
            self.settings.rate_limits, enforce=self.settings.enforce_rate_limit
        )
        self.faults = FaultPlan(self.settings)
        self.stats = MockStats(self.referee)
        oauth = self.settings.oauth
        self.issuer = TokenIssuer(oauth) if oauth is not None else None
        """The OAuth token endpoint (``settings.oauth``): its ``stats`` count token requests."""
        self._host = host
        self._port = port
        self._runner: web.ServerRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash). Only while running."""
        if self._url is None:
            raise RuntimeError("MockAPI is not running; use `async with MockAPI(...)`")
        return self._url

    async def start(self) -> None:
        """Bind the port (0: any free one) and serve; :attr:`url` is then set. Raises if already
        running."""
        if self._runner is not None:
            raise RuntimeError("MockAPI is already running")
        server = web.Server(_Pipeline(self), access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=0.5)
        await runner.setup()
        try:
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            sock = socket.create_server((self._host, self._port), family=family, backlog=1024)
            await web.SockSite(runner, sock, backlog=1024).start()
        except BaseException:
            await runner.cleanup()
            raise
        port = sock.getsockname()[1]
        host = f"[{self._host}]" if family == socket.AF_INET6 else self._host
        self._runner, self._url = runner, f"http://{host}:{port}"

    async def close(self) -> None:
        """Stop serving (connections closed, at most 0.5 s of grace). Idempotent."""
        runner, self._runner, self._url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    def reset(self) -> None:
        """What ``POST /_reset`` does: zero the counters and forget per-URL fault attempts
        (so faults replay). The data and the rate-limit windows' arrivals are kept."""
        self.stats.reset()
        self.faults.reset()

    def revoke_tokens(self) -> int:
        """What ``POST /_revoke`` does: every OAuth token issued so far is refused from now on
        (401); returns how many there were."""
        return self.issuer.revoke_all() if self.issuer is not None else 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        where = self._url or "stopped"
        return f"MockAPI({where}, seed={self.settings.seed}, {self.stats!r})"


async def serve(
    settings: MockSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    on_ready: Callable[[MockAPI], None] | None = None,
) -> None:
    """Run the mock API until cancelled. Prints nothing: once listening it logs
    ``mock API listening on <url>`` (logger ``asyncingest.mockapi``, INFO) and calls
    ``on_ready(api)`` (``api.url``, ``api.stats``, ``api.dataset``)."""
    async with MockAPI(settings, host=host, port=port) as api:
        logger.info("mock API listening on %s", api.url)
        if on_ready is not None:
            on_ready(api)
        await asyncio.get_running_loop().create_future()
