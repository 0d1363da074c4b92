"""Credentials and where they go: the secret (or, for OAuth, the current access token) attached
to requests for the configured origin only, and removed from any text or URL that is kept or
shown. Shared by both HTTP clients; see ``client.py`` for the rules and ``oauth.py`` for tokens.
"""

from __future__ import annotations

from dataclasses import replace

from yarl import URL

from ..core.pagination import PaginationLoop
from ..core.request import Page, Request


def scrub(credentials: Credentials | None, request: Request) -> Request:
    """``request`` without the secret in its URL (see :meth:`Credentials.scrub_url`); its
    state too when it is the link (link paginators). Shared by both HTTP clients."""
    if credentials is None:
        return request
    url = credentials.scrub_url(request.url)
    if url is request.url:
        return request
    state = request.state
    if state == str(request.url):
        state = str(url)
    elif isinstance(state, str):
        state = credentials.redact(state)
    return replace(request, url=url, state=state)


def scrub_next(credentials: Credentials | None, page: Page, nxt: Request | None) -> Request | None:
    """The paginator's next request, scrubbed; a link that only differed from the current page
    by the echoed secret points back at it (raises PaginationLoop, as an unscrubbed one does)."""
    if nxt is None or credentials is None:
        return nxt
    scrubbed = scrub(credentials, nxt)
    if scrubbed is not nxt and scrubbed.full_url == page.request.full_url:
        raise PaginationLoop(f"the next-page link points at the current page ({scrubbed.url})")
    return scrubbed


def origin(url: URL) -> tuple[str, str, int]:
    """A URL's ``(scheme, host, port)``, the port defaulted from the scheme: what credentials are
    bound to.
    """
    scheme = (url.scheme or "").lower()
    return (scheme, (url.host or "").lower(), url.port or (443 if scheme == "https" else 80))


class Credentials:
    """The secret and where it goes. ``repr`` and ``str`` never show it."""

    __slots__ = ("_kind", "_name", "_secret")

    def __init__(self, kind: str, name: str | None, secret: str) -> None:
        self._kind, self._name, self._secret = kind, name, secret

    def apply(self, headers: dict[str, str], params: list[tuple[str, str]]) -> None:
        """Add the secret to ``headers`` (bearer, API-key header) or ``params`` (query); only for
        requests to the configured origin."""
        if self._kind == "bearer":
            headers["Authorization"] = f"Bearer {self._secret}"
        elif self._kind == "header":
            headers[self._name or "X-API-Key"] = self._secret
        else:
            params.append((self._name or "api_key", self._secret))

    def secrets(self) -> tuple[str, ...]:
        """Every value never to show: here the one secret (OAuth adds the client secret and each
        token of the run)."""
        return (self._secret,) if self._secret else ()

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self.secrets():
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def scrub_url(self, url: URL) -> URL:
        """``url`` without the query parameters that carry a secret (and, for ``query``
        auth, without the auth parameter whatever its value): what may be kept and shown."""
        if not url.raw_query_string:
            return url
        query = url.query
        secrets, name = self.secrets(), self._name if self._kind == "query" else None
        kept = [(k, v) for k, v in query.items() if not (k == name or any(s in v for s in secrets))]
        return url if len(kept) == len(query) else url.with_query(kept)

    @property
    def query_param(self) -> str | None:
        """The query parameter that carries the secret (``query`` auth), else None."""
        return self._name if self._kind == "query" else None

    def __repr__(self) -> str:
        return f"Credentials({self._kind}, ***)"

    __str__ = __repr__
