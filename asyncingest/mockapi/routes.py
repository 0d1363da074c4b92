"""The endpoints: pure functions from a :class:`Call` (query, path parameter, body) to a Reply.

No I/O and no aiohttp types here, so each endpoint is cheap and testable on its own. Shapes are
deliberately varied so every pagination and record-location kind gets exercised:

- ``GET /v1/meetings?year=``: top-level list, no pagination
- ``GET /v1/sessions?meeting_key=``: top-level list
- ``GET /v1/{drivers,weather,pit,stints}?session_key=``: top-level list
- ``GET /v1/laps?session_key=&offset=&limit=``: ``{"results", "total"}``, offset/limit
- ``GET /v1/race_control?session_key=&page=&page_size=``: ``{"data": {"items"}, "meta"}``,
  page numbers from 1
- ``GET /v1/team_radio?session_key=&cursor=&limit=``: ``{"items", "next": url | null}``
- ``GET /v2/weather?after_date=&after_session=&limit=``: ``{"data", "meta": {"has_more"}}``,
  keyset pagination over ``(date, session_key)``: the next page starts after the last record's
  pair, which the client reads from the record itself (no built-in kind does that; see
  ``asyncingest/examples/keyset.py``)
- ``GET /crm/v3/objects/{contacts,engagements}?limit=&after=``:
  ``{"results", "paging": {"next": {"after", "link"}}}``, no ``paging`` on the last page.
  Archived records are left out (HubSpot's default); ``archived=true`` lists only them,
  ``archived=false`` only the others. "Changed since" filters (any of them switches the list to
  update order): ``updatedAfter=<t>`` (strictly after ``t``), ``updatedSince=<t>`` (at or after
  ``t``), ``updatedBefore=<t>`` (strictly before ``t``), ``t`` an ISO 8601 instant (``Z`` or an
  offset, compared as instants in UTC) or epoch milliseconds. Filtered, records come in
  ``(updatedAt, id)`` order with a keyset ``after`` cursor (a record edited while a client
  pages is served again later, never skipped), and archived records are included (a client
  sees deletes) unless ``archived`` says otherwise. The ``link`` repeats the filters.
- ``GET /crm/v3/objects/{contacts,engagements}/changes?since=<token>&limit=``: every record
  changed after the sync token (from the start without one), each once at its newest version,
  archived ones included, in change order: ``{"results", "nextSyncToken", "hasMore"}`` plus,
  while ``hasMore``, ``"paging": {"next": {"after": <token>, "link"}}``; the last page's
  ``nextSyncToken`` is what to send next time. Tokens are opaque; a bad one is a 400.
- ``GET /crm/v4/objects/engagements/{id}/associations/contacts``: ``{"results"}``; 404 if unknown
- ``GET /crm/v3/objects/companies?limit=&cursor=``: top-level list, ``Link: <url>; rel="next"``
- ``GET /partner/users/{user_id}``, ``POST /partner/score {"user_id"}``: one object; 404 if
  unknown

Limits are clamped to 100. Filters (``session_key``, ``meeting_key``, ``year``) are optional:
without one, all rows.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import urlencode

import orjson

from .changes import (
    ChangingTable,
    Window,
    iso_z,
    parse_instant,
    read_sync_token,
    sync_token,
)
from .data import CrmTable, Dataset, Record
from .faults import Reply

MAX_LIMIT = 100
_ENGAGEMENT_PREFIX = "/crm/v4/objects/engagements/"
_ASSOC_SUFFIX = "/associations/contacts"
_USER_PREFIX = "/partner/users/"


class Call(NamedTuple):
    """The parts of a request an endpoint may read."""

    query: Mapping[str, str]
    param: str | None  # the {id} of a templated path
    body: bytes  # read for POST only
    origin: str  # "http://host:port", for absolute next links


Endpoint = Callable[[Call], Reply]


class Route(NamedTuple):
    """One route of the mock API: path template, method and the handler."""

    template: str
    method: str
    endpoint: Endpoint


class BadRequest(Exception):
    """An invalid parameter; answered 400 with the message."""


def json_reply(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    """A JSON reply with ``status`` and optional headers."""
    return Reply(status, orjson.dumps(obj), headers)


def error_reply(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> Reply:
    """A JSON error reply: ``{"error": message, "status": status, ...extra}``."""
    return json_reply({"error": message, "status": status, **extra}, status, headers)


def _int(query: Mapping[str, str], name: str, default: int, low: int = 0) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if value < low:
        raise BadRequest(f"{name} must be >= {low}, got {value}")
    return value


def _limit(query: Mapping[str, str], name: str = "limit", default: int = MAX_LIMIT) -> int:
    return min(_int(query, name, default, low=1), MAX_LIMIT)


def _cursor(query: Mapping[str, str], name: str) -> int:
    """Cursors are opaque to clients; here they are just the next row index."""
    raw = query.get(name)
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"invalid {name} cursor {raw!r}")
    return int(raw)


def _flag(query: Mapping[str, str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise BadRequest(f"{name} must be true or false, got {raw!r}")


def _instant(query: Mapping[str, str], name: str) -> int:
    try:
        return parse_instant(query[name])
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def _window(query: Mapping[str, str], archived: bool | None) -> Window | None:
    """The "changed since" filters of a CRM list, or None when none is given."""
    if not any(n in query for n in ("updatedAfter", "updatedSince", "updatedBefore")):
        return None
    lows = []
    if "updatedAfter" in query:
        lows.append(_instant(query, "updatedAfter") + 1)  # strictly after: 1 us later
    if "updatedSince" in query:
        lows.append(_instant(query, "updatedSince"))
    high = _instant(query, "updatedBefore") if "updatedBefore" in query else None
    return Window(max(lows) if lows else None, high, archived)


def _keyset(query: Mapping[str, str]) -> tuple[int, int] | None:
    """The ``after`` cursor of a filtered CRM list: ``<updatedAt us>-<id>`` of the last record."""
    raw = query.get("after")
    if raw is None:
        return None
    us, sep, rid = raw.partition("-")
    if not (sep and us.isascii() and us.isdigit() and rid.isascii() and rid.isdigit()):
        raise BadRequest(f"invalid after cursor {raw!r}")
    return int(us), int(rid)


class Routes:
    """The route table over one dataset. ``resolve`` is one dict lookup for fixed paths."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        per_session = {
            f"/v1/{table}": Route(f"/v1/{table}", "GET", partial(self._session_list, table))
            for table in ("drivers", "weather", "pit", "stints")
        }
        contacts, engagements = "/crm/v3/objects/contacts", "/crm/v3/objects/engagements"
        self.fixed: dict[str, Route] = {
            "/v1/meetings": Route("/v1/meetings", "GET", self.meetings),
            "/v1/sessions": Route("/v1/sessions", "GET", self.sessions),
            **per_session,
            "/v1/laps": Route("/v1/laps", "GET", self.laps),
            "/v1/race_control": Route("/v1/race_control", "GET", self.race_control),
            "/v1/team_radio": Route("/v1/team_radio", "GET", self.team_radio),
            "/v2/weather": Route("/v2/weather", "GET", self.weather_feed),
            contacts: Route(contacts, "GET", partial(self._crm_list, "contacts", contacts)),
            engagements: Route(
                engagements, "GET", partial(self._crm_list, "engagements", engagements)
            ),
            f"{contacts}/changes": Route(
                f"{contacts}/changes", "GET", partial(self._changes, "contacts")
            ),
            f"{engagements}/changes": Route(
                f"{engagements}/changes", "GET", partial(self._changes, "engagements")
            ),
            "/crm/v3/objects/companies": Route("/crm/v3/objects/companies", "GET", self.companies),
            "/partner/score": Route("/partner/score", "POST", self.score),
        }
        self._associations = Route(
            _ENGAGEMENT_PREFIX + "{id}" + _ASSOC_SUFFIX, "GET", self.associations
        )
        self._user = Route(_USER_PREFIX + "{user_id}", "GET", self.user)
        self._weather_keys = sorted((r["date"], r["session_key"]) for r in dataset.weather)
        self._weather_rows = sorted(dataset.weather, key=lambda r: (r["date"], r["session_key"]))

    def resolve(self, path: str) -> tuple[Route, str | None] | None:
        """The route for ``path`` and its path parameter (a user or engagement id), or None when no
        route serves it."""
        route = self.fixed.get(path)
        if route is not None:
            return route, None
        if path.startswith(_USER_PREFIX):
            user_id = path[len(_USER_PREFIX) :]
            return (self._user, user_id) if user_id and "/" not in user_id else None
        if path.startswith(_ENGAGEMENT_PREFIX) and path.endswith(_ASSOC_SUFFIX):
            eid = path[len(_ENGAGEMENT_PREFIX) : -len(_ASSOC_SUFFIX)]
            return (self._associations, eid) if eid and "/" not in eid else None
        return None

    # -- F1 -------------------------------------------------------------------------------
    def _filtered(self, rows: list[Record], query: Mapping[str, str], *names: str) -> list[Record]:
        for name in names:
            if name in query:
                value = _int(query, name, 0)
                rows = [r for r in rows if r[name] == value]
        return rows

    def meetings(self, call: Call) -> Reply:
        """``/v1/meetings``: a plain list, filtered by ``year`` and ``meeting_key``."""
        return json_reply(self._filtered(self.dataset.meetings, call.query, "year", "meeting_key"))

    def sessions(self, call: Call) -> Reply:
        """``/v1/sessions``: a plain list, filtered by ``meeting_key`` and ``session_key``."""
        return json_reply(
            self._filtered(self.dataset.sessions, call.query, "meeting_key", "session_key")
        )

    def _rows(self, table: str, query: Mapping[str, str]) -> list[Record]:
        if "session_key" not in query:
            rows: list[Record] = getattr(self.dataset, table)
            return rows
        return self.dataset.for_session(table, _int(query, "session_key", 0))

    def _session_list(self, table: str, call: Call) -> Reply:
        return json_reply(self._rows(table, call.query))

    def laps(self, call: Call) -> Reply:
        """``/v1/laps``: offset pagination (``offset``, ``limit``), records under ``results`` with a
        ``total``."""
        rows = self._rows("laps", call.query)
        offset, limit = _int(call.query, "offset", 0), _limit(call.query)
        return json_reply({"results": rows[offset : offset + limit], "total": len(rows)})

    def race_control(self, call: Call) -> Reply:
        """``/v1/race_control``: page-number pagination, records under ``data.items``, ``meta`` with
        the totals."""
        rows = self._rows("race_control", call.query)
        page = _int(call.query, "page", 1, low=1)
        size = _limit(call.query, "page_size", default=20)
        total_pages = max(1, -(-len(rows) // size))
        items = rows[(page - 1) * size : page * size]
        return json_reply(
            {
                "data": {"items": items},
                "meta": {"page": page, "total_pages": total_pages, "total": len(rows)},
            }
        )

    def team_radio(self, call: Call) -> Reply:
        """``/v1/team_radio``: cursor pagination, records under ``items``, the next page's full URL
        in ``next``."""
        rows = self._rows("team_radio", call.query)
        start, limit = _cursor(call.query, "cursor"), _limit(call.query, default=20)
        end = start + limit
        next_url = None
        if end < len(rows):
            params = {k: call.query[k] for k in ("session_key",) if k in call.query}
            params |= {"cursor": str(end), "limit": str(limit)}
            next_url = f"{call.origin}/v1/team_radio?{urlencode(params)}"
        return json_reply({"items": rows[start:end], "next": next_url})

    def weather_feed(self, call: Call) -> Reply:
        """Keyset pages: the rows after ``(after_date, after_session)``, both or neither given."""
        after_date, after_session = call.query.get("after_date"), call.query.get("after_session")
        if (after_date is None) != (after_session is None):
            raise BadRequest("after_date and after_session go together")
        start = 0
        if after_date is not None:
            key = (after_date, _int(call.query, "after_session", 0))
            start = bisect.bisect_right(self._weather_keys, key)
        limit = _limit(call.query, default=20)
        rows = self._weather_rows[start : start + limit]
        more = start + limit < len(self._weather_rows)
        return json_reply({"data": rows, "meta": {"has_more": more}})

    # -- CRM ------------------------------------------------------------------------------
    def _crm_list(self, table: CrmTable, path: str, call: Call) -> Reply:
        """A CRM object list: in list order, or in update order when a filter is given."""
        query = call.query
        limit = _limit(query, default=10)
        changing = self.dataset.crm(table)
        archived = _flag(query, "archived")
        window = _window(query, archived)
        body: dict[str, Any]
        if window is None:
            want = archived is True
            rows, end = changing.by_position(
                _cursor(query, "after"), limit, lambda r: bool(r.get("archived")) == want
            )
            body, after = {"results": rows}, (None if end is None else str(end))
        else:
            rows, last = changing.by_update(window, _keyset(query), limit)
            body, after = {"results": rows}, (None if last is None else f"{last[0]}-{last[1]}")
        if after is not None:
            params = {k: v for k, v in query.items() if k not in ("after", "limit")}
            link = f"{call.origin}{path}?{urlencode({**params, 'after': after, 'limit': limit})}"
            body["paging"] = {"next": {"after": after, "link": link}}
        return json_reply(body)

    def _changes(self, table: CrmTable, call: Call) -> Reply:
        """``.../changes?since=<token>``: records changed after the token, in change order."""
        changing: ChangingTable = self.dataset.crm(table)
        raw = call.query.get("since")
        try:
            seq = 0 if raw is None or raw == "" else read_sync_token(table, raw)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        limit = _limit(call.query, default=10)
        rows, last, more = changing.changes_since(seq, limit)
        token = sync_token(table, last)
        body: dict[str, Any] = {"results": rows, "nextSyncToken": token, "hasMore": more}
        if more:
            query = urlencode({"since": token, "limit": limit})
            link = f"{call.origin}/crm/v3/objects/{table}/changes?{query}"
            body["paging"] = {"next": {"after": token, "link": link}}
        return json_reply(body)

    def companies(self, call: Call) -> Reply:
        """``/crm/v3/objects/companies``: a plain list per page, the next page in a ``Link:
        rel=next`` header."""
        rows = self.dataset.companies
        start, limit = _cursor(call.query, "cursor"), _limit(call.query, default=10)
        end = start + limit
        headers = None
        if end < len(rows):
            query = urlencode({"limit": limit, "cursor": end})
            headers = {"Link": f'<{call.origin}/crm/v3/objects/companies?{query}>; rel="next"'}
        return json_reply(rows[start:end], headers=headers)

    def associations(self, call: Call) -> Reply:
        """One engagement's contact associations (``results``), or 404 for an unknown engagement."""
        eid = call.param or ""
        if eid not in self.dataset.associations:
            return json_reply(
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"engagement {eid} not found",
                },
                404,
            )
        return json_reply({"results": self.dataset.association_records(eid)})

    def edit(self, call: Call) -> Reply:
        """``POST /_edit`` (admin, for a mock run by hand or a benchmark): change the CRM data as
        :meth:`Dataset.edit`, :meth:`Dataset.archive` and :meth:`Dataset.create` do. Body:
        ``{"op": "edit" | "archive" | "create", "table": "contacts" | "engagements",
        "advance": <seconds the clock moves first>, "fraction", "ids", "n", "seed"}``. Answers
        ``{"ids", "now", "syncToken"}``; 400 for a bad body."""
        try:
            payload = orjson.loads(call.body or b"{}")
        except orjson.JSONDecodeError:
            raise BadRequest("body must be JSON") from None
        if not isinstance(payload, dict):
            raise BadRequest("body must be a JSON object")
        d = self.dataset
        op, table = payload.get("op", "edit"), payload.get("table", "contacts")
        if table not in ("contacts", "engagements"):
            raise BadRequest(f"table must be contacts or engagements, got {table!r}")
        try:
            d.clock.advance(float(payload.get("advance", 0)))
            seed, ids = int(payload.get("seed", 0)), payload.get("ids")
            if ids is not None and not (
                isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            ):
                raise ValueError("ids must be a list of strings")
            if op == "edit":
                done = d.edit(float(payload.get("fraction", 0)), ids=ids, table=table, seed=seed)
            elif op == "archive":
                done = d.archive(ids or [], table=table)
            elif op == "create":
                done = d.create(int(payload.get("n", 1)), table=table, seed=seed)
            else:
                raise ValueError(f"op must be edit, archive or create, got {op!r}")
        except (ValueError, TypeError, KeyError) as exc:
            raise BadRequest(str(exc)) from None
        return json_reply(
            {"ids": done, "now": iso_z(d.clock.now), "syncToken": d.sync_token(table)}
        )

    # -- partner --------------------------------------------------------------------------
    def user(self, call: Call) -> Reply:
        """``/partner/users/{id}``: one user object (404 for unknown ids)."""
        return self._user_reply(call.param or "")

    def score(self, call: Call) -> Reply:
        """``POST /partner/score`` with ``{"user_id": ...}``: that user's object; 400 for any other
        body."""
        try:
            payload = orjson.loads(call.body)
        except orjson.JSONDecodeError:
            raise BadRequest("body must be JSON") from None
        user_id = payload.get("user_id") if isinstance(payload, dict) else None
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if not isinstance(user_id, str):
            raise BadRequest('body must be {"user_id": "<digits>"}')
        return self._user_reply(user_id)

    def _user_reply(self, user_id: str) -> Reply:
        record = self.dataset.user(user_id)
        if record is None:
            return error_reply(404, "user not found", user_id=user_id)
        return json_reply(record)

    def __repr__(self) -> str:
        return f"Routes({len(self.fixed) + 2} routes over {self.dataset!r})"
