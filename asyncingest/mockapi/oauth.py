"""The mock's OAuth 2.0 token endpoint (client credentials grant, RFC 6749 4.4) and the bearer
check of the protected routes, when ``settings.oauth`` is set.

``POST <token_path>`` (form ``grant_type=client_credentials``, the client authenticated by HTTP
Basic or by ``client_id``/``client_secret`` in the form) answers ``{"access_token",
"token_type": "Bearer", "expires_in"}``; wrong credentials get 401 ``invalid_client``, another
grant 400 ``unsupported_grant_type``, and the first ``fail_first`` requests 503 (to exercise
the client's retries). Every route but the token endpoint and the admin ones then needs
``Authorization: Bearer <a token issued and not expired or revoked>``, else 401 with
``WWW-Authenticate: Bearer error="invalid_token"``. Token requests are counted apart
(:class:`TokenStats`), not as API requests, and never refereed by the API's rate windows: the
token endpoint plays an identity provider on another host.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import secrets
import urllib.parse
from collections.abc import Mapping

from .faults import Reply
from .routes import error_reply, json_reply
from .settings import OAuthSettings


class TokenStats:
    """What the token endpoint saw: requests, tokens issued, refusals, revocations."""

    def __init__(self) -> None:
        self.requests = 0
        self.issued = 0
        self.refused = 0  # bad client credentials or grant
        self.failed = 0  # 503s sent on purpose (fail_first)
        self.rejected_bearer = 0  # API requests refused for a missing, unknown or expired token
        self.last_form: dict[str, str] = {}  # the last token request's form, secret removed

    def to_dict(self) -> dict[str, object]:
        """The counters as a dict (token requests, issued, refused, failed, bearers rejected)."""
        return {
            "requests": self.requests,
            "issued": self.issued,
            "refused": self.refused,
            "failed": self.failed,
            "rejected_bearer": self.rejected_bearer,
        }

    def __repr__(self) -> str:
        return f"TokenStats({self.to_dict()})"


class TokenIssuer:
    """Issues tokens and checks bearers, in the server's loop time (``now`` passed in)."""

    def __init__(self, settings: OAuthSettings) -> None:
        self.settings = settings
        self.stats = TokenStats()
        self._expiry: dict[str, float] = {}  # token -> loop time it expires
        self.issued: list[str] = []  # every token issued (tests check none leaks)
        self._serial = itertools.count(1)

    def token_request(self, headers: Mapping[str, str], body: bytes, now: float) -> Reply:
        """Answer one token request at loop time ``now``: 503 for the first ``fail_first``, then a
        token for the right client credentials (HTTP Basic or form), else the OAuth error."""
        s = self.settings
        st = self.stats
        st.requests += 1
        if st.requests <= s.fail_first:
            st.failed += 1
            return error_reply(503, "token service unavailable", {"Retry-After": "0"})
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = _basic(headers.get("Authorization"))
        if basic is not None:
            client_id, secret = basic
        st.last_form = {k: v for k, v in form.items() if k != "client_secret"}
        if form.get("grant_type") != "client_credentials":
            st.refused += 1
            return json_reply({"error": "unsupported_grant_type"}, 400)
        if client_id != s.client_id or secret != s.client_secret:
            st.refused += 1
            return json_reply(
                {"error": "invalid_client", "error_description": "client authentication failed"},
                401,
                {"WWW-Authenticate": 'Basic realm="mock"'},
            )
        token = f"mock-{next(self._serial)}-{secrets.token_urlsafe(16)}"
        self._expiry[token] = now + s.expires_in
        self.issued.append(token)
        st.issued += 1
        return json_reply(
            {"access_token": token, "token_type": "Bearer", "expires_in": s.expires_in}
        )

    def valid(self, authorization: str | None, now: float) -> bool:
        """Whether ``Authorization`` carries a token issued, not expired and not revoked."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expiry = self._expiry.get(authorization[7:])
        return expiry is not None and now < expiry

    def revoke_all(self) -> int:
        """Revoke every token issued (the next API request with one gets 401); how many."""
        n = len(self._expiry)
        self._expiry.clear()
        return n

    def __repr__(self) -> str:
        return f"TokenIssuer(live={len(self._expiry)}, {self.stats!r})"


def _basic(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic`` as (id, secret), each form-decoded (RFC 6749 2.3.1)."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        pair = base64.b64decode(header[6:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = pair.partition(":")
    if not sep:
        return None
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)
