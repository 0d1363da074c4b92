"""The HTTP layer: one aiohttp session, one request at a time, every failure classified.

It owns the things that keep secrets and the process safe:

* credentials (bearer, API-key header or query parameter, or an OAuth access token) are
  attached only to URLs on the configured origin (scheme, host, port); a next-page link or a
  redirect to another host gets the request without them (``credentials.py``);
* with OAuth (``oauth.py``) the request waits for the one shared token request before its
  deadline starts, and a 401 to the token drops it and sends the request again with a fresh
  one, once, as one more hop (its own slot of the limits); a second 401 is the answer;
* redirects are followed here (at most 5), not by aiohttp, so that rule holds on every hop,
  and so every hop holds its own slot of the limits (``fetch``'s ``acquire``): a redirect is
  one more request reaching the server; more hops than that fail as ``too many redirects``;
* aiohttp's hidden re-send of an idempotent request on a reused connection the server closed
  is turned off: that re-send would reach the server without a slot. The reset comes back as
  a failure, and the retry policy retries it under a new slot;
* a query parameter carrying the secret in a link the API sends back (next page, redirect)
  is removed (:meth:`HttpClient.scrub`), so the secret is never kept in a request that is
  persisted, and never sent to another origin; for ``query`` auth it is added back at send
  time, for the configured origin only;
* the whole request, body included, runs under the total deadline (kept coarsely by
  :class:`~asyncingest.limits.deadlines.Deadlines`: one timer for all requests, not one each), and a
  gap between body chunks longer than ``read_timeout`` fails it, so a trickling body cannot
  hang a worker;
* bodies larger than ``max_body_bytes`` are refused: from Content-Length, or counted on the
  *decompressed* bytes while reading (a gzip bomb stops at the cap; it is never inflated whole).

``fetch`` never raises for network trouble: it returns a ``Response`` or a ``Failure``. It
raises only when there can be no token (the token endpoint refused the client credentials, or
never answered: see ``oauth.py``), which ends the run.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from ..config.models import ApiConfig, OAuth2Config, PipelineConfig
from ..core.json import dumps as json_dumps
from ..core.request import Request
from ..core.retry import Failure, FailureKind, parse_retry_after, retry_policy
from ..errors import ConfigError, Problem
from ..limits.clock import Clock, LoopClock
from ..limits.deadlines import Deadlines
from ..limits.limiter import Permit
from .credentials import Credentials, origin, scrub, scrub_next
from .oauth import MAX_TOKEN_BODY, OAuthCredentials, TokenKeeper, refused_again

__all__ = [  # the names both engines and the sync client take from here
    "MAX_REDIRECTS",
    "REDIRECTS",
    "STOPPED",
    "Credentials",
    "HttpClient",
    "Response",
    "credentials_from_env",
    "origin",
    "scrub",
    "scrub_next",
    "snippet",
]

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
"""The statuses followed as redirects, hop by hop (both HTTP clients)."""
_PLAIN: dict[str, Any] = {"allow_redirects": False}
# What an attempt can fail with once sent; anything else is a bug and propagates.
_ANSWERED_ERRORS = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
)


# Not frozen (treat as immutable): a frozen dataclass costs ~0.6 us more per instance, and
# the engine makes one per request.
@dataclass(slots=True)
class Response:
    """A complete response: status, headers, the (decompressed) body and the final URL."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL


# What ``fetch`` returns when a graceful stop came while a redirect hop waited for its slot:
# nothing was answered, so the caller records nothing (the resumed run asks again).
STOPPED = Failure(FailureKind.CONNECTION, "stopped before a redirect hop was sent")

# A hop's own slot of the limits: a permit, or None when the run is stopping.
AcquireHop = Callable[[], Awaitable[Permit | None]]


