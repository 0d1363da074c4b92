"""The OAuth access token for threads: :class:`~asyncingest.http.oauth.TokenKeeper`'s blocking
twin, by the same rules (asyncingest/http/oauth.py): fetched on first use by one thread while
the others wait on a lock, replaced in the margin before expiry by the one thread that takes
the lock (the others go on with the still-valid token), dropped on a 401 once; the same answers
read the same way (``read_token_answer``), the same errors.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import requests

from ..core.retry import Failure, FailureKind, RetryPolicy, parse_retry_after
from ..http.oauth import (
    MAX_TOKEN_BODY,
    OAuthCredentials,
    Token,
    settle_token_request,
)

FetchToken = Callable[[], tuple[int, bytes, float | None] | Failure]


class SyncTokenKeeper:
    """The access token of one thread-pool client. ``now``/``sleep``: monotonic seconds and a
    blocking wait (replaced in tests)."""

    def __init__(
        self,
        credentials: OAuthCredentials,
        fetch: FetchToken,
        policy: RetryPolicy,
        *,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.credentials = credentials
        self._fetch = fetch
        self._policy = policy
        self._now = now
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # held by the one thread fetching
        self._token: Token | None = None
        self._error: BaseException | None = None
        self._stuck: str | None = None
        self.requests = 0
        self.issued = 0
        self.dropped = 0

    def token(self) -> str:
        """The token to send now, fetching it first when there is none valid (one thread
        fetches; the others wait for it)."""
        while True:
            if self._error is not None:
                raise self._error
            token, now = self._token, self._now()
            if token is not None and (token.refresh_at is None or now < token.refresh_at):
                return token.value
            if token is not None and token.expires_at is not None and now < token.expires_at:
                # In the margin: one thread refreshes, the others go on with the valid token.
                if self._lock.acquire(blocking=False):
                    try:
                        if self._token is token:
                            return self._obtain()
                    finally:
                        self._lock.release()
                    continue  # another thread refreshed it meanwhile
                return token.value
            with self._lock:
                if self._token is token and self._error is None:  # nobody fetched meanwhile
                    return self._obtain()

    def refused(self, token: str) -> None:
        """A 401 to a request carrying ``token``: drop it, as ``TokenKeeper.refused``."""
        current = self._token
        if current is not None and current.value == token and token != self._stuck:
            self._token = None
            self.dropped += 1

    def refused_again(self, token: str) -> None:
        """``token``, fetched after a 401, was refused too: a 401 will not drop it again."""
        self._stuck = token

    def _obtain(self) -> str:
        """Token requests until one gives a token, or the error (kept for every thread)."""
        started = self._now()
        attempt = 0
        try:
            while True:
                attempt += 1
                self.requests += 1
                sent = self._fetch()
                now = self._now()
                got = settle_token_request(
                    self.credentials, sent, self._policy, self._rng, attempt, now - started, now
                )
                if isinstance(got, Token):
                    self._token = got
                    self.issued += 1
                    return got.value
                self._sleep(got)
        except Exception as exc:
            self._error = exc
            raise

    def __repr__(self) -> str:
        held = "none" if self._token is None else "held"
        return (
            f"SyncTokenKeeper(token {held}, requests={self.requests}, issued={self.issued}, "
            f"dropped_on_401={self.dropped})"
        )


def request_token(
    session: requests.Session, credentials: OAuthCredentials, timeout: tuple[float, float]
) -> tuple[int, bytes, float | None] | Failure:
    """One token request with ``requests`` (redirects not followed), as the async client's:
    status, body and ``Retry-After`` in seconds, or the failure."""
    form, headers = credentials.token_request()
    try:
        with session.post(
            str(credentials.config.token_url),
            data=form,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        ) as resp:
            body = resp.raw.read(MAX_TOKEN_BODY, decode_content=True)
            wait = parse_retry_after(resp.headers.get("Retry-After"), time.time())
            return resp.status_code, body, wait
    except requests.Timeout:
        return Failure(FailureKind.TIMEOUT, "token endpoint: timed out")
    except (requests.RequestException, OSError) as exc:
        return Failure(FailureKind.CONNECTION, credentials.redact(f"token endpoint: {exc}"))
