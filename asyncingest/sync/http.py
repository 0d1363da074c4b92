"""The HTTP layer for threads: one ``requests.Session`` per thread, one request at a time,
every failure classified. The blocking twin of ``asyncingest.http.client`` with the same rules:

* credentials (``http.client.Credentials``, shared) only for URLs on the configured origin;
  an OAuth token (``sync/oauth.py``) likewise, and a 401 to it refreshes it and sends the
  request again, once, under its own slot (as ``http/oauth.py`` says);
* redirects followed here, by hand (``allow_redirects=False``, at most 5), so that rule holds
  on every hop; ``trust_env=False``, so no ``.netrc`` credentials or proxies sneak in;
* ``connect_timeout`` to connect, ``read_timeout`` as the longest silence between two reads,
  and ``total_timeout`` for the whole request, body included. requests has no total timeout,
  so the body is read in a loop of ``raw.read1`` calls (each one socket read at most; unlike
  ``iter_content(n)``, which blocks until n bytes, so a trickling body could outlive the
  deadline) with the socket timeout set to ``min(read_timeout, time left)`` before each read;
* bodies larger than ``max_body_bytes`` are refused (from Content-Length, or while reading).

``fetch`` never raises for network trouble: it returns a :class:`Response` or a ``Failure``.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import requests
import urllib3
from yarl import URL

from ..config.models import ApiConfig
from ..core.json import dumps as json_dumps
from ..core.request import Request
from ..core.retry import Failure, FailureKind, retry_policy
from ..http.client import MAX_REDIRECTS, REDIRECTS, Credentials, origin, scrub, snippet
from ..http.oauth import OAuthCredentials, refused_again
from ..limits.limiter import Permit
from .oauth import SyncTokenKeeper, request_token

_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response from ``requests``: status, headers, body and final URL."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


class SyncHttpClient:
    """Sessions configured from ``ApiConfig``, one per calling thread. ``close()`` at the end."""

    def __init__(self, api: ApiConfig, credentials: Credentials | None = None) -> None:
        self.api = api
        self.credentials = credentials
        self._origin = origin(URL(str(api.base_url)))
        self._headers = {
            "User-Agent": api.http.user_agent,
            "Accept": "application/json",
            **api.headers,
        }
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self.tokens: SyncTokenKeeper | None = None
        self._token_session: requests.Session | None = None
        if isinstance(credentials, OAuthCredentials):
            # Its own session (used under the keeper's lock): none of the API's headers.
            token_session = self._token_session = requests.Session()
            token_session.trust_env = False
            token_session.verify = bool(api.http.verify_tls)
            token_session.headers["User-Agent"] = api.http.user_agent
            timeout = (api.http.connect_timeout, api.http.read_timeout)
            self.tokens = SyncTokenKeeper(
                credentials,
                lambda: request_token(token_session, credentials, timeout),
                retry_policy(api.retry),
            )

    def close(self) -> None:
        """Close every thread's session (their pooled connections)."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        if self._token_session is not None:
            sessions.append(self._token_session)
            self._token_session = None
        for s in sessions:
            s.close()

    def __repr__(self) -> str:
        return f"SyncHttpClient({self.api.base_url}, sessions={len(self._sessions)})"

    def redact(self, text: str) -> str:
        """``text`` with the secret removed."""
        return self.credentials.redact(text) if self.credentials else text

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.verify = bool(self.api.http.verify_tls)
            session.headers.update(self._headers)
            with self._sessions_lock:
                self._sessions.append(session)
            self._local.session = session
        return session

    def scrub(self, request: Request) -> Request:
        """``request`` without the secret in its URL (see ``HttpClient.scrub``)."""
        return scrub(self.credentials, request)

    def fetch(
        self,
        request: Request,
        permit: Permit | None = None,
        acquire: Callable[[], Permit] | None = None,
    ) -> Response | Failure:
        """Send ``request``, following redirects. ``permit`` (the first hop's slot) is released
        once that hop is answered; ``acquire`` gives each redirect hop its own slot."""
        held = [permit]  # the slot of the hop in flight; released at the end whatever happens
        try:
            return self._fetch(request, held, acquire)
        finally:
            if held[0] is not None:
                held[0].release()

    def _fetch(
        self, request: Request, held: list[Permit | None], acquire: Callable[[], Permit] | None
    ) -> Response | Failure:
        if self.tokens is not None and origin(request.url) == self._origin:
            self.tokens.token()  # waiting for the token is not part of the request's deadline
        deadline = time.monotonic() + self.api.http.total_timeout
        url, params = request.url, request.params
        method, body = request.method, request.json_body
        status = 0
        tokens = self.tokens
        token: str | None = None  # the OAuth token this hop carries
        refreshed = False  # a 401 has had its one refresh
        for hop in range(MAX_REDIRECTS + 1):
            if hop:  # the last hop is answered: its slot expires, this hop takes its own
                last, held[0] = held[0], None
                if last is not None:
                    last.release()
                if acquire is not None:
                    held[0] = acquire()
            headers: dict[str, str] = {}
            send_params = list(params)
            token = None
            if self.credentials is not None and origin(url) == self._origin:
                if tokens is not None:
                    token = tokens.token()
                    headers["Authorization"] = f"Bearer {token}"
                else:
                    self.credentials.apply(headers, send_params)
            data = None
            if body is not None:
                data = json_dumps(body)  # integers beyond 64 bits exact
                headers["Content-Type"] = "application/json"
            full = url.extend_query(send_params) if send_params else url
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._deadline_passed()
            h = self.api.http
            try:
                resp = self._session().request(
                    method,
                    str(full),
                    headers=headers,
                    data=data,
                    timeout=(min(h.connect_timeout, remaining), min(h.read_timeout, remaining)),
                    allow_redirects=False,
                    stream=True,
                )
            except requests.Timeout as exc:
                return self._timeout(exc, deadline)
            except (requests.RequestException, OSError) as exc:
                if _caused_by(exc, (http.client.RemoteDisconnected, ConnectionResetError)):
                    return Failure(FailureKind.RESET, self.redact(f"server disconnected: {exc}"))
                return Failure(FailureKind.CONNECTION, self.redact(f"connection failed: {exc}"))
            status = resp.status_code
            if status == 401 and token is not None:
                assert tokens is not None
                if not refreshed:  # drop the token; send this again with a fresh one, once
                    refreshed = True
                    resp.close()
                    tokens.refused(token)
                    continue
                tokens.refused_again(token)
                answer = self._read(resp, deadline)
                return refused_again(answer) if isinstance(answer, Failure) else answer
            if status in REDIRECTS and "Location" in resp.headers:
                resp.close()
                url = URL(resp.url).join(URL(resp.headers["Location"]))
                if self.credentials is not None:
                    url = self.credentials.scrub_url(url)
                params = ()
                if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                    method, body = "GET", None
                continue
            return self._read(resp, deadline)
        return Failure(
            FailureKind.TOO_MANY_REDIRECTS,
            self.redact(f"more than {MAX_REDIRECTS} redirects, the last to {url}"),
            status=status,
        )

    def _read(self, resp: requests.Response, deadline: float) -> Response | Failure:
        cap = self.api.http.max_body_bytes
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            resp.close()
            return Failure(
                FailureKind.BODY_TOO_LARGE,
                f"Content-Length {declared} exceeds max_body_bytes {cap}",
                status=resp.status_code,
            )
        raw = cast(urllib3.HTTPResponse, resp.raw)
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    resp.close()
                    return self._deadline_passed()
                _set_read_timeout(raw, min(self.api.http.read_timeout, remaining))
                chunk = raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    resp.close()
                    return Failure(
                        FailureKind.BODY_TOO_LARGE,
                        f"body exceeds max_body_bytes {cap}",
                        status=resp.status_code,
                    )
                chunks.append(chunk)
        except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
            resp.close()
            return self._timeout(exc, deadline)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            resp.close()
            truncated = _caused_by(exc, (http.client.IncompleteRead,))
            kind = FailureKind.TRUNCATED if truncated else FailureKind.RESET
            return Failure(kind, self.redact(f"body cut short: {exc}"))
        raw.release_conn()  # complete: the connection goes back to the pool (keep-alive)
        data = b"".join(chunks)
        status = resp.status_code
        if status >= 300:
            return Failure.answered(
                status, f"HTTP {status}{snippet(data)}", resp.headers, time.time()
            )
        return Response(status, resp.headers, data, resp.url)

    def _deadline_passed(self) -> Failure:
        return Failure(
            FailureKind.TIMEOUT, f"no complete response within {self.api.http.total_timeout:g}s"
        )

    def _timeout(self, exc: BaseException, deadline: float) -> Failure:
        if time.monotonic() >= deadline - 0.01:  # the socket timeout was the time left
            return self._deadline_passed()
        return Failure(FailureKind.TIMEOUT, self.redact(f"timed out: {exc}"))


def _set_read_timeout(raw: urllib3.HTTPResponse, seconds: float) -> None:
    """Bound the next socket read (best effort: the connection may already be gone)."""
    conn = raw.connection
    sock = getattr(conn, "sock", None) if conn is not None else None
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` or anything it wraps (``args``, cause, context) is one of ``kinds``.
    requests and urllib3 wrap the socket error two or three levels deep."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kinds):
            return True
        todo.extend([*e.args, e.__cause__, e.__context__])
    return False
