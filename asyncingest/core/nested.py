"""Column kinds: what asyncingest knows about a column's type, nested values included.

A *kind* is the logical type of a column (or of a value inside one):

``None``
    undecided: only nulls so far (stored as a null-filled string placeholder);
``"bool"``, ``"int64"``, ``"float64"``, ``"string"``
    the JSON scalars;
``"decimal"``
    integers beyond int64, stored exactly as ``decimal128(38, 0)``;
``"json"``
    JSON text in a string column (declared, or an inferred column's fallback);
``"timestamp"``, ``"timestamp_ms"``, ``"timestamp_us"``, ``"timestamp_ns"``, ``"date"``
    declared only (never inferred);
``("struct", {name: kind, ...})`` and ``("list", kind)``
    a JSON object and a JSON array, stored as Arrow ``struct`` and ``list`` columns.

:func:`widen` folds one value into a kind with the same rules as for scalars: null waits, a
new object key is added, int64 widens to float64 (and to decimal for integers beyond int64),
an empty list waits for an element type. A real conflict (an object where a number was, text
where numbers were, deeper than :data:`MAX_TYPED_DEPTH`) raises :class:`Untypable`: the caller
falls back to JSON text for that column. Kinds are immutable: :func:`widen` returns the *same*
object when nothing changed, so a column's kind is compared by identity on the hot path.

An object that has never had a key is stored as null (Parquet cannot store a struct without
fields) until a key shows up; ``{}`` and ``null`` are then both null in the column.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from .json import dumps

Kind: TypeAlias = Any  # None | str | ("struct", dict[str, Kind]) | ("list", Kind)

#: Objects and arrays nested deeper than this are not typed: the column becomes JSON text.
MAX_TYPED_DEPTH: Final = 32
#: Deeper than this a value cannot be JSON text either (orjson writes up to 254 levels): its
#: record is rejected (and dead-lettered as truncated text).
MAX_JSON_DEPTH: Final = 254

DECIMAL_TYPE: Final = pa.decimal128(38, 0)
_DECIMAL_MAX: Final = 10**38 - 1
I64_MIN: Final = -(2**63)
I64_MAX: Final = 2**63 - 1

SCALAR_ARROW: Final[Mapping[str, pa.DataType]] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "decimal": DECIMAL_TYPE,
    "json": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "timestamp_ms": pa.timestamp("us", tz="UTC"),
    "timestamp_us": pa.timestamp("us", tz="UTC"),
    "timestamp_ns": pa.timestamp("ns", tz="UTC"),
    "date": pa.date32(),
}
#: Physical type of a kind that is still undecided (readable by every Parquet reader).
PLACEHOLDER: Final = pa.string()

_SCALAR_KIND: Final[Mapping[type, str]] = {
    bool: "bool",
    int: "int64",
    float: "float64",
    str: "string",
}
# (current, incoming) -> widened; equal kinds and None are handled before.
_WIDER: Final[Mapping[tuple[str, str], str]] = {
    ("int64", "float64"): "float64",
    ("float64", "int64"): "float64",
    ("int64", "decimal"): "decimal",
    ("decimal", "int64"): "decimal",
}


class Untypable(Exception):
    """A value that does not fit a typed column; ``args[0]`` says why."""


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if type(item) is dict:
            stack.extend((v, depth + 1) for v in item.values() if type(v) in (dict, list))
        elif type(item) is list:
            stack.extend((v, depth + 1) for v in item if type(v) in (dict, list))
    return False


def is_nested(kind: Kind) -> bool:
    """Whether ``kind`` is a struct or list kind (a tuple), not a scalar's name."""
    return type(kind) is tuple


def scalar_kind(value: object) -> str | None:
    """The kind of a scalar (``int`` beyond int64: ``"decimal"``); ``None`` if not a scalar."""
    t = type(value)
    kind = _SCALAR_KIND.get(t)
    if kind is None:
        for cls, k in _SCALAR_KIND.items():  # subclasses; bool before int
            if isinstance(value, cls):
                kind, t = k, cls
                break
        else:
            return None
    if kind == "int64" and not I64_MIN <= value <= I64_MAX:  # type: ignore[operator]
        return "decimal"
    return kind


