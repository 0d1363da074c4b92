"""Cursor values of incremental endpoints: parse, compare, step back by the lag, format.

One :class:`CursorKind` per ``incremental.cursor_type``:

- ``timestamp``: ISO 8601 text, any zone offset (``2024-01-01T10:00:00+02:00``, ``...Z``); naive
  text is UTC (as the schema's ``timestamp`` reads it). Compared as UTC instants (integer
  microseconds since the epoch, so exact); formatted back as ISO UTC with ``Z``
  (``2024-01-01T08:00:00Z``, with milliseconds or microseconds only when they are not zero).
  The lag is seconds.
- ``epoch_s`` / ``epoch_ms``: numbers (or numeric text) of seconds / milliseconds since the epoch;
  the lag is seconds either way (times 1,000 for ``epoch_ms``).
- ``integer``: a sequence number, version, change id; the lag is a count.
- ``token``: an opaque "changes since" value the API hands out (a ``next_sync_token``), never
  parsed or compared: the newest one seen is kept, as is.

The module sits in the config layer because loading a config checks ``initial`` and ``end``
with it (config is the bottom layer); the engine keeps the running maximum of each page with
:class:`asyncingest.core.cursor.CursorMax`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

CursorType = Literal["timestamp", "epoch_s", "epoch_ms", "integer", "token"]
CURSOR_TYPES: tuple[CursorType, ...] = ("timestamp", "epoch_s", "epoch_ms", "integer", "token")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = 1_000_000

#: A parsed, comparable cursor value (microseconds for timestamps, a number otherwise); a
#: token is kept as the API gave it.
Key = Any


class CursorError(ValueError):
    """A value that is not a cursor of its type (the message says which and why)."""


class CursorKind:
    """The semantics of one cursor type: :meth:`parse` a value into a comparable key,
    :meth:`back` steps a key back by the lag, :meth:`to_json` / :meth:`to_text` format it for
    the state and for the request."""

    def __init__(self, cursor_type: CursorType) -> None:
        if cursor_type not in CURSOR_TYPES:
            raise CursorError(f"unknown cursor type {cursor_type!r}")
        self.type: CursorType = cursor_type

    def __repr__(self) -> str:
        return f"CursorKind({self.type})"

    @property
    def ordered(self) -> bool:
        """Whether values compare (every type but ``token``)."""
        return self.type != "token"

    @property
    def timed(self) -> bool:
        """Whether values are instants (``timestamp``, ``epoch_s``, ``epoch_ms``)."""
        return self.type in ("timestamp", "epoch_s", "epoch_ms")

    def at(self, seconds: float) -> Key | None:
        """The key of the instant ``seconds`` since the epoch (None for ``integer`` and
        ``token``, which are no instants)."""
        if self.type == "timestamp":
            return round(seconds * _US)
        if self.type == "epoch_s":
            return seconds
        if self.type == "epoch_ms":
            return seconds * 1000
        return None

    def parse(self, value: Any) -> Key:
        """The comparable key of ``value``; :class:`CursorError` when it is not one."""
        t = self.type
        if t == "token":
            if value is None or value == "":
                raise CursorError("an empty token")
            return value
        if t == "timestamp":
            return _parse_timestamp(value)
        if t == "integer":
            return _parse_integer(value)
        return _parse_number(value, "milliseconds" if t == "epoch_ms" else "seconds")

    def try_parse(self, value: Any) -> Key | None:
        """:meth:`parse`, or None for a missing or unreadable value (a record without one)."""
        if value is None:
            return None
        try:
            return self.parse(value)
        except CursorError:
            return None

    def back(self, key: Key, lag: float) -> Key:
        """``key`` moved back by ``lag`` (seconds for time types, a count for ``integer``)."""
        if not lag or self.type == "token":
            return key
        if self.type == "timestamp":
            return key - round(lag * _US)
        if self.type == "epoch_ms":
            return key - lag * 1000
        if self.type == "integer":
            return key - int(lag)
        return key - lag

    def newer(self, a: Key | None, b: Key | None) -> Key | None:
        """The later of two keys (None is "none yet"); for tokens, ``b`` when it is set."""
        if a is None:
            return b
        if b is None:
            return a
        if self.type == "token":
            return b
        return b if b > a else a

    def to_json(self, key: Key) -> Any:
        """``key`` as the state stores it (and the report shows it): ISO UTC text for
        timestamps, a number for the others, a token as it came."""
        if self.type == "timestamp":
            return format_timestamp(key)
        if isinstance(key, float) and key.is_integer():
            return int(key)
        return key

    def to_text(self, key: Key) -> str:
        """``key`` as a query parameter value."""
        value = self.to_json(key)
        return value if isinstance(value, str) else str(value)

    def from_json(self, value: Any) -> Key:
        """The key of a value :meth:`to_json` wrote."""
        return self.parse(value)


def infer_type(initial: Any) -> CursorType | None:
    """The cursor type ``initial`` says unambiguously (ISO text: ``timestamp``), else None."""
    if isinstance(initial, datetime):
        return "timestamp"
    if isinstance(initial, str):
        try:
            _parse_timestamp(initial)
        except CursorError:
            return None
        return "timestamp"
    return None


def format_timestamp(us: int) -> str:
    """Microseconds since the epoch as ISO 8601 UTC with ``Z``: whole seconds when the fraction is
    zero, milliseconds when that is exact, else microseconds."""
    dt = _EPOCH + timedelta(microseconds=us)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = us % _US
    if frac == 0:
        return text + "Z"
    if frac % 1000 == 0:
        return f"{text}.{frac // 1000:03d}Z"
    return f"{text}.{frac:06d}Z"


def _parse_timestamp(value: Any) -> int:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise CursorError(
                f"{value!r} is not an ISO 8601 timestamp (e.g. 2024-01-01T00:00:00Z)"
            ) from None
    else:
        raise CursorError(
            f"expected ISO 8601 text for a timestamp cursor, got {type(value).__name__} "
            f"{value!r} (epoch numbers: cursor_type epoch_s or epoch_ms)"
        )
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _parse_integer(value: Any) -> int:
    if isinstance(value, bool):
        raise CursorError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise CursorError(f"expected an integer, got {type(value).__name__} {value!r}")


def _parse_number(value: Any, unit: str) -> int | float:
    if isinstance(value, bool):
        raise CursorError(f"expected epoch {unit}, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CursorError(f"expected epoch {unit}, got {value!r}")
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return int(number) if number.is_integer() else number
    raise CursorError(f"expected epoch {unit} (a number), got {type(value).__name__} {value!r}")
