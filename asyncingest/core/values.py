"""One value into one column type: the coercions a declared schema allows, and why not.

Each converter takes ``(value, lenient)`` and returns what ``pa.array`` takes for the column's
Arrow type, or raises :class:`Mismatch` (its ``args[0]`` may add a detail for the dead letter).
``lenient`` (a declared type) accepts text for numbers and bools and a number as text; an
inferred column takes only its own JSON type.

Timestamps are stored as UTC microseconds (``timestamp_ns``: nanoseconds). ``timestamp`` reads
ISO-8601 text (naive text is UTC) or epoch *seconds*; ``timestamp_ms`` / ``timestamp_us`` /
``timestamp_ns`` read epoch numbers in that unit (ISO text too). A value outside what the stored
unit can hold for every reader (years 0001-9999 for microseconds, what ``datetime`` and pandas
read; 1677-09-21..2262-04-11 for nanoseconds, int64), NaN or infinity, or text that is not a
timestamp is a mismatch: its record is dead-lettered with the field and value, never written
as year 55037 (epoch milliseconds read as seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Final

from .json import dumps
from .nested import I64_MAX, I64_MIN

_NONE: Final = type(None)
_MAX_SHOWN: Final = 60
_DECIMAL_MAX: Final = 10**38 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
# Microseconds from the epoch to 0001-01-01 and to the end of 9999-12-31.
_US_MIN: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _ONE_US
_US_MAX: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _ONE_US
#: Units of the epoch numbers each timestamp type reads, per second.
TIMESTAMP_UNITS: Final[Mapping[str, int]] = {
    "timestamp": 1,
    "timestamp_ms": 1_000,
    "timestamp_us": 1_000_000,
    "timestamp_ns": 1_000_000_000,
}

#: Exact Python types ``pa.array`` converts faithfully for each type; others go per value.
FAST_TYPES: Final[Mapping[str, frozenset[type]]] = {
    "string": frozenset({str, _NONE}),
    "int64": frozenset({int, _NONE}),
    "float64": frozenset({int, float, _NONE}),
    "bool": frozenset({bool, _NONE}),
    "decimal": frozenset({int, _NONE}),
}


class Mismatch(Exception):
    """A value that does not fit its column; ``args[0]`` may add a detail."""


def show(value: object) -> str:
    """``str 'abc'``: the type name and a truncated repr, for rejection reasons."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deep, or an int too long to print
        text = "..."
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return f"{type(value).__name__} {text}"


def _int(v: object, lenient: bool) -> int:
    if isinstance(v, bool):
        raise Mismatch()
    if isinstance(v, int) or (lenient and isinstance(v, float) and v.is_integer()):
        out = int(v)
    elif lenient and isinstance(v, str):
        try:
            out = int(v.strip())
        except ValueError:
            raise Mismatch() from None
    else:
        raise Mismatch()
    if not I64_MIN <= out <= I64_MAX:
        raise Mismatch("out of int64 range")
    return out


def _decimal(v: object, lenient: bool) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise Mismatch("integers beyond int64 are kept exact: no floats in this column")
    if not -_DECIMAL_MAX <= v <= _DECIMAL_MAX:
        raise Mismatch("beyond the 38 digits of decimal128(38, 0)")
    return int(v)


def _float(v: object, lenient: bool) -> float:
    if isinstance(v, int) and not isinstance(v, bool) and not I64_MIN <= v <= I64_MAX:
        raise Mismatch("an integer beyond int64 would lose its value as float64")
    try:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        if lenient and isinstance(v, str):
            return float(v)
    except (OverflowError, ValueError):
        raise Mismatch() from None
    raise Mismatch()


def _str(v: object, lenient: bool) -> str:
    if isinstance(v, str):
        return str(v)
    if lenient and isinstance(v, bool | int | float):  # as JSON text: "true", "42", "1.5"
        return _json(v, lenient)
    raise Mismatch("use type json for nested values" if isinstance(v, dict | list) else None)


def _bool(v: object, lenient: bool) -> bool:
    if isinstance(v, bool):
        return v
    if lenient and v in ("true", "false"):
        return v == "true"
    raise Mismatch()


def _json(v: object, lenient: bool) -> str:
    if not lenient and not isinstance(v, dict | list):
        raise Mismatch()
    try:
        return dumps(v).decode()
    except TypeError as exc:  # nested 255 levels or more, an unsupported type
        raise Mismatch(f"cannot be written as JSON text: {exc}") from None


def _timestamp(per_second: int) -> Callable[[object, bool], int]:
    """Epoch numbers in 1/``per_second`` s, or ISO-8601 text, to the stored integer."""
    ns = per_second == 1_000_000_000
    unit = {1: "seconds", 1_000: "milliseconds", 1_000_000: "microseconds"}.get(
        per_second, "nanoseconds"
    )

    def convert(v: object, lenient: bool) -> int:
        if isinstance(v, str):
            try:
                dt = datetime.fromisoformat(v)  # 3.11+: "Z", offsets, fractions, date-only
            except ValueError:
                raise Mismatch("not an ISO-8601 timestamp") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            micros = (dt - _EPOCH) // _ONE_US
            value = micros * 1000 if ns else micros
        elif isinstance(v, datetime):
            dt = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
            micros = (dt - _EPOCH) // _ONE_US
            value = micros * 1000 if ns else micros
        elif isinstance(v, int | float) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):
                raise Mismatch("not a finite number")
            if ns:
                value = int(v) if isinstance(v, int) else round(v)
            elif isinstance(v, int) and 1_000_000 % per_second == 0:
                value = v * (1_000_000 // per_second)
            else:
                value = round(v * 1_000_000 / per_second)
        else:
            raise Mismatch()
        if ns:
            if not I64_MIN <= value <= I64_MAX:
                raise Mismatch("outside 1677-09-21..2262-04-11, what nanoseconds can hold")
        elif not _US_MIN <= value <= _US_MAX:
            hint = ""
            if isinstance(v, int | float):
                hint = f" as epoch {unit}"
                if per_second < 1_000_000:
                    hint += "; in a finer unit? declare timestamp_ms, timestamp_us or _ns"
            raise Mismatch(f"outside years 0001-9999{hint}")
        return value

    return convert


def _date(v: object, lenient: bool) -> date:
    if isinstance(v, str):
        try:
            return date.fromisoformat(v)
        except ValueError:
            raise Mismatch("not a YYYY-MM-DD date") from None
    if isinstance(v, date) and not isinstance(v, datetime):
        return v
    raise Mismatch()


CONVERTERS: Final[Mapping[str, Callable[[object, bool], object]]] = {
    "string": _str,
    "int64": _int,
    "float64": _float,
    "bool": _bool,
    "decimal": _decimal,
    "json": _json,
    **{name: _timestamp(per_second) for name, per_second in TIMESTAMP_UNITS.items()},
    "date": _date,
}
