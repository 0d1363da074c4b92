"""OAuth 2.0 client credentials (RFC 6749, section 4.4): the access token the API's requests carry
(``api.auth.type: oauth2_client_credentials``).

The rules, the same in both engines (this module holds what they share: the credentials, the
token request and how its answer is read, and :class:`TokenKeeper`, the async lifecycle; the
thread-pool twin is ``sync/oauth.py``):

* **Secrets from the environment only.** The client id and secret are read from the variables
  ``client_id_env`` and ``client_secret_env`` names; the config holds only those names.
* **Fetched on first use, once.** The first request that needs a token starts the token request;
  every request that needs one meanwhile waits for that same request (one shared task), so N
  requests in flight make one token request, not N.
* **Replaced before it expires.** From ``expires_in - margin`` (``refresh_margin``, at most half
  the token's life) the next request starts one refresh in the background and goes on with
  the current token, still valid: no request waits, and none is sent with an expired token.
  Only a request that finds the token expired (or none yet) waits. A token without
  ``expires_in`` is kept until the API refuses it.
* **A 401 refreshes once.** A 401 from the API to a request that carried the token drops that
  token (unless a refresh already replaced it: N requests refused together make one refresh),
  and the request is sent again, once, with the new one, under its own slot of the limits (it
  is one more request reaching the server, like a redirect hop). A second 401 fails the request
  as usual (dead-lettered, the reason saying a fresh token was refused too), and that token is
  not dropped on a 401 again: an API that refuses every token the endpoint issues (a wrong
  scope or audience) costs one token request per expiry, not one per request.
* **The token request takes no slot of the API's rate windows.** Those windows model the API's
  budget; the token endpoint is nearly always another host (an identity provider with its own
  limits), and even on the same host a token request comes once per token lifetime (typically
  an hour), which no request budget notices. Counting it would also make every request in flight
  hold a slot while it waits for the token: the first request of a run would wait on a slot it
  cannot use. So it is not counted; it is retried with the API's back-off (``api.retry``).
* **Failures of the token endpoint.** Connection errors, timeouts, 408, 429 and 5xx are retried
  with ``api.retry``'s back-off (honouring ``Retry-After``). Any other answer is a config error,
  raised as :class:`~asyncingest.errors.ConfigError` (the CLI exits 2, as for an unset variable):
  400/401 (``invalid_client``, ``unauthorized_client``) mean the client id or secret are wrong,
  and the message names the two variables (never their values); ``invalid_scope`` names
  ``api.auth.scope``; another status, a redirect or a body without ``access_token`` names
  ``api.auth.token_url``. Retries used up: :class:`TokenEndpointDown`, an
  :class:`~asyncingest.errors.EnvironmentFailure` (exit 4): nothing in the config is wrong, the
  network or the identity provider is, and the same command resumes once it answers. Either
  way the run stops, keeping its last checkpoint: with no token, no request can succeed, and
  going on would only dead-letter every request.
* **Secrets never shown.** :class:`OAuthCredentials` redacts the client secret and every access
  token of the run from every text it is asked about (failure details, URLs, dead letters, logs,
  events, run reports, errors), and drops any query parameter carrying one from a URL the API
  sends back. The token goes only to the API's origin (scheme, host, port), as every credential:
  a next-page link or a redirect to another host is sent without it, and the token endpoint's
  own redirects are not followed (the secret would go with them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..config.models import OAuth2Config
from ..core.retry import Failure, FailureKind, RetryPolicy
from ..errors import ConfigError, EnvironmentFailure, Problem
from ..limits.clock import Clock
from .credentials import Credentials

MAX_TOKEN_BODY = 64 * 1024
"""A token response longer than this is not one (it is refused unread beyond it)."""


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and, in the keeper's clock, when it is replaced and when it expires (None:
    the token endpoint gave no ``expires_in``; kept until the API refuses it)."""

    value: str
    refresh_at: float | None
    expires_at: float | None

    def __repr__(self) -> str:  # never the value
        return f"Token(***, refresh_at={self.refresh_at}, expires_at={self.expires_at})"


class TokenEndpointDown(EnvironmentFailure):
    """The token endpoint did not answer usefully within ``api.retry``'s attempts (connection
    errors, timeouts, 429 or 5xx): the run stops, keeping its checkpoint; exit 4."""


