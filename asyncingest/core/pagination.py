"""Paginators: from one page, the request for the next one, or ``None`` to stop.

Each kind is a small pure object (no I/O), so every stop rule is tested without a server:

===========  ==========================================  ===================================
kind         next request                                stops when
===========  ==========================================  ===================================
none         -                                           always after the first page
offset       offset += records received                  short or empty page, total reached
page         page += 1                                   empty/short page, total(s) reached
cursor       cursor from the body sent as a parameter    no cursor, or the same cursor again
next_url     URL from the body (relative ones resolved)  no URL, or the same URL again
link_header  RFC 8288 ``Link: <...>; rel="next"``        no such link, or the same URL again
custom       your ``next(page)``                         it returns None
===========  ==========================================  ===================================

A next-page URL may point at another origin; the HTTP layer then sends no credentials.

**The protocol** (:class:`Paginator`), which ``type: custom`` paginators follow too: ``first``
turns a walk's first request (built from the endpoint's path, params and bindings) into the
first page's; ``next`` derives the following request from a page (its request, status,
headers, parsed body and extracted records), or returns None at the end. Both are pure and
*stateless*: one paginator serves every walk of an endpoint at once, so whatever a walk needs
to go on travels in ``Request.state``. The checkpoint saves a part-way walk's next request,
state included, and a resumed run continues from it: a resume point is a request. So
``state`` must be JSON data (it comes back from the checkpoint as JSON: a tuple as a list),
and a new request is made with ``request.with_params(...)`` or ``dataclasses.replace``, never
by changing one in place. A custom paginator is held to this at run time
(:class:`CustomPaginator`): what it raises or returns wrongly ends that walk with the reason
(dead-lettered), never the run.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Protocol

from yarl import URL

from ..config.callables import describe_error, load_paginator
from ..config.models import (
    CursorPagination,
    CustomPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
    OffsetPagination,
    PagePagination,
    Pagination,
)
from .json import dumps as json_dumps
from .request import Page, Request, lookup


class Paginator(Protocol):
    """How one walk pages: the first request, then each next one derived from a page."""

    def first(self, request: Request) -> Request:
        """The walk's first request: ``request`` with the paging parameters set."""
        ...

    def next(self, page: Page) -> Request | None:
        """The request for the page after ``page``, or None when the walk is over."""
        ...


class NoPaginator:
    """``type: none``: one request per walk."""

    def first(self, request: Request) -> Request:
        """``request`` unchanged: the walk is this one request."""
        return request

    def next(self, page: Page) -> Request | None:
        """Always None: there is no second page."""
        return None


class OffsetPaginator:
    """``type: offset``: the offset moves by the records received; stops on an empty page, the total
    reached, or (without a total) a short page.
    """

    def __init__(self, cfg: OffsetPagination) -> None:
        self.cfg = cfg

    def first(self, request: Request) -> Request:
        """``request`` with the offset at ``start`` and the limit set; the offset is kept in
        ``state``."""
        c = self.cfg
        return replace(
            request.with_params(**{c.offset_param: str(c.start), c.limit_param: str(c.limit)}),
            state=c.start,
        )

    def next(self, page: Page) -> Request | None:
        """The request at offset + records received, or None on an empty page, once the total is
        reached, or (without a total) after a short page."""
        c, n = self.cfg, len(page.records)
        if n == 0:
            return None
        offset = int(page.request.state) + n
        total = number_or_none(lookup(page.body, c.total_path)) if c.total_path else None
        if total is not None:
            # With a total, a page shorter than asked (an API that caps the limit) is not the end.
            if offset >= total:
                return None
        elif n < c.limit:
            return None
        return replace(
            page.request.with_params(**{c.offset_param: str(offset)}),
            state=offset,
            page=page.request.page + 1,
        )