def widen(kind: Kind, value: Any, depth: int = 1) -> Kind:
    """``kind`` widened to hold ``value`` (the same object if it already does)."""
    if value is None:
        return kind
    if type(value) is dict:
        if depth > MAX_TYPED_DEPTH:
            raise Untypable(f"nested deeper than {MAX_TYPED_DEPTH} levels")
        if kind is None:
            fields: dict[str, Kind] = {}
        elif type(kind) is tuple and kind[0] == "struct":
            fields = kind[1]
        else:
            raise Untypable(f"an object where {describe(kind)} was")
        grown: dict[str, Kind] | None = None
        for key, item in value.items():
            if key in fields:
                old = fields[key]
                new = widen(old, item, depth + 1)
                if new is old:
                    continue
            else:
                new = widen(None, item, depth + 1)
            if grown is None:
                grown = dict(fields)
            grown[key] = new
        if grown is None:
            return kind if kind is not None else ("struct", fields)
        return ("struct", grown)
    if type(value) is list:
        if depth > MAX_TYPED_DEPTH:
            raise Untypable(f"nested deeper than {MAX_TYPED_DEPTH} levels")
        if kind is None:
            element: Kind = None
        elif type(kind) is tuple and kind[0] == "list":
            element = kind[1]
        else:
            raise Untypable(f"a list where {describe(kind)} was")
        grew = element
        for item in value:
            grew = widen(grew, item, depth + 1)
        return kind if kind is not None and grew is element else ("list", grew)
    incoming = scalar_kind(value)
    if incoming is None:
        raise Untypable(f"unsupported value of type {type(value).__name__}")
    if incoming == "decimal" and not -_DECIMAL_MAX <= value <= _DECIMAL_MAX:
        raise Untypable("an integer beyond 38 digits")
    if kind == incoming:
        return kind
    if kind is None:
        return incoming
    wider = _WIDER.get((kind, incoming)) if type(kind) is str else None
    if wider is None:
        raise Untypable(f"{describe(incoming)} where {describe(kind)} was")
    return kind if wider == kind else wider


def describe(kind: Kind) -> str:
    """``kind`` in words for messages: ``null``, ``an object``, ``a list`` or the scalar's name."""
    if kind is None:
        return "null"
    if type(kind) is tuple:
        return "an object" if kind[0] == "struct" else "a list"
    return str(kind)


def arrow_type(kind: Kind) -> pa.DataType:
    """The Arrow type a column of ``kind`` is stored as."""
    if kind is None:
        return PLACEHOLDER
    if type(kind) is tuple:
        if kind[0] == "list":
            return pa.list_(arrow_type(kind[1]))
        if not kind[1]:
            return PLACEHOLDER  # an object without keys so far
        return pa.struct([(k, arrow_type(v)) for k, v in kind[1].items()])
    return SCALAR_ARROW[kind]


def needs_cleaning(kind: Kind) -> bool:
    """Whether values of ``kind`` hold an empty object, stored as null (see the module doc)."""
    if type(kind) is not tuple:
        return False
    if kind[0] == "list":
        return needs_cleaning(kind[1])
    return not kind[1] or any(needs_cleaning(k) for k in kind[1].values())


def clean(value: Any, kind: Kind) -> Any:
    """``value`` with the objects stored as null (keyless struct kinds) replaced by None."""
    if value is None or type(kind) is not tuple:
        return value
    if kind[0] == "list":
        return [clean(v, kind[1]) for v in value]
    fields = kind[1]
    if not fields:
        return None
    return {k: clean(v, fields[k]) if k in fields else v for k, v in value.items()}


# -- in the Parquet metadata ----------------------------------------------------------------