class OAuthCredentials(Credentials):
    """The client credentials and the access token they bought. As :class:`Credentials`, it is
    what the HTTP clients attach (``Authorization: Bearer <token>``, for the API's origin only)
    and what they redact with: here the client secret and every token of the run."""

    __slots__ = ("_client_secret", "_hidden", "client_id", "config")

    def __init__(self, config: OAuth2Config, client_id: str, client_secret: str) -> None:
        super().__init__("bearer", None, "")
        self.config = config
        self.client_id = client_id
        self._client_secret = client_secret
        self._hidden: list[str] = [client_secret]  # and each token issued, once used

    def use(self, token: str) -> None:
        """``token`` is the one requests carry from now on (and is hidden from every text)."""
        self._secret = token
        if token not in self._hidden:
            self._hidden.append(token)

    def secrets(self) -> tuple[str, ...]:
        """Every value never to show: the client secret and each token used so far."""
        return tuple(self._hidden)

    def token_request(self) -> tuple[dict[str, str], dict[str, str]]:
        """The token request's form fields and headers (RFC 6749 4.4.2, client authentication by
        HTTP Basic (2.3.1) or in the body, as ``client_auth`` says)."""
        c = self.config
        form = {"grant_type": "client_credentials"}
        if c.scope:
            form["scope"] = c.scope
        if c.audience:
            form["audience"] = c.audience
        headers = {"Accept": "application/json"}
        if c.client_auth == "basic":
            # RFC 6749 2.3.1: each part form-urlencoded before the Basic encoding.
            pair = f"{_form(self.client_id)}:{_form(self._client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.client_id
            form["client_secret"] = self._client_secret
        return form, headers

    def __repr__(self) -> str:
        c = self.config
        return f"OAuthCredentials({c.token_url}, id ${c.client_id_env}, secret ***, token ***)"

    __str__ = __repr__


def _form(text: str) -> str:
    return urllib.parse.quote_plus(text, safe="")


def read_token_answer(
    credentials: OAuthCredentials,
    status: int,
    body: bytes,
    now: float,
    retry_after: float | None = None,
) -> Token | Failure:
    """What a token endpoint's answer means: a :class:`Token` (times in the clock of ``now``),
    or a :class:`Failure` for an answer the caller retries (429, 5xx; ``retry_after`` is its
    ``Retry-After`` in seconds); raises ``ConfigError`` for one no retry fixes (the credentials,
    the scope, the URL)."""
    c = credentials.config
    if status in (408, 429) or status >= 500:
        return Failure(
            FailureKind.HTTP_STATUS,
            f"token endpoint: HTTP {status}{_snippet(credentials, body)}",
            status=status,
            retry_after=retry_after,
        )
    if 300 <= status < 400:
        raise _refused(
            c,
            "token_url",
            f"answered HTTP {status} (a redirect, not followed: "
            "set api.auth.token_url to where it leads)",
        )
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if status != 200:
        error = data.get("error") if isinstance(data, dict) else None
        said = _snippet(credentials, body)
        if error == "invalid_scope":
            raise _refused(c, "scope", f"refused the scope {c.scope!r} (HTTP {status}{said})")
        if status in (400, 401) and error != "unsupported_grant_type":
            raise _refused(
                c,
                "client_secret_env",
                f"refused the client credentials (HTTP {status}{said}); check the "
                f"environment variables {c.env_names}",
            )
        raise _refused(c, "token_url", f"answered HTTP {status}{said}")
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise _refused(c, "token_url", "answered 200 without an access_token")
    credentials.use(token)  # hidden from every text from now on, before anything can show it
    kind = data.get("token_type")
    if isinstance(kind, str) and kind.lower() != "bearer":
        raise _refused(c, "token_url", f"issued a {kind!r} token; only Bearer tokens are supported")
    life = _seconds(data.get("expires_in"))
    if life is None:
        return Token(token, None, None)
    margin = min(c.refresh_margin, life / 2)
    return Token(token, now + life - margin, now + life)


def settle_token_request(
    credentials: OAuthCredentials,
    sent: tuple[int, bytes, float | None] | Failure,
    policy: RetryPolicy,
    rng: random.Random,
    attempt: int,
    elapsed: float,
    now: float,
) -> Token | float:
    """One token request's outcome, for both engines' token keepers: the :class:`Token`, or the
    seconds to wait before asking again (``api.retry``); raises :func:`down` when the policy
    gives up, ``ConfigError`` for an answer no retry fixes."""
    if isinstance(sent, Failure):
        answer: Token | Failure = sent
    else:
        status, body, retry_after = sent
        answer = read_token_answer(credentials, status, body, now, retry_after)
    if isinstance(answer, Token):
        return answer
    failure = Failure(
        answer.kind, credentials.redact(answer.detail), answer.status, answer.retry_after
    )
    decision = policy.decide(attempt, elapsed, failure, rng)
    if not decision.retry:
        raise down(credentials.config, decision.reason)
    return decision.wait


def _snippet(credentials: Credentials, body: bytes) -> str:
    """``": <start of the body>"`` (secrets redacted) for a message, or ``""``."""
    text = body[:160].decode("utf-8", "replace").strip().replace("\n", " ")
    return f": {credentials.redact(text)}" if text else ""