class PagePaginator:
    """``type: page``: the page number moves by one; stops on an empty page, the total pages or
    records reached, or (without totals) a short page.
    """

    def __init__(self, cfg: PagePagination) -> None:
        self.cfg = cfg

    def first(self, request: Request) -> Request:
        """``request`` for page ``start`` (and the page size, if configured); the page number is
        kept in ``state``."""
        c = self.cfg
        params = {c.page_param: str(c.start)}
        if c.size_param:
            params[c.size_param] = str(c.size)
        return replace(request.with_params(**params), state=c.start)

    def next(self, page: Page) -> Request | None:
        """The request for the next page number, or None on an empty page, when the total pages or
        total records are reached, or (without either) after a short page."""
        c, n = self.cfg, len(page.records)
        if n == 0:
            return None
        number = int(page.request.state)
        pages_done = number - c.start + 1
        total_pages = (
            number_or_none(lookup(page.body, c.total_pages_path)) if c.total_pages_path else None
        )
        total = number_or_none(lookup(page.body, c.total_path)) if c.total_path else None
        if total_pages is not None:
            if pages_done >= total_pages:
                return None
        elif total is not None:
            if pages_done * c.size >= total:
                return None
        elif c.size_param and n < c.size:
            return None
        return replace(
            page.request.with_params(**{c.page_param: str(number + 1)}),
            state=number + 1,
            page=page.request.page + 1,
        )


class CursorPaginator:
    """``type: cursor``: the next cursor from the body sent back as a parameter; stops when there is
    none, and raises :class:`PaginationLoop` on the same cursor twice.
    """

    def __init__(self, cfg: CursorPagination) -> None:
        self.cfg = cfg

    def first(self, request: Request) -> Request:
        """``request`` with the limit set (if configured) and no cursor yet."""
        c = self.cfg
        if c.limit_param and c.limit:
            request = request.with_params(**{c.limit_param: str(c.limit)})
        return replace(request, state=None)

    def next(self, page: Page) -> Request | None:
        """The request carrying the cursor found in the body, or None when there is none (missing,
        empty or not a scalar). The same cursor twice raises :class:`PaginationLoop`."""
        cursor = lookup(page.body, self.cfg.cursor_path)
        if cursor is None or cursor == "" or isinstance(cursor, dict | list):
            return None
        cursor = str(cursor)
        if cursor == page.request.state:
            raise PaginationLoop(f"the API returned the same cursor twice ({self.cfg.cursor_path})")
        return replace(
            page.request.with_params(**{self.cfg.cursor_param: cursor}),
            state=cursor,
            page=page.request.page + 1,
        )


class PaginationLoop(Exception):
    """The API pointed back at the page it just served; following it would never end."""


def _follow(page: Page, link: object) -> Request | None:
    if not isinstance(link, str) or not link:
        return None
    url = page.request.full_url.join(URL(link))
    if url == page.request.full_url:
        raise PaginationLoop(f"the next-page link points at the current page ({url})")
    # The link is the complete next URL: its query replaces ours.
    return replace(page.request, url=url, params=(), state=str(url), page=page.request.page + 1)


class NextUrlPaginator:
    """``type: next_url``: follows the next page's URL found in the body."""

    def __init__(self, cfg: NextUrlPagination) -> None:
        self.cfg = cfg

    def first(self, request: Request) -> Request:
        """``request`` unchanged: the body of each page names the next one."""
        return request

    def next(self, page: Page) -> Request | None:
        """The request for the URL at ``next_path`` in the body, or None without one; a link back to
        this page raises :class:`PaginationLoop`."""
        return _follow(page, lookup(page.body, self.cfg.next_path))


