"""Credentials and redaction, unit by unit: where the secret is attached, and that it is gone
from every text, URL and persisted request (``http/credentials.py`` and the client's
``redact`` / ``display_url`` / ``scrub``). The end-to-end view is ``test_secrets*.py``; these
pin the edges mutation testing found unguarded (``nox -s mutants -- redaction``)."""

from __future__ import annotations

import pytest
from yarl import URL

from asyncingest.config.models import ApiConfig
from asyncingest.core.pagination import PaginationLoop
from asyncingest.core.request import Page, Request
from asyncingest.http.client import HttpClient
from asyncingest.http.credentials import Credentials, origin, scrub, scrub_next

SECRET = "s3cr3t-t0ken"


@pytest.mark.parametrize(
    ("kind", "name", "headers", "params"),
    [
        ("bearer", None, {"Authorization": f"Bearer {SECRET}"}, []),
        ("bearer", "ignored", {"Authorization": f"Bearer {SECRET}"}, []),
        ("header", "X-Token", {"X-Token": SECRET}, []),
        ("header", None, {"X-API-Key": SECRET}, []),
        ("query", "key", {}, [("key", SECRET)]),
        ("query", None, {}, [("api_key", SECRET)]),
    ],
)
def test_apply_puts_the_secret_in_exactly_one_place(
    kind: str, name: str | None, headers: dict[str, str], params: list[tuple[str, str]]
) -> None:
    got_headers: dict[str, str] = {"Accept": "application/json"}
    got_params: list[tuple[str, str]] = [("page", "1")]
    Credentials(kind, name, SECRET).apply(got_headers, got_params)
    assert got_headers == {"Accept": "application/json", **headers}
    assert got_params == [("page", "1"), *params]


def test_redact_replaces_every_occurrence() -> None:
    creds = Credentials("bearer", None, SECRET)
    assert creds.redact(f"a {SECRET} b {SECRET}") == "a *** b ***"
    assert creds.redact("nothing here") == "nothing here"
    assert creds.secrets() == (SECRET,)


def test_an_empty_secret_redacts_nothing() -> None:
    """An empty secret is in every string: replacing it would star every character gap."""
    creds = Credentials("bearer", None, "")
    assert creds.secrets() == ()
    assert creds.redact("abc") == "abc"


def test_repr_and_str_never_show_the_secret() -> None:
    creds = Credentials("header", "X-Token", SECRET)
    assert repr(creds) == "Credentials(header, ***)"
    assert str(creds) == "Credentials(header, ***)"


@pytest.mark.parametrize(
    ("kind", "name", "expected"), [("query", "key", "key"), ("header", "key", None)]
)
def test_query_param_only_for_query_auth(kind: str, name: str, expected: str | None) -> None:
    assert Credentials(kind, name, SECRET).query_param == expected


def test_scrub_url_drops_the_query_auth_parameter_whatever_its_value() -> None:
    creds = Credentials("query", "key", SECRET)
    url = URL("https://api.test/x?page=2&key=other&size=5")
    assert creds.scrub_url(url) == URL("https://api.test/x?page=2&size=5")


def test_scrub_url_drops_any_parameter_that_holds_the_secret() -> None:
    creds = Credentials("bearer", None, SECRET)
    url = URL(f"https://api.test/x?a=1&echo=pre{SECRET}post&b=2")
    assert creds.scrub_url(url) == URL("https://api.test/x?a=1&b=2")


def test_scrub_url_keeps_a_parameter_named_like_a_header_credential() -> None:
    """Only ``query`` auth owns a parameter name; a header credential named ``key`` does not
    make a ``key=...`` parameter secret."""
    creds = Credentials("header", "key", SECRET)
    url = URL("https://api.test/x?key=public")
    assert creds.scrub_url(url) is url


def test_scrub_url_returns_the_same_url_when_nothing_is_removed() -> None:
    creds = Credentials("query", "key", SECRET)
    plain = URL("https://api.test/x")
    assert creds.scrub_url(plain) is plain
    kept = URL("https://api.test/x?page=2")
    assert creds.scrub_url(kept) is kept


def _request(url: str, state: object = None) -> Request:
    return Request("GET", URL(url), state=state)


def test_scrub_without_credentials_or_secret_returns_the_request_itself() -> None:
    req = _request(f"https://api.test/x?key={SECRET}")
    assert scrub(None, req) is req
    clean = _request("https://api.test/x?page=2")
    assert scrub(Credentials("query", "key", SECRET), clean) is clean


def test_scrub_rewrites_a_link_state_to_the_scrubbed_link() -> None:
    url = f"https://api.test/x?page=2&key={SECRET}"
    got = scrub(Credentials("query", "key", SECRET), _request(url, state=url))
    assert got.url == URL("https://api.test/x?page=2")
    assert got.state == "https://api.test/x?page=2"


def test_scrub_redacts_a_string_state_that_is_not_the_link() -> None:
    url = f"https://api.test/x?key={SECRET}"
    got = scrub(Credentials("query", "key", SECRET), _request(url, state=f"cursor-{SECRET}"))
    assert got.state == "cursor-***"
    other = scrub(Credentials("query", "key", SECRET), _request(url, state=7))
    assert other.state == 7


def _page(url: str) -> Page:
    return Page(request=_request(url), status=200, headers={}, body={})


def test_scrub_next_raises_when_the_link_only_differed_by_the_secret() -> None:
    creds = Credentials("query", "key", SECRET)
    page = _page("https://api.test/x?page=2")
    nxt = _request(f"https://api.test/x?page=2&key={SECRET}")
    with pytest.raises(PaginationLoop):
        scrub_next(creds, page, nxt)


def test_scrub_next_passes_a_clean_or_new_link_through() -> None:
    creds = Credentials("query", "key", SECRET)
    page = _page("https://api.test/x?page=2")
    assert scrub_next(creds, page, None) is None
    same = _request("https://api.test/x?page=2")  # unscrubbed: the paginator's own check
    assert scrub_next(creds, page, same) is same
    assert scrub_next(None, page, same) is same
    nxt = scrub_next(creds, page, _request(f"https://api.test/x?page=3&key={SECRET}"))
    assert nxt is not None and nxt.url == URL("https://api.test/x?page=3")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://API.Test/x", ("https", "api.test", 443)),
        ("HTTP://api.test/x", ("http", "api.test", 80)),
        ("https://api.test:8443/x", ("https", "api.test", 8443)),
        ("http://api.test:443/x", ("http", "api.test", 443)),
        ("/relative", ("", "", 80)),  # no scheme, host or port: the fallbacks
        ("custom://API.test/x", ("custom", "api.test", 80)),
    ],
)
def test_origin_defaults_the_port_from_the_scheme(url: str, expected: tuple[str, str, int]) -> None:
    assert origin(URL(url)) == expected


def test_client_redact_display_url_and_scrub() -> None:
    api = ApiConfig(base_url="https://api.test")
    client = HttpClient(api, Credentials("query", "key", SECRET))
    req = _request(f"https://api.test/x?page=2&key={SECRET}")
    assert client.redact(f"got {SECRET}") == "got ***"
    assert SECRET not in client.display_url(req)
    assert "page=2" in client.display_url(req)
    assert client.scrub(req).url == URL("https://api.test/x?page=2")
    bare = HttpClient(api)
    assert bare.redact(f"got {SECRET}") == f"got {SECRET}"
    assert bare.scrub(req) is req