def _seconds(v: object) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float) and v >= 0:
        return float(v)
    if isinstance(v, str):
        with contextlib.suppress(ValueError):
            return max(0.0, float(v))
    return None


def _refused(c: OAuth2Config, field: str, what: str) -> ConfigError:
    return ConfigError(
        "api.auth", [Problem(f"api.auth.{field}", f"the token endpoint {c.token_url} {what}")]
    )


def down(c: OAuth2Config, reason: str) -> TokenEndpointDown:
    """The error ending a run whose token endpoint did not answer (``reason``: the last try)."""
    return TokenEndpointDown(
        str(c.token_url),
        f"the OAuth token endpoint did not issue a token: {reason}",
        "run the same command once it answers: it resumes from the last checkpoint",
    )


def refused_again(failure: Failure) -> Failure:
    """A request refused (401) with a token fetched just for it: said in its reason."""
    return Failure(
        failure.kind,
        f"{failure.detail} (with a freshly issued access token too: the API does not accept the "
        "tokens the token endpoint issues; check api.auth.scope and api.auth.audience)",
        failure.status,
        failure.retry_after,
        failure.headers,
    )


FetchToken = Callable[[], Awaitable[tuple[int, bytes, float | None] | Failure]]
"""One token request: the status, body and ``Retry-After`` in seconds, or the failure
(connection, timeout) it ended in."""


class TokenKeeper:
    """The access token of one async client, fetched and replaced by the module's rules: one
    shared task per fetch, a background refresh in the margin, a drop on a 401. ``clock`` is the
    run's (so tests move time with a FakeClock); ``fetch`` sends one token request."""

    def __init__(
        self,
        credentials: OAuthCredentials,
        fetch: FetchToken,
        clock: Clock,
        policy: RetryPolicy,
        rng: random.Random | None = None,
    ) -> None:
        self.credentials = credentials
        self._fetch = fetch
        self._clock = clock
        self._policy = policy
        self._rng = rng or random.Random()
        self._token: Token | None = None
        self._task: asyncio.Task[str] | None = None
        self._error: BaseException | None = None  # a background refresh's fatal error
        self._stuck: str | None = None  # a token refused right after it was issued
        self.requests = 0  # token requests sent (retries included)
        self.issued = 0
        self.dropped = 0  # tokens dropped on a 401

    def current(self) -> str | None:
        """The token to send now, or None when a request must wait (:meth:`fresh`). In the
        refresh margin it starts the one background refresh and returns the still-valid token."""
        if self._error is not None:
            raise self._error
        token = self._token
        if token is None:
            return None
        if token.refresh_at is None:
            return token.value
        now = self._clock.time()
        if now < token.refresh_at:
            return token.value
        if token.expires_at is not None and now < token.expires_at:
            self._start()
            return token.value
        return None

    async def fresh(self) -> str:
        """A valid token, waiting for the one fetch in progress (starting it if none is)."""
        token = self.current()
        if token is not None:
            return token
        # Shielded: a request cancelled while it waits (a deadline, a stop) does not cancel the
        # fetch every other request waits for.
        return await asyncio.shield(self._start())

    def refused(self, token: str) -> None:
        """The API answered 401 to a request carrying ``token``: drop it, unless it is already
        replaced or was itself refused right after it was issued."""
        current = self._token
        if current is not None and current.value == token and token != self._stuck:
            self._token = None
            self.dropped += 1

    def refused_again(self, token: str) -> None:
        """``token``, fetched after a 401, was refused too: a 401 will not drop it again."""
        self._stuck = token

    def _start(self) -> asyncio.Task[str]:
        task = self._task
        if task is None or task.done():
            task = self._task = asyncio.get_running_loop().create_task(
                self._obtain(), name="asyncingest-oauth-token"
            )
            task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[str]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._error = task.exception()

    async def _obtain(self) -> str:
        """Token requests until one gives a token (retried by ``api.retry``), or the error."""
        clock = self._clock
        started = clock.time()
        attempt = 0
        while True:
            attempt += 1
            self.requests += 1
            sent = await self._fetch()
            now = clock.time()
            got = settle_token_request(
                self.credentials, sent, self._policy, self._rng, attempt, now - started, now
            )
            if isinstance(got, Token):
                self._token = got
                self.issued += 1
                return got.value
            await clock.sleep(got)

    async def close(self) -> None:
        """Cancel a fetch in progress (the client is closing)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def __repr__(self) -> str:
        token = self._token
        if token is None:
            held = "none"
        elif token.expires_at is None:
            held = "no expiry"
        else:
            held = f"expires at {token.expires_at:.1f}"
        busy = ", fetching" if self._task is not None and not self._task.done() else ""
        return (
            f"TokenKeeper(token {held}{busy}, requests={self.requests}, issued={self.issued}, "
            f"dropped_on_401={self.dropped})"
        )
