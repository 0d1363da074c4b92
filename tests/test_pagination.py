"""Each pagination kind's next request and stop rules, without a server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from asyncingest.config.models import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
    OffsetPagination,
    PagePagination,
)
from asyncingest.core.pagination import (
    PaginationLoop,
    number_or_none,
    paginator_for,
    parse_link_header,
)
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


# -- edges mutation testing found unguarded (nox -s mutants -- pagination) --------------------


def test_every_next_request_is_the_next_page_index() -> None:
    """``page`` numbers a walk's requests (checkpoints, dead letters, events): 0, 1, 2, ..."""
    walks: list[tuple[Any, Any, Any]] = [
        (OffsetPagination(type="offset", limit=1), {}, {}),
        (PagePagination(type="page", size=1), {}, {}),
        (CursorPagination(type="cursor", cursor_path="c"), {"c": "x1"}, {"c": "x2"}),
        (
            NextUrlPagination(type="next_url", next_path="n"),
            {"n": "/v1/items?p=1"},
            {"n": "/v1/items?p=2"},
        ),
    ]
    for cfg, body1, body2 in walks:
        p = paginator_for(cfg)
        r0 = p.first(BASE)
        r1 = p.next(page(r0, body1, 1))
        assert r1 is not None
        r2 = p.next(page(r1, body2, 1))
        assert r2 is not None
        assert (r0.page, r1.page, r2.page) == (0, 1, 2), cfg.type


def test_a_followed_link_is_the_whole_url_and_the_state() -> None:
    p = paginator_for(NextUrlPagination(type="next_url", next_path="n"))
    nxt = p.next(page(BASE, {"n": "http://api.test/v1/items?cursor=9"}, 1))
    assert nxt is not None
    assert nxt.params == ()  # the link's query replaces the configured parameters
    assert nxt.state == "http://api.test/v1/items?cursor=9"
    assert nxt.url == URL("http://api.test/v1/items?cursor=9")


@pytest.mark.parametrize("link", ["", 5, {"href": "/x"}, ["/x"], True])
def test_a_next_link_that_is_not_a_string_ends_the_walk(link: object) -> None:
    p = paginator_for(NextUrlPagination(type="next_url", next_path="n"))
    assert p.next(page(BASE, {"n": link}, 1)) is None


def test_a_link_to_the_current_page_is_a_loop_naming_it() -> None:
    p = paginator_for(NextUrlPagination(type="next_url", next_path="n"))
    with pytest.raises(
        PaginationLoop,
        match=r"^the next-page link points at the current page \(http://api.test/v1/items\?q=x\)$",
    ):
        p.next(page(BASE, {"n": "http://api.test/v1/items?q=x"}, 1))


def test_a_lowercase_link_header_in_a_plain_mapping() -> None:
    p = paginator_for(LinkHeaderPagination(type="link_header"))
    req = BASE
    plain = Page(req, 200, {"link": '<http://api.test/v1/items?c=2>; rel="next"'}, [], [])
    nxt = p.next(plain)
    assert nxt is not None and str(nxt.full_url) == "http://api.test/v1/items?c=2"


def test_a_link_with_an_empty_rel_names_nothing() -> None:
    assert parse_link_header('<a>; rel="", <b>; rel="next"') == {"next": "b"}


def test_cursor_first_sets_the_limit_only_when_both_are_configured() -> None:
    both = paginator_for(CursorPagination(type="cursor", cursor_path="c", limit=25))
    assert params(both.first(BASE)) == {"q": "x", "limit": "25"}
    no_limit = paginator_for(CursorPagination(type="cursor", cursor_path="c", limit=None))
    assert params(no_limit.first(BASE)) == {"q": "x"}
    no_param = paginator_for(CursorPagination(type="cursor", cursor_path="c", limit_param=None))
    assert params(no_param.first(BASE)) == {"q": "x"}
    resumed = replace(BASE, state="old-cursor")
    assert both.first(resumed).state is None  # no cursor yet


@pytest.mark.parametrize("cursor", ["", {}, {"a": 1}, [], [1], None])
def test_an_empty_or_structured_cursor_ends_the_walk(cursor: object) -> None:
    p = paginator_for(CursorPagination(type="cursor", cursor_path="c"))
    assert p.next(page(p.first(BASE), {"c": cursor}, 1)) is None


def test_a_repeated_cursor_names_its_path() -> None:
    p = paginator_for(CursorPagination(type="cursor", cursor_path="paging.next"))
    r1 = p.next(page(p.first(BASE), {"paging": {"next": 7}}, 1))
    assert r1 is not None and r1.state == "7" and params(r1)["after"] == "7"
    with pytest.raises(
        PaginationLoop, match=r"^the API returned the same cursor twice \(paging.next\)$"
    ):
        p.next(page(r1, {"paging": {"next": "7"}}, 1))


def test_page_first_sets_the_page_size() -> None:
    p = paginator_for(PagePagination(type="page", size=7, start=0))
    assert params(p.first(BASE)) == {"q": "x", "page": "0", "page_size": "7"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 5), (5.9, 5), ("12", 12), (" 12 ", 12), ("1.5", None), ("x", None), (True, None)],
)
def test_number_or_none(value: object, expected: int | None) -> None:
    assert number_or_none(value) == expected


def test_paginator_for_no_pagination_and_an_unknown_kind() -> None:
    p = paginator_for(NoPagination(type="none"))
    assert p.first(BASE) == BASE
    assert p.next(page(BASE, {}, 10)) is None
    with pytest.raises(TypeError, match=r"^unknown pagination 'offset'$"):
        paginator_for("offset")  # type: ignore[arg-type]
