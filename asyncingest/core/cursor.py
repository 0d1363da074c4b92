"""The running high-water mark of an incremental endpoint: the highest cursor of the records a
writer has been handed (or, for a token cursor, the newest token a page carried).

The writer folds every page into one :class:`CursorMax` and hands its value out at each barrier
(:meth:`take`): what it hands out is exactly the records made durable by that barrier, so the
checkpoint that saves it advances the mark only with durable records. Values are keys of
:class:`asyncingest.config.cursor.CursorKind` (comparable); a record whose cursor is missing or
unreadable does not move the mark and is counted (``unreadable``). So does, for a time cursor,
a record whose cursor is beyond ``limit`` (the run's start plus ``future_tolerance``: bad data
such as year 9999, or epoch milliseconds where seconds are expected, which would otherwise
jump the mark and skip every later change): counted (``future``), the first such raw value kept
for the warning. :func:`bind_window` puts an increment's window into an endpoint's request
template.
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

    __slots__ = (
        "_get",
        "_last_raw",
        "future",
        "future_value",
        "kind",
        "limit",
        "unreadable",
        "value",
    )

    def __init__(self, spec: IncrementalConfig, now: float | None = None) -> None:
        """``now``: the run's start, seconds since the epoch; with a time cursor and
        ``spec.future_tolerance`` set, cursors beyond ``now + future_tolerance`` do not count
        (``future``). None: no guard."""
        self.kind: CursorKind = spec.kind
        field = spec.cursor_field if spec.cursor_type != "token" else None
        self._get = _getter(field) if field else None
        self.value: Key | None = None
        self.unreadable = 0  # records whose cursor was missing or not of its type
        self.limit: Key | None = None  # the latest cursor that may move the mark
        if now is not None and spec.future_tolerance is not None:
            self.limit = self.kind.at(now + spec.future_tolerance)
        self.future = 0  # records whose cursor was beyond the limit
        self.future_value: Any = None  # the first of them (as the record has it)
        self._last_raw: Any = None

    def __repr__(self) -> str:
        return (
            f"CursorMax({self.kind.type}, {self.value!r}, unreadable={self.unreadable}, "
            f"future={self.future})"
        )

    def fold(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Fold the cursors of ``records`` (no-op for a token cursor)."""
        get = self._get
        if get is None:
            return
        kind, best, last_raw, limit = self.kind, self.value, self._last_raw, self.limit
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
            if limit is not None and key > limit:  # bad data: it must not jump the mark
                self.future += 1
                if self.future_value is None:
                    self.future_value = raw
                continue
            last_raw = raw
            if best is None or key > best:
                best = key
        self.value, self._last_raw = best, last_raw

    def take_future(self) -> tuple[int, Any]:
        """The records beyond the limit since the last call, and the first one's cursor; and
        start again."""
        found = (self.future, self.future_value)
        self.future, self.future_value = 0, None
        return found

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
