"""The running high-water mark of an incremental endpoint: the highest cursor of the records a
writer has been handed (or, for a token cursor, the newest token a page carried).

The writer folds every page into one :class:`CursorMax` and hands its value out at each barrier
(:meth:`take`): what it hands out is exactly the records made durable by that barrier, so the
checkpoint that saves it advances the mark only with durable records. Values are keys of
:class:`asyncingest.config.cursor.CursorKind` (comparable); a record whose cursor is missing or
unreadable does not move the mark and is counted (``unreadable``). :func:`bind_window` puts an
increment's window into an endpoint's request template.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..config.cursor import CursorKind, Key
from ..config.models import (
    INCREMENTAL_END,
    INCREMENTAL_START,
    EndpointConfig,
    IncrementalConfig,
)

__all__ = ["CursorMax", "bind_window"]


def _getter(path: str) -> Any:
    parts = path.split(".")
    if len(parts) == 1:
        name = parts[0]
        return lambda r: r.get(name) if isinstance(r, Mapping) else None

    def get(r: Any) -> Any:
        for part in parts:
            if not isinstance(r, Mapping):
                return None
            r = r.get(part)
        return r

    return get


class CursorMax:
    """The highest cursor of the records (or the newest token) folded since the last
    :meth:`take`."""

    __slots__ = ("_get", "_last_raw", "kind", "unreadable", "value")

    def __init__(self, spec: IncrementalConfig) -> None:
        self.kind: CursorKind = spec.kind
        field = spec.cursor_field if spec.cursor_type != "token" else None
        self._get = _getter(field) if field else None
        self.value: Key | None = None
        self.unreadable = 0  # records whose cursor was missing or not of its type
        self._last_raw: Any = None

    def __repr__(self) -> str:
        return f"CursorMax({self.kind.type}, {self.value!r}, unreadable={self.unreadable})"

    def fold(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Fold the cursors of ``records`` (no-op for a token cursor)."""
        get = self._get
        if get is None:
            return
        kind, best, last_raw = self.kind, self.value, self._last_raw
        for r in records:
            raw = get(r)
            if raw is None:
                self.unreadable += 1
                continue
            if raw == last_raw and type(raw) is type(last_raw):  # same text: no parse
                continue
            key = kind.try_parse(raw)
            if key is None:
                self.unreadable += 1
                continue
            last_raw = raw
            if best is None or key > best:
                best = key
        self.value, self._last_raw = best, last_raw

    def fold_token(self, token: Any) -> None:
        """A page's "changes since" token (None: the page carried none)."""
        if token is not None and token != "":
            self.value = token

    def take(self) -> Key | None:
        """The mark since the last take (None: nothing moved it), and start again."""
        value, self.value, self._last_raw = self.value, None, None
        return value


def _escaped(value: Any) -> Any:
    """A value put into a template: braces doubled, so rendering gives it back as it is."""
    return value.replace("{", "{{").replace("}", "}}") if isinstance(value, str) else value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def bind_window(endpoint: EndpointConfig, start: Any, end: Any) -> EndpointConfig:
    """``endpoint`` with an increment's window in its request: ``?param=<start>`` (left out when
    there is no start yet), ``?end_param=<end>``, and the ``{incremental.start}`` /
    ``{incremental.end}`` placeholders of ``params`` and ``body`` filled (a body value that is
    only the placeholder keeps the value's JSON type). ``start`` and ``end`` are JSON forms
    (:meth:`CursorKind.to_json`)."""
    inc = endpoint.incremental
    if inc is None:
        return endpoint
    values = {INCREMENTAL_START: start, INCREMENTAL_END: end}

    def fill(text: str) -> str:
        for name, value in values.items():
            token = "{" + name + "}"
            if token in text:
                text = text.replace(token, _escaped(_text("" if value is None else value)))
        return text

    def fill_body(node: Any) -> Any:
        if isinstance(node, str):
            for name, value in values.items():
                if node == "{" + name + "}":
                    return _escaped(value)
            return fill(node)
        if isinstance(node, dict):
            return {k: fill_body(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill_body(v) for v in node]
        return node

    params: dict[str, str | int | float | bool] = {
        k: fill(v) if isinstance(v, str) else v for k, v in endpoint.params.items()
    }
    if inc.param and start is not None:
        params[inc.param] = _escaped(_text(start))
    if inc.end_param and end is not None:
        params[inc.end_param] = _escaped(_text(end))
    update: dict[str, Any] = {"params": params}
    if endpoint.json_body is not None:
        update["json_body"] = fill_body(endpoint.json_body)
    return endpoint.model_copy(update=update)