class HttpClient:
    """An aiohttp session configured from ``ApiConfig``. Use as an async context manager."""

    def __init__(
        self,
        api: ApiConfig,
        credentials: Credentials | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.api = api
        self.credentials = credentials
        self._clock = clock or LoopClock()
        # OAuth: the access token, fetched and replaced as http/oauth.py says (in __aenter__).
        self.tokens: TokenKeeper | None = None
        self._token_session: aiohttp.ClientSession | None = None
        self._origin = origin(URL(str(api.base_url)))
        self._session: aiohttp.ClientSession | None = None
        h = api.http
        self._total = h.total_timeout
        self._deadlines = Deadlines.for_timeout(h.total_timeout)
        self._max_body = h.max_body_bytes
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=h.connect_timeout,
            sock_connect=h.connect_timeout,
            # No sock_read here: aiohttp re-arms that timer on every read of every response
            # (three timer handles per request with ours). The total deadline below bounds
            # every request; the gap between chunks is checked in _read for bodies of unknown
            # length, the ones that can stream forever.
            sock_read=None,
        )
        self._headers = {"User-Agent": h.user_agent, "Accept": "application/json", **api.headers}
        # Built once: what a request to the configured origin adds (the secret), per kind.
        self._auth_headers: dict[str, str] = {}
        self._auth_params: list[tuple[str, str]] = []
        if credentials is not None and not isinstance(credentials, OAuthCredentials):
            credentials.apply(self._auth_headers, self._auth_params)

    async def __aenter__(self) -> HttpClient:
        h = self.api.http
        # True: the default context (certificates verified); False: verification off.
        ssl_ctx: ssl.SSLContext | bool = bool(h.verify_tls)
        connector = aiohttp.TCPConnector(
            limit=h.max_connections,
            limit_per_host=h.max_connections_per_host,
            ssl=ssl_ctx,
            ttl_dns_cache=300,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            raise_for_status=False,
            auto_decompress=True,
            trust_env=False,
            headers=self._headers,
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        # aiohttp re-sends an idempotent request once, inside one call, when a reused
        # keep-alive connection turns out closed (ClientSession._request,
        # "retry_persistent_connection"). That second arrival would carry no slot of the
        # limits, so it is turned off the way aiohttp's own TestClient does; the failure comes
        # back here and the retry policy asks again under a new slot. (aiohttp 3.11 added the
        # switch, hence the minimum in pyproject.toml; a test fails if a release drops it.)
        if "_retry_connection" in aiohttp.ClientSession.ATTRS:
            session._retry_connection = False
        self._session = session
        if isinstance(self.credentials, OAuthCredentials):
            # Its own session: the token host gets none of the API's headers, and no cookie or
            # connection of the API's.
            self._token_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=2, ssl=ssl_ctx),
                timeout=aiohttp.ClientTimeout(
                    total=h.total_timeout, connect=h.connect_timeout, sock_read=h.read_timeout
                ),
                trust_env=False,
                headers={"User-Agent": h.user_agent},
            )
            self.tokens = TokenKeeper(
                self.credentials, self._request_token, self._clock, retry_policy(self.api.retry)
            )
        return self

    async def _request_token(self) -> tuple[int, bytes, float | None] | Failure:
        """One token request (see http/oauth.py): status, body (at most MAX_TOKEN_BODY bytes
        read) and Retry-After in seconds, or the failure; redirects are not followed."""
        credentials, session = self.credentials, self._token_session
        assert isinstance(credentials, OAuthCredentials) and session is not None
        form, headers = credentials.token_request()
        url = str(credentials.config.token_url)
        try:
            async with session.post(url, data=form, headers=headers, allow_redirects=False) as resp:
                body = await resp.content.read(MAX_TOKEN_BODY)
                wait = parse_retry_after(resp.headers.get("Retry-After"), self._clock.wall())
                return resp.status, body, wait
        except TimeoutError:
            return Failure(FailureKind.TIMEOUT, "token endpoint: timed out")
        except (aiohttp.ClientError, OSError) as exc:
            return Failure(FailureKind.CONNECTION, self.redact(f"token endpoint: {exc}"))

    async def __aexit__(self, *exc: object) -> None:
        self._deadlines.close()
        if self.tokens is not None:
            await self.tokens.close()
        if self._token_session is not None:
            await self._token_session.close()
            self._token_session = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def redact(self, text: str) -> str:
        """``text`` with the secret (and its query parameter value) removed."""
        return self.credentials.redact(text) if self.credentials else text

    def display_url(self, request: Request) -> str:
        """The request's URL as logs and events may show it (the secret redacted)."""
        return self.redact(str(request.full_url))

    def scrub(self, request: Request) -> Request:
        """``request`` without the secret in its URL (a link the API echoed it into), so it can
        be persisted (state, dead letters) and resumed: query auth re-adds it at send time."""
        return scrub(self.credentials, request)

    async def fetch(
        self, request: Request, permit: Permit | None = None, acquire: AcquireHop | None = None
    ) -> Response | Failure:
        """Send ``request`` (following redirects) and read the answer.

        ``permit`` is the slot of the limits the first hop was granted; ``fetch`` releases it
        once that hop's response is over. ``acquire`` is asked for a new slot before each
        redirect hop (every hop is a request reaching the server); it returns None when the
        run is stopping, and ``fetch`` then returns :data:`STOPPED`.
        """
        # One coroutine for the deadline and the hops: every await level is paid again on each
        # of the several resumptions a request takes inside aiohttp.
        session = self._session
        assert session is not None, "HttpClient used outside 'async with'"
        task: asyncio.Task[Any] | None = asyncio.current_task()
        assert task is not None, "HttpClient.fetch runs in a task"
        deadlines = self._deadlines
        url, params = request.url, list(request.params)
        method, body = request.method, request.json_body
        status = 0
        tokens = self.tokens
        token: str | None = None  # the OAuth token this hop carries
        refreshed = False  # a 401 has had its one refresh
        try:
            if tokens is not None and origin(url) == self._origin:
                # Waiting for the token is not part of the request's deadline.
                token = tokens.current() or await tokens.fresh()
            deadlines.arm(task, self._total)
            for hop in range(MAX_REDIRECTS + 1):
                if hop:
                    # The last hop's response is over: its slot starts expiring, and this hop
                    # waits for its own (given back first, so a concurrency cap cannot
                    # deadlock with every worker holding one slot and wanting another).
                    if permit is not None:
                        held, permit = permit, None
                        held.release()
                    if acquire is not None:
                        permit = await acquire()
                        if permit is None:
                            return STOPPED
                if tokens is not None:
                    if hop and origin(url) == self._origin:
                        token = tokens.current() or await tokens.fresh()
                    elif hop:
                        token = None  # another origin: no token
                    kwargs = self._kwargs(url, params, body, token)
                elif self.credentials is None and not params and body is None:
                    kwargs = _PLAIN  # the common case: no secret, no query, no body
                else:
                    kwargs = self._kwargs(url, params, body)
                try:
                    async with session.request(method, url, **kwargs) as resp:
                        status = resp.status
                        if status == 401 and token is not None:
                            assert tokens is not None
                            if not refreshed:
                                # Drop the token and send this request again (its own slot, as
                                # a hop) with a fresh one, once.
                                refreshed = True
                                tokens.refused(token)
                                continue
                            tokens.refused_again(token)
                            answer = await self._read(resp)
                            return refused_again(answer) if isinstance(answer, Failure) else answer
                        if status in REDIRECTS and "Location" in resp.headers:
                            url = resp.url.join(URL(resp.headers["Location"]))
                            if self.credentials is not None:
                                url = self.credentials.scrub_url(url)
                            params = []
                            if status == 303 or (status in (301, 302) and method == "POST"):
                                method, body = "GET", None
                            continue
                        return await self._read(resp)
                except _ANSWERED_ERRORS as exc:
                    return self._failed(exc)
                except OSError as exc:
                    return Failure(FailureKind.CONNECTION, self.redact(f"connection failed: {exc}"))
            return Failure(
                FailureKind.TOO_MANY_REDIRECTS,
                self.redact(f"more than {MAX_REDIRECTS} redirects, the last to {url}"),
                status=status,
            )
        except asyncio.CancelledError:
            if deadlines.expired(task):
                return Failure(FailureKind.TIMEOUT, f"no complete response within {self._total:g}s")
            raise
        finally:
            deadlines.disarm(task)
            if permit is not None:
                permit.release()

    def _kwargs(
        self, url: URL, params: list[tuple[str, str]], body: Any, token: str | None = None
    ) -> dict[str, Any]:
        """``session.request`` arguments for one hop: the secret (or the OAuth ``token``) only
        for the origin."""
        kwargs: dict[str, Any] = {"allow_redirects": False}
        send_params = params
        if token is not None:  # the caller checked the origin
            kwargs["headers"] = {"Authorization": f"Bearer {token}"}
        elif self.credentials is not None and origin(url) == self._origin:
            if self._auth_headers:
                kwargs["headers"] = self._auth_headers
            if self._auth_params:
                send_params = params + self._auth_params
        if send_params:
            kwargs["params"] = send_params
        if body is not None:
            kwargs["data"] = json_dumps(body)  # integers beyond 64 bits exact
            kwargs["headers"] = {**kwargs.get("headers", {}), "Content-Type": "application/json"}
        return kwargs

    def _failed(self, exc: aiohttp.ClientError) -> Failure:
        """What an aiohttp error means for the retry policy (the secret redacted)."""
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return Failure(FailureKind.TIMEOUT, self.redact(f"timed out: {exc}"))
        if isinstance(exc, aiohttp.ClientPayloadError):
            kind = FailureKind.TRUNCATED if "length" in str(exc).lower() else FailureKind.RESET
            return Failure(kind, self.redact(f"body cut short: {exc}"))
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return Failure(FailureKind.RESET, self.redact(f"server disconnected: {exc}"))
        if isinstance(exc, aiohttp.ClientConnectionError):
            return Failure(FailureKind.CONNECTION, self.redact(f"connection failed: {exc}"))
        return Failure(FailureKind.CONNECTION, self.redact(f"bad response: {exc}"))

    async def _read(self, resp: aiohttp.ClientResponse) -> Response | Failure:
        cap = self._max_body
        length = resp.content_length
        if length is not None and length > cap:
            return Failure(
                FailureKind.BODY_TOO_LARGE,
                f"Content-Length {length} exceeds max_body_bytes {cap}",
                status=resp.status,
            )
        if length is not None and "Content-Encoding" not in resp.headers:
            data = await resp.read()  # at most ``cap`` bytes, as sent
        else:
            # Unknown length, or compressed (the length is the compressed size, and a gzip
            # bomb inflates 1000-fold): count the decompressed bytes as they arrive; aiohttp
            # inflates incrementally, a bounded piece per read.
            chunks, size = [], 0
            gap = self.api.http.read_timeout
            while True:
                try:
                    async with asyncio.timeout(gap):
                        chunk = await resp.content.readany()
                except TimeoutError:
                    return Failure(FailureKind.TIMEOUT, f"no body data for {gap:g}s (read_timeout)")
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    return Failure(
                        FailureKind.BODY_TOO_LARGE,
                        f"body exceeds max_body_bytes {cap}"
                        f"{' once decompressed' if 'Content-Encoding' in resp.headers else ''}"
                        f" (stopped after {size} bytes)",
                        status=resp.status,
                    )
                chunks.append(chunk)
            data = b"".join(chunks)
        if resp.status >= 300:
            detail = f"HTTP {resp.status}{snippet(data)}"
            return Failure.answered(resp.status, detail, resp.headers, self._clock.wall())
        return Response(resp.status, resp.headers, data, resp.url)


