"""CRM records that change over time: the mock clock, edits, archives, new records, and the
indexes that answer "what changed since" (``updatedAfter`` filters and sync tokens).

The CRM lists (``Dataset.contacts``, ``Dataset.engagements``) are plain lists of dicts; a
:class:`ChangingTable` wraps one and keeps it the served truth:

- **Copy on write.** An edit replaces the record's dict in the list (same position) instead of
  changing it in place, so a test that kept ``list(dataset.contacts)`` still holds the old
  versions: "the state before" and "the state after" are both at hand.
- **The clock.** ``updatedAt`` of a change is the dataset's mock clock (:class:`MockClock`),
  which only the test (or ``POST /_edit``) moves; never the wall clock. Millisecond precision,
  as the records' timestamps (``2024-03-01T00:00:00.000Z``).
- **By update time.** Records ordered by ``(updatedAt, numeric id)``, rebuilt lazily after a
  change: what ``?updatedAfter=`` pages through with a keyset cursor (the ``(updatedAt, id)``
  of the last record served), so a record edited while a client pages moves behind the cursor
  and is served again later, never skipped, and no other record shifts.
- **By change sequence.** Every version gets the next sequence number of its table (the build
  numbers the first versions 1..n in list order); ``/changes?since=<token>`` serves each
  record once, at its latest version, in sequence order after the token's number. The token
  is opaque to clients (``base64url("<table>:<seq>")``).

Deterministic: samples and new values come from ``random.Random`` seeded with strings (never
``hash()``), so the same calls on the same dataset make the same changes in every process.
"""

from __future__ import annotations

import base64
import bisect
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Record = dict[str, Any]

CLOCK_START = datetime(2024, 3, 1, tzinfo=UTC)
"""Where the mock clock starts: after every generated ``updatedAt`` (all within 2023 plus 30
days), so the first change is the newest record."""

_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_z(t: datetime) -> str:
    """HubSpot's timestamp text: UTC, milliseconds, ``Z`` (``2024-03-01T00:00:00.000Z``)."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def to_micros(t: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact integers for comparisons)."""
    return (t - _EPOCH) // _US


def parse_instant(raw: str) -> int:
    """A query's instant as epoch microseconds: ISO 8601 with ``Z`` or an offset (a ``+`` sent
    unencoded arrives as a space and is read back as ``+``), or epoch milliseconds (digits).
    A time without a zone is UTC. Raises ``ValueError`` for anything else."""
    text = raw.strip().replace(" ", "+")
    if text.isascii() and text.isdigit():
        return int(text) * 1000
    if "T" not in text:
        raise ValueError(f"expected an ISO 8601 instant or epoch milliseconds, got {raw!r}")
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return to_micros(t)