def to_json(kind: Kind) -> Any:
    """A kind as JSON (``{"struct": {...}}``, ``{"list": ...}``) for the files' metadata."""
    if type(kind) is tuple:
        if kind[0] == "list":
            return {"list": to_json(kind[1])}
        return {"struct": {k: to_json(v) for k, v in kind[1].items()}}
    return kind


def from_json(data: Any) -> Kind:
    """The inverse of :func:`to_json`; raises ``ValueError`` on anything else."""
    if data is None:
        return None
    if isinstance(data, str):
        if data not in SCALAR_ARROW:
            raise ValueError(f"unknown type {data!r}")
        return sys.intern(data)
    if isinstance(data, dict) and len(data) == 1:
        if "list" in data:
            return ("list", from_json(data["list"]))
        if "struct" in data and isinstance(data["struct"], dict):
            return ("struct", {str(k): from_json(v) for k, v in data["struct"].items()})
    raise ValueError(f"not a column type: {data!r}")


# -- old rows to a new kind -----------------------------------------------------------------


def conform_array(array: pa.Array, source: Kind, target: Kind) -> pa.Array:
    """``array`` (stored as ``source``) as ``target``, which only ever widens ``source``:
    undecided -> anything, new struct fields (null), int64 -> float64 or decimal, element
    types inside lists and structs, and anything -> JSON text."""
    target_type = arrow_type(target)
    if array.null_count == len(array):
        return pa.nulls(len(array), target_type)
    if target == "json":
        if source == "json":
            return array
        return pa.array(
            [None if v is None else dumps(v, default=_plain).decode() for v in array.to_pylist()],
            type=target_type,
        )
    if array.type == target_type and source == target:
        return array
    if type(target) is tuple and type(source) is tuple and source[0] == target[0]:
        mask = array.is_null()
        if target[0] == "list":
            offsets = array.offsets  # of a slice: not from 0, and its own offset
            start, end = offsets[0].as_py(), offsets[-1].as_py()
            values = conform_array(array.values.slice(start, end - start), source[1], target[1])
            offsets = pc.subtract(offsets, pa.scalar(start, offsets.type))
            return pa.ListArray.from_arrays(offsets, values, mask=mask)
        children = []
        fields = []
        for name, kind in target[1].items():
            child_type = arrow_type(kind)
            fields.append(pa.field(name, child_type))
            old = source[1].get(name)
            if old is None or (is_nested(old) and arrow_type(old) == PLACEHOLDER):
                # absent, null so far, or an object without keys so far (stored as null); a
                # string or JSON text child is pa.string() too, and is kept
                children.append(pa.nulls(len(array), child_type))
            else:  # .field() of a slice is sliced too
                children.append(conform_array(array.field(name), old, kind))
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    return array.cast(target_type, safe=False)  # int64 -> float64 rounds beyond 2**53, as float()


def _plain(value: Any) -> Any:
    """What ``to_pylist`` gives that JSON has no type for."""
    if isinstance(value, Decimal):
        return int(value)
    return str(value)


def union(a: Kind, b: Kind) -> Kind:
    """The narrowest kind both ``a`` and ``b`` widen to (:func:`conform_array` takes columns of
    either to it): undecided takes the other, struct fields are united by name (``a``'s order
    first), list elements united, int64 with float64 or decimal as in :func:`widen`, JSON text
    absorbs anything. Two kinds no value could widen between (text and numbers, an object and a
    list) raise :class:`Untypable`; the caller falls back to JSON text for the column."""
    if a is None:
        return b
    if b is None or a == b:
        return a
    if a == "json" or b == "json":
        return "json"
    if type(a) is tuple and type(b) is tuple and a[0] == b[0]:
        if a[0] == "list":
            return ("list", union(a[1], b[1]))
        fields = dict(a[1])
        for name, kind in b[1].items():
            fields[name] = union(fields[name], kind) if name in fields else kind
        return ("struct", fields)
    wider = _WIDER.get((a, b)) if type(a) is str and type(b) is str else None
    if wider is None:
        raise Untypable(f"{describe(b)} where {describe(a)} was")
    return wider