def snippet(body: bytes, limit: int = 200) -> str:
    """``": <start of the body>"`` on one line for a failure's detail, or ``""`` when empty."""
    text = body[:limit].decode("utf-8", "replace").strip().replace("\n", " ")
    return f": {text}" if text else ""


def credentials_from_env(cfg: PipelineConfig) -> Credentials | None:
    """The credentials the config names, the secret read from its environment variable (or
    None without ``api.auth``); a ``ConfigError`` when the variable is unset. Both engines."""
    auth = cfg.api.auth
    if auth is None:
        return None
    if isinstance(auth, OAuth2Config):
        return _oauth_from_env(auth)
    secret = os.environ.get(auth.env)
    if not secret:
        raise ConfigError(
            "environment", [Problem("api.auth.env", f"environment variable {auth.env} is not set")]
        )
    return Credentials(auth.type, auth.name, secret)


def _oauth_from_env(auth: OAuth2Config) -> OAuthCredentials:
    values, problems = [], []
    for field, name in (
        ("client_id_env", auth.client_id_env),
        ("client_secret_env", auth.client_secret_env),
    ):
        value = os.environ.get(name)
        if not value:
            problems.append(Problem(f"api.auth.{field}", f"environment variable {name} is not set"))
        values.append(value or "")
    if problems:
        raise ConfigError("environment", problems)
    return OAuthCredentials(auth, values[0], values[1])
