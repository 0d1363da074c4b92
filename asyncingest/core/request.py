"""What one request is, and where the records are in what came back.

Pure data and pure functions: no I/O. ``Request`` is built by the engine from an endpoint
config and a binding (parent record or input id); paginators derive the next ``Request``
from the current one and its ``Page``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from string import Formatter
from typing import Any
from urllib.parse import quote

from yarl import URL

from ..config.models import EndpointConfig

Record = dict[str, Any]


class WrongShape(Exception):
    """The body parsed, but the records are not where the config says."""


class UnsafePathValue(ValueError):
    """A value bound into a URL path that would change which resource the path names.

    ``.`` and ``..`` are dot segments: servers, proxies and URL joining resolve them to the
    same or the parent path (``/ids/..`` is ``/``), and percent-encoding does not help
    (``%2E%2E`` is decoded to ``..`` by many servers before routing). An empty value drops the
    segment (``/ids/`` is the collection). Such a job is refused, never sent.
    """

    def __init__(self, name: str, value: object) -> None:
        super().__init__(
            f"{name}={value!r} would be sent as the path segment {value!r}, which a server "
            "resolves to another path; refused"
        )


# Not frozen (treat as immutable): a frozen dataclass costs ~0.6 us more per instance, and
# the engine makes one per request.
@dataclass(slots=True)
class Request:
    """One HTTP request as the engine keeps it: method, absolute URL, parameters, JSON body, and its
    page index and paginator state within a walk.
    """

    method: str
    url: URL  # absolute; query parameters live in ``params`` unless the URL came from a link
    params: tuple[tuple[str, str], ...] = ()
    json_body: Any = None
    page: int = 0  # 0-based page index within one walk
    state: Any = None  # paginator state (offset, page number, cursor)

    def with_params(self, **updates: str) -> Request:
        """A copy with these query parameters set (replaced if present, else added at the end)."""
        merged = dict(self.params)
        merged.update(updates)
        return replace(self, params=tuple(merged.items()))

    @property
    def full_url(self) -> URL:
        """``url`` with ``params`` in its query: what is sent (before any credential)."""
        return self.url.update_query(self.params) if self.params else self.url


# Not frozen (treat as immutable): a frozen dataclass costs ~0.6 us more per instance, and
# the engine makes one per request.
@dataclass(slots=True)
class Page:
    """A parsed response: the request it answers, its body, headers and records."""

    request: Request
    status: int
    headers: Mapping[str, str]
    body: Any
    records: list[Record] = field(default_factory=list)


def lookup(obj: Any, path: str) -> Any:
    """Follow a dotted path (``paging.next.after``); ``$`` or ``""`` is the object itself.

    Returns ``None`` when any step is missing.
    """
    if path in ("", "$"):
        return obj
    for part in path.split("."):
        if isinstance(obj, Mapping):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.lstrip("-").isdigit():
            idx = int(part)
            obj = obj[idx] if -len(obj) <= idx < len(obj) else None
        else:
            return None
        if obj is None:
            return None
    return obj


_MISSING = object()


def extract_records(body: Any, path: str, single: bool = False) -> list[Record]:
    """The records at ``path``: a list of objects, or (``single``) exactly one object.

    Anything else raises :class:`WrongShape`, so a response of the wrong shape is retried
    rather than written as a bogus record.
    """
    node: Any = body
    if path not in ("", "$"):
        for part in path.split("."):
            if not isinstance(node, Mapping):
                raise WrongShape(f"expected an object at '{part}' of '{path}', got {_kind(node)}")
            node = node.get(part, _MISSING)
            if node is _MISSING:
                raise WrongShape(f"no '{path}' in the response body")
    if single:
        if isinstance(node, dict):
            return [node]
        raise WrongShape(f"expected one object at '{path}', got {_kind(node)}")
    if node is None:
        return []
    if isinstance(node, list):
        for item in node:
            if not isinstance(item, dict):
                raise WrongShape(f"expected objects in '{path}', got {_kind(item)}")
        return node
    raise WrongShape(f"expected a list of records at '{path}', got {_kind(node)}")


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def render(template: str, variables: Mapping[str, Any], *, in_path: bool) -> str:
    """Fill ``{placeholders}``; values bound into a path are one percent-encoded segment each
    (``/``, ``?``, ``#``, ``%`` included), and dot segments are refused (UnsafePathValue)."""
    if "{" not in template:
        return template
    if in_path:
        values = {k: _path_value(v, k) for k, v in variables.items() if "{" + k in template}
    else:
        values = {k: _text(v) for k, v in variables.items()}
    return template.format_map(values)


def _render_body(body: Any, variables: Mapping[str, Any]) -> Any:
    if isinstance(body, str):
        # A body value that is exactly one placeholder keeps the variable's JSON type.
        if body.startswith("{") and body.endswith("}") and body[1:-1] in variables:
            return variables[body[1:-1]]
        return render(body, variables, in_path=False)
    if isinstance(body, dict):
        return {k: _render_body(v, variables) for k, v in body.items()}
    if isinstance(body, list):
        return [_render_body(v, variables) for v in body]
    return body


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


_UNSAFE_SEGMENTS = frozenset({"", ".", ".."})


def _path_value(v: Any, name: str = "value") -> str:
    """``v`` percent-encoded as exactly one path segment (what ``render(in_path=True)`` does);
    raises :class:`UnsafePathValue` for a dot segment or an empty value."""
    text = v if type(v) is str else _text(v)
    # ASCII letters and digits need no encoding: skip quote() for the usual ids.
    if text.isascii() and text.isalnum():
        return text
    if text in _UNSAFE_SEGMENTS:
        raise UnsafePathValue(name, v)
    return quote(text, safe="")


def _compile_path(template: str) -> list[tuple[str, str | None]] | None:
    """``template`` as (literal, variable) pieces, or None when it needs ``render``
    (a format spec, a conversion, or an attribute or index in a placeholder)."""
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in Formatter().parse(template):
        if name is not None and (spec or conversion or not name.isidentifier()):
            return None
        pieces.append((literal, name))
    return pieces


class RequestTemplate:
    """The one way a walk's first request is built (engine, sync mode, ``plan``'s sampler):
    compiled once per endpoint, so the per-job work is filling placeholders.

    :meth:`build` takes the compiled path; :meth:`build_general` renders everything each time
    (what ``build`` falls back to for a path with its own query or fragment) and is the
    reference the compiled path is tested against. ``build`` is about three times cheaper.
    """

    def __init__(self, base_url: URL, endpoint: EndpointConfig) -> None:
        self.endpoint = endpoint
        self.base_url = base_url
        path = endpoint.path.lstrip("/")
        # A path with its own query or fragment goes the general way (URL.join).
        self._simple = "?" not in path and "#" not in path
        self._prefix = base_url.raw_path
        self._path = path
        self._path_vars = "{" in path
        self._pieces = _compile_path(path) if self._path_vars else None
        self._static_url = (
            base_url.with_path(self._prefix + path, encoded=True)
            if self._simple and not self._path_vars
            else None
        )
        self._params_static = not any(
            isinstance(v, str) and "{" in v for v in endpoint.params.values()
        )
        self._params = tuple(
            (k, v if isinstance(v, str) else _text(v)) for k, v in endpoint.params.items()
        )

    def build(self, variables: Mapping[str, Any]) -> Request:
        """The request for one binding of the template's variables, each path value encoded as
        exactly one segment; raises :class:`UnsafePathValue` for a path value that is a dot segment
        or empty."""
        e = self.endpoint
        if not self._simple:
            return self.build_general(variables)
        if self._static_url is not None:
            url = self._static_url
        else:
            pieces = self._pieces
            if pieces is None:
                path = render(self._path, variables, in_path=True)
            elif len(pieces) == 1:  # the usual "users/{id}"
                literal, name = pieces[0]
                path = literal + _path_value(variables[name], name) if name else literal
            else:
                path = "".join(
                    literal + _path_value(variables[name], name) if name else literal
                    for literal, name in pieces
                )
            url = self.base_url.with_path(self._prefix + path, encoded=True)
        if self._params_static:
            params = self._params
        else:
            params = tuple((k, render(v, variables, in_path=False)) for k, v in self._params)
        body = _render_body(e.json_body, variables) if e.json_body is not None else None
        return Request(method=e.method, url=url, params=params, json_body=body)

    def build_general(self, variables: Mapping[str, Any]) -> Request:
        """The first request of one walk with ``variables`` bound, rendered in full."""
        endpoint, base_url = self.endpoint, self.base_url
        path = render(endpoint.path, variables, in_path=True)
        url = base_url.join(URL(path.lstrip("/"), encoded=True)) if path else base_url
        params = tuple(
            (k, render(v, variables, in_path=False) if isinstance(v, str) else _text(v))
            for k, v in endpoint.params.items()
        )
        body = (
            _render_body(endpoint.json_body, variables) if endpoint.json_body is not None else None
        )
        return Request(method=endpoint.method, url=url, params=params, json_body=body)


def base_url_of(raw: str) -> URL:
    """The base URL with a trailing slash, so that joining keeps its path prefix."""
    url = URL(raw)
    return url if url.path.endswith("/") else url.with_path(url.path + "/")