class MockClock:
    """The instant the mock API says it is, for ``updatedAt``/``createdAt`` of changes.

    Moves only when told (:meth:`advance`, :meth:`set`), and never backwards.
    """

    def __init__(self, start: datetime = CLOCK_START) -> None:
        self._now = start

    @property
    def now(self) -> datetime:
        """The current mock instant (aware, UTC)."""
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock ``seconds`` (>= 0) forward; returns the new instant."""
        if seconds < 0:
            raise ValueError(f"the mock clock never goes back (advance by {seconds})")
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, instant: datetime) -> datetime:
        """Set the clock to ``instant`` (aware; not before the current instant)."""
        if instant.tzinfo is None:
            raise ValueError("the mock clock needs an aware datetime (with a time zone)")
        if instant < self._now:
            raise ValueError(f"the mock clock never goes back ({instant} < {self._now})")
        self._now = instant.astimezone(UTC)
        return self._now

    def __repr__(self) -> str:
        return f"MockClock({iso_z(self._now)})"


@dataclass(frozen=True)
class Window:
    """Which versions a filtered list serves: ``updatedAt`` in ``[low, high)`` in microseconds
    (``low`` already adjusted for strictly-after), and which archived states."""

    low: int | None
    high: int | None
    archived: bool | None  # None: both


def sync_token(table: str, seq: int) -> str:
    """The opaque token naming "every change of ``table`` up to ``seq``"."""
    return base64.urlsafe_b64encode(f"{table}:{seq}".encode()).decode().rstrip("=")


def read_sync_token(table: str, token: str) -> int:
    """The sequence number in a token :func:`sync_token` made for ``table``; ``ValueError`` for
    anything else (another table's token, garbage)."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"invalid sync token {token!r}") from None
    name, _, seq = text.partition(":")
    if name != table or not (seq.isascii() and seq.isdigit()):
        raise ValueError(f"invalid sync token {token!r} for {table}")
    return int(seq)


class ChangingTable:
    """One CRM list (``rows``, served as is) with its indexes by id, update time and change
    sequence. ``mutate`` is how every change goes in; see the module docstring."""

    def __init__(self, name: str, rows: list[Record]) -> None:
        self.name = name
        self.rows = rows
        self._position = {r["id"]: i for i, r in enumerate(rows)}
        self._seq: dict[str, int] = {}
        self._log: list[tuple[int, str]] = []  # (seq, id) ascending; stale entries skipped
        for r in rows:
            self._record_change(r["id"])
        self._keys: list[tuple[int, int]] = []  # (updatedAt us, numeric id), ascending
        self._ordered: list[Record] = []
        self._dirty = True

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest version (0 for an empty table)."""
        return self._log[-1][0] if self._log else 0

    def get(self, record_id: str) -> Record:
        """The current version of a record; ``KeyError`` if there is none."""
        return self.rows[self._position[record_id]]

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._position

    def replace(self, record: Record) -> None:
        """Put a new version of ``record`` (by its ``id``) in place, or append a new record."""
        rid = record["id"]
        at = self._position.get(rid)
        if at is None:
            self._position[rid] = len(self.rows)
            self.rows.append(record)
        else:
            self.rows[at] = record
        self._record_change(rid)
        self._dirty = True

    def _record_change(self, rid: str) -> None:
        seq = self.last_seq + 1
        self._seq[rid] = seq
        self._log.append((seq, rid))

    # -- reading ------------------------------------------------------------------------------

    def _index(self) -> tuple[list[tuple[int, int]], list[Record]]:
        if self._dirty:
            keyed = sorted(((_updated_micros(r), int(r["id"])), r) for r in self.rows)
            self._keys = [k for k, _ in keyed]
            self._ordered = [r for _, r in keyed]
            self._dirty = False
        return self._keys, self._ordered

    def by_update(
        self, window: Window, after: tuple[int, int] | None, limit: int
    ) -> tuple[list[Record], tuple[int, int] | None]:
        """Up to ``limit`` records in the window, ordered by ``(updatedAt, id)``, after the keyset
        cursor ``after``; and the cursor of the next page (None: this was the last)."""
        keys, ordered = self._index()
        start = 0 if window.low is None else bisect.bisect_left(keys, (window.low, -1))
        if after is not None:
            start = max(start, bisect.bisect_right(keys, after))
        end = len(keys) if window.high is None else bisect.bisect_left(keys, (window.high, -1))
        page: list[Record] = []
        last: tuple[int, int] | None = None
        for i in range(start, end):
            r = ordered[i]
            if window.archived is not None and bool(r.get("archived")) != window.archived:
                continue
            if len(page) == limit:
                return page, last  # another record follows: there is a next page
            page.append(r)
            last = keys[i]
        return page, None

    def by_position(
        self, start: int, limit: int, keep: Callable[[Record], bool] | None
    ) -> tuple[list[Record], int | None]:
        """Up to ``limit`` records from list position ``start`` that ``keep`` accepts (all when
        None), and the position the next page starts at (None: this was the last). Positions
        never shift (records are only replaced or appended), so the cursor is stable."""
        rows = self.rows
        if keep is None:
            end = start + limit
            return rows[start:end], (end if end < len(rows) else None)
        page: list[Record] = []
        for i in range(start, len(rows)):
            if not keep(rows[i]):
                continue
            if len(page) == limit:
                return page, i
            page.append(rows[i])
        return page, None

    def changes_since(self, seq: int, limit: int) -> tuple[list[Record], int, bool]:
        """Up to ``limit`` records whose latest version came after change ``seq``, in change
        order; the sequence number to continue from, and whether more follow."""
        log = self._log
        page: list[Record] = []
        last = seq
        for i in range(bisect.bisect_right(log, (seq, "\U0010ffff")), len(log)):
            n, rid = log[i]
            if self._seq[rid] != n:
                continue  # an older version: the record comes again at its newest
            if len(page) == limit:
                return page, last, True
            page.append(self.get(rid))
            last = n
        return page, self.last_seq, False  # every change up to now is covered

    def __iter__(self) -> Iterator[Record]:
        return iter(self.rows)


def _updated_micros(r: Record) -> int:
    return to_micros(datetime.fromisoformat(r["updatedAt"]))


# -- the changes ----------------------------------------------------------------------------

_NEW_LAST = ["Quinlan", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Barros", "Novak", "Haddad"]
_ENGAGEMENT_TYPES = ["EMAIL", "CALL", "MEETING", "NOTE", "TASK"]


def sample_ids(
    table: ChangingTable, fraction: float, rng: random.Random, ids: Sequence[str] | None
) -> list[str]:
    """The ids to change: ``ids`` as given (each must exist), or ``fraction`` of the records not
    archived (at least one when ``fraction`` > 0), chosen by ``rng``, in list order."""
    if ids is not None:
        missing = [i for i in ids if i not in table]
        if missing:
            raise KeyError(f"no {table.name} with id {missing[0]!r}")
        return list(dict.fromkeys(ids))
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    live = [r["id"] for r in table if not r.get("archived")]
    k = min(len(live), max(1, round(fraction * len(live)))) if fraction > 0 else 0
    chosen = set(rng.sample(live, k))
    return [i for i in live if i in chosen]


def edited(table: str, record: Record, rng: random.Random, now: datetime) -> Record:
    """A new version of ``record``: one field changed (contacts: ``properties.lastname``;
    engagements: ``type``), ``updatedAt`` = ``now``."""
    new = dict(record)
    if table == "contacts":
        props = dict(new["properties"])
        props["lastname"] = rng.choice([n for n in _NEW_LAST if n != props.get("lastname")])
        new["properties"] = props
    else:
        new["type"] = rng.choice([t for t in _ENGAGEMENT_TYPES if t != new.get("type")])
    new["updatedAt"] = iso_z(now)
    return new


def archived(record: Record, now: datetime) -> Record:
    """A new version of ``record`` with ``archived: true``, ``updatedAt`` = ``now``."""
    return {**record, "archived": True, "updatedAt": iso_z(now)}


def created(table: str, record_id: str, n: int, rng: random.Random, now: datetime) -> Record:
    """A new record of ``table`` (the ``n``-th of the table) made at ``now``."""
    stamp = iso_z(now)
    if table == "contacts":
        first, last = rng.choice(["Ada", "Grace", "Alan", "Edsger"]), rng.choice(_NEW_LAST)
        return {
            "id": record_id,
            "properties": {
                "email": f"{first.lower()}.{last.lower()}{n}@example.com",
                "firstname": first,
                "lastname": last,
                "createdate": stamp,
            },
            "createdAt": stamp,
            "updatedAt": stamp,
            "archived": False,
        }
    return {
        "id": record_id,
        "type": rng.choice(_ENGAGEMENT_TYPES),
        "timestamp": to_micros(now) // 1000,
        "ownerId": str(rng.randint(100, 120)),
        "updatedAt": stamp,
        "archived": False,
    }