_LINK_RE = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")
_REL_RE = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))""", re.IGNORECASE)


def parse_link_header(value: str) -> dict[str, str]:
    """``<a>; rel="next", <b>; rel="prev last"`` -> ``{"next": "a", "prev": "b", "last": "b"}``."""
    links: dict[str, str] = {}
    for match in _LINK_RE.finditer(value):
        target, params = match.group(1), match.group(2)
        rel = _REL_RE.search(params)
        if rel:
            for name in (rel.group(1) or rel.group(2) or "").split():
                links.setdefault(name.lower(), target)
    return links


class LinkHeaderPaginator:
    """``type: link_header``: follows the RFC 8288 ``Link`` header's ``rel`` target."""

    def __init__(self, cfg: LinkHeaderPagination) -> None:
        self.cfg = cfg

    def first(self, request: Request) -> Request:
        """``request`` unchanged: the ``Link`` header of each page names the next one."""
        return request

    def next(self, page: Page) -> Request | None:
        """The request for the ``Link`` header's URL with the configured ``rel``, or None without
        one; a link back to this page raises :class:`PaginationLoop`."""
        header = page.headers.get("Link") or page.headers.get("link")
        if not header:
            return None
        return _follow(page, parse_link_header(header).get(self.cfg.rel.lower()))


class PaginatorFailed(PaginationLoop):
    """A custom paginator raised, or returned something other than a request. The engines handle
    it as a loop: the page in hand is kept, and the walk ends, dead-lettered with the reason
    (raised by ``first``: the job is refused with it)."""


class CustomPaginator:
    """``type: custom``: the user's paginator (``function``, built with ``options``) held to the
    protocol: ``first``/``next`` must return a :class:`Request` (``next`` may return None) whose
    ``state`` is JSON data; a next request identical to the current one is a loop. The page
    index is kept here, so user code need not."""

    def __init__(self, cfg: CustomPagination) -> None:
        self.ref = cfg.function
        self.inner: Paginator = load_paginator(cfg.function, cfg.options)

    def first(self, request: Request) -> Request:
        """The custom paginator's first request, checked (a :class:`Request` whose state is JSON
        data, numbered as ``request``'s page); anything it raises becomes :class:`PaginatorFailed`
        naming the class."""
        try:
            out = self.inner.first(request)
        except Exception as exc:
            raise PaginatorFailed(f"{self.ref}: first() raised {describe_error(exc)}") from exc
        return self._checked(out, "first", request.page)

    def next(self, page: Page) -> Request | None:
        """The custom paginator's next request, checked as :meth:`first`'s, or None at the end;
        :class:`PaginationLoop` passes through, anything else it raises becomes
        :class:`PaginatorFailed`."""
        try:
            out = self.inner.next(page)
        except PaginationLoop:
            raise
        except Exception as exc:
            raise PaginatorFailed(f"{self.ref}: next() raised {describe_error(exc)}") from exc
        if out is None:
            return None
        out = self._checked(out, "next", page.request.page + 1)
        current = page.request
        if out.full_url == current.full_url and out.json_body == current.json_body:
            raise PaginationLoop(f"{self.ref}: next() returned the current page's request")
        return out

    def _checked(self, out: object, method: str, index: int) -> Request:
        if not isinstance(out, Request):
            raise PaginatorFailed(
                f"{self.ref}: {method}() returned {type(out).__name__}, not a Request"
                + (" (or None)" if method == "next" else "")
            )
        try:
            json_dumps(out.state)
        except (TypeError, ValueError) as exc:
            raise PaginatorFailed(
                f"{self.ref}: {method}() returned a request whose state is not JSON data "
                f"({describe_error(exc)}); the checkpoint saves it to resume the walk"
            ) from exc
        return out if out.page == index else replace(out, page=index)

    def __repr__(self) -> str:
        return f"CustomPaginator({self.ref}, {self.inner!r})"


def paginator_for(cfg: Pagination) -> Paginator:
    """The paginator for an endpoint's ``pagination`` config."""
    match cfg:
        case NoPagination():
            return NoPaginator()
        case OffsetPagination():
            return OffsetPaginator(cfg)
        case PagePagination():
            return PagePaginator(cfg)
        case CursorPagination():
            return CursorPaginator(cfg)
        case NextUrlPagination():
            return NextUrlPaginator(cfg)
        case LinkHeaderPagination():
            return LinkHeaderPaginator(cfg)
        case CustomPagination():
            return CustomPaginator(cfg)
    raise TypeError(f"unknown pagination {cfg!r}")


def number_or_none(v: object) -> int | None:
    """A count read from a body (an int, a float or a digit string), or None (``True`` is not 1)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return None
