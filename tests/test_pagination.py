"""Each pagination kind's next request and stop rules, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from asyncingest.config.models import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    OffsetPagination,
    PagePagination,
)
from asyncingest.core.pagination import PaginationLoop, paginator_for, parse_link_header
from asyncingest.core.request import Page, Request, WrongShape, extract_records, lookup

BASE = Request("GET", URL("http://api.test/v1/items"), (("q", "x"),))


def page(
    req: Request, body: Any, n: int | None = None, headers: dict[str, str] | None = None
) -> Page:
    records = [{"i": i} for i in range(n)] if n is not None else []
    return Page(req, 200, CIMultiDictProxy(CIMultiDict(headers or {})), body, records)


def params(req: Request) -> dict[str, str]:
    return dict(req.params)


def test_offset_walks_until_a_short_page() -> None:
    p = paginator_for(OffsetPagination(type="offset", limit=10))
    r = p.first(BASE)
    assert params(r) == {"q": "x", "offset": "0", "limit": "10"}
    r2 = p.next(page(r, {}, 10))
    assert r2 is not None and params(r2)["offset"] == "10"
    assert p.next(page(r2, {}, 3)) is None


def test_offset_with_total_continues_past_a_capped_page() -> None:
    p = paginator_for(OffsetPagination(type="offset", limit=500, total_path="total"))
    r = p.first(BASE)
    r2 = p.next(page(r, {"total": 250}, 100))  # the API capped the page at 100
    assert r2 is not None and params(r2)["offset"] == "100"
    r3 = p.next(page(r2, {"total": 250}, 100))
    assert r3 is not None and params(r3)["offset"] == "200"
    assert p.next(page(r3, {"total": 250}, 50)) is None


def test_offset_stops_on_an_empty_page() -> None:
    p = paginator_for(OffsetPagination(type="offset", limit=10, total_path="total"))
    assert p.next(page(p.first(BASE), {"total": 999}, 0)) is None


def test_page_number_uses_total_pages() -> None:
    p = paginator_for(PagePagination(type="page", size=2, total_pages_path="meta.total_pages"))
    r = p.first(BASE)
    assert params(r)["page"] == "1"
    r2 = p.next(page(r, {"meta": {"total_pages": 2}}, 2))
    assert r2 is not None and params(r2)["page"] == "2"
    assert p.next(page(r2, {"meta": {"total_pages": 2}}, 2)) is None


def test_page_number_stops_on_short_page_without_totals() -> None:
    p = paginator_for(PagePagination(type="page", size=5))
    r = p.first(BASE)
    assert p.next(page(r, {}, 5)) is not None
    assert p.next(page(r, {}, 4)) is None


def test_cursor_from_body() -> None:
    p = paginator_for(CursorPagination(type="cursor", cursor_path="paging.next.after"))
    r = p.first(BASE)
    r2 = p.next(page(r, {"paging": {"next": {"after": "abc"}}}, 100))
    assert r2 is not None and params(r2)["after"] == "abc"
    assert p.next(page(r2, {"results": []}, 100)) is None


def test_repeated_cursor_is_a_loop_not_an_endless_walk() -> None:
    p = paginator_for(CursorPagination(type="cursor", cursor_path="next"))
    r2 = p.next(page(p.first(BASE), {"next": "c1"}, 1))
    assert r2 is not None
    with pytest.raises(PaginationLoop):
        p.next(page(r2, {"next": "c1"}, 1))


def test_next_url_resolves_relative_links_and_replaces_query() -> None:
    p = paginator_for(NextUrlPagination(type="next_url", next_path="links.next"))
    r2 = p.next(page(BASE, {"links": {"next": "/v1/items?page=2"}}, 1))
    assert r2 is not None and str(r2.full_url) == "http://api.test/v1/items?page=2"
    assert p.next(page(r2, {"links": {"next": None}}, 1)) is None


def test_link_header() -> None:
    p = paginator_for(LinkHeaderPagination(type="link_header"))
    hdr = (
        '<http://api.test/v1/items?cursor=2>; rel="next", '
        '<http://api.test/v1/items?cursor=9>; rel="last"'
    )
    r2 = p.next(page(BASE, [], 1, {"Link": hdr}))
    assert r2 is not None and str(r2.full_url) == "http://api.test/v1/items?cursor=2"
    assert p.next(page(r2, [], 1, {})) is None


def test_parse_link_header_variants() -> None:
    assert parse_link_header("<a>; rel=next") == {"next": "a"}
    assert parse_link_header('<a>; title="x"; rel="prev first"') == {"prev": "a", "first": "a"}


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        ([{"a": 1}], "$", [{"a": 1}]),
        ({"results": [{"a": 1}]}, "results", [{"a": 1}]),
        ({"data": {"items": [{"a": 1}, {"a": 2}]}}, "data.items", [{"a": 1}, {"a": 2}]),
        ({"results": None}, "results", []),
    ],
)
def test_records_are_found_where_the_config_says(body: Any, path: str, expected: Any) -> None:
    assert extract_records(body, path) == expected


def test_a_single_record_body() -> None:
    assert extract_records({"a": 1}, "$", single=True) == [{"a": 1}]
    with pytest.raises(WrongShape):
        extract_records([{"a": 1}], "$", single=True)
    with pytest.raises(WrongShape):
        extract_records({"error": "x"}, "$")  # a list was expected


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"error": "oops"}, "results"),
        ([1, 2], "$"),
        ({"results": "x"}, "results"),
        ("text", "data.items"),
    ],
)
def test_wrong_shape_is_detected(body: Any, path: str) -> None:
    with pytest.raises(WrongShape):
        extract_records(body, path)


def test_lookup_dotted_paths() -> None:
    assert lookup({"a": {"b": [1, {"c": 5}]}}, "a.b.1.c") == 5
    assert lookup({"a": {}}, "a.b.c") is None


@pytest.mark.parametrize("base", ["http://api.test", "http://api.test/v2/", "https://h:8443/a/b"])
@pytest.mark.parametrize(
    "endpoint",
    [
        {"name": "a", "path": "/items"},
        {"name": "a", "path": "users/{id}", "params": {"x": 1, "flag": True}},
        {"name": "a", "path": "/u/{id}/s", "params": {"q": "{id}-x", "n": "static"}},
        {"name": "a", "path": "/u/{id}/t/{id}.json"},
        {"name": "a", "path": "/q?fixed=1", "params": {"k": "{id}"}},
        {"name": "a", "path": "/p", "method": "POST", "body": {"id": "{id}", "n": [1, "{id}"]}},
    ],
)
def test_compiled_request_template_builds_what_the_general_rendering_builds(
    base: str, endpoint: dict[str, Any]
) -> None:
    from asyncingest.config.models import EndpointConfig
    from asyncingest.core.request import RequestTemplate, base_url_of

    e = EndpointConfig.model_validate(
        {**endpoint, "from_file": {"path": "x.csv", "column": "id"}}
        if "{id}" in str(endpoint)
        else endpoint
    )
    b = base_url_of(base)
    for value in ("7", "a b/c", "ü", "a-b_c.d~e", "x%2F", 42, True):
        template = RequestTemplate(b, e)
        want = template.build_general({"id": value})
        got = template.build({"id": value})
        assert str(got.full_url) == str(want.full_url)
        assert (got.method, got.params, got.json_body) == (want.method, want.params, want.json_body)
