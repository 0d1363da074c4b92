"""A custom paginator: keyset ("seek") pagination, where the next page starts after the last
record's key, read from the record itself, and the body only says whether there is more.

The bundled mock API serves it at ``GET /v2/weather``::

    GET /v2/weather?limit=50
    -> {"data": [..., {"date": "2024-03-01T11:49:00+00:00", "session_key": 1, ...}],
        "meta": {"has_more": true}}
    GET /v2/weather?limit=50&after_date=2024-03-01T11:49:00%2B00:00&after_session=1
    -> ...

None of the six built-in kinds fits: ``cursor`` sends back one value the API gives, here the
client derives two from the last record; and the walk ends on ``has_more: false`` without asking
for an empty page. Use it as::

    pagination:
      type: custom
      function: asyncingest.examples.keyset:KeysetPaginator
      options: {keys: {after_date: date, after_session: session_key}, limit: 50}

The paginator is *stateless*, like the built-in ones: one instance serves every walk of the
endpoint at once, and whatever a walk needs next travels in ``Request.state`` (here the last
key, a JSON list), which the checkpoint saves, so a stopped or killed run resumes at the
right page.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # user code needs nothing of asyncingest at run time, only its types
    from asyncingest import Page, Request


class KeysetPaginator:
    """``keys``: request parameter -> field of the last record it takes its value from;
    ``limit`` rows per page in ``limit_param``; ``has_more``: the dotted path of the flag that
    says another page exists. The rows are ``page.records`` (found by the endpoint's
    ``records``)."""

    def __init__(
        self,
        keys: dict[str, str],
        limit: int = 100,
        limit_param: str = "limit",
        has_more: str = "meta.has_more",
    ) -> None:
        if not keys:
            raise ValueError("keys: at least one parameter -> record field")
        self.keys = dict(keys)
        self.limit = limit
        self.limit_param = limit_param
        self.has_more = has_more.split(".")

    def first(self, request: Request) -> Request:
        """The first page: only the page size (no key yet)."""
        return replace(request.with_params(**{self.limit_param: str(self.limit)}), state=None)

    def next(self, page: Page) -> Request | None:
        """After the last record's key, while the body says there is more."""
        if not page.records or _at(page.body, self.has_more) is not True:
            return None
        last = page.records[-1]
        values = [last.get(field) for field in self.keys.values()]
        if any(v is None for v in values):
            return None  # a record without its key: nowhere to continue from
        params = {param: str(v) for param, v in zip(self.keys, values, strict=True)}
        return replace(page.request.with_params(**params), state=values)


def _at(body: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(body, dict):
            return None
        body = body.get(part)
    return body
