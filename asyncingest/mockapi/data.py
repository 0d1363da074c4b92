"""The mock API's data: built once from a seed and the scale knobs, identical in every process.

Only ``random.Random(seed)`` and ``hashlib`` feed it (never ``hash()``, which is salted per
process), so the same :class:`MockSettings` data fields give equal datasets everywhere, and a
test can compare what a crawl wrote with :class:`Dataset`'s lists.

Counts are predictable from the settings (see :meth:`Dataset.counts`): per session there are
``n_drivers`` driver rows, ``n_drivers * laps_per_driver`` laps, ``weather_per_session`` weather
rows, ``race_control_per_session`` race-control items and ``team_radio_per_session`` radios;
pit stops and stints follow from each driver's (seeded) pit laps.

The CRM contacts and engagements change when a test says so (:meth:`Dataset.edit`,
:meth:`Dataset.archive`, :meth:`Dataset.create`, stamped with the dataset's mock clock
:attr:`Dataset.clock`); everything else is fixed. See ``changes.py``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .changes import ChangingTable, MockClock, archived, created, edited, sample_ids, sync_token
from .settings import MockSettings

Record = dict[str, Any]

PER_SESSION_TABLES = ("drivers", "laps", "weather", "pit", "stints", "race_control", "team_radio")

_GRANDS_PRIX = [
    ("Bahrain Grand Prix", "Bahrain", "Sakhir"),
    ("Saudi Arabian Grand Prix", "Saudi Arabia", "Jeddah"),
    ("Australian Grand Prix", "Australia", "Melbourne"),
    ("Japanese Grand Prix", "Japan", "Suzuka"),
    ("Miami Grand Prix", "United States", "Miami"),
    ("Monaco Grand Prix", "Monaco", "Monte Carlo"),
    ("British Grand Prix", "United Kingdom", "Silverstone"),
    ("Belgian Grand Prix", "Belgium", "Spa-Francorchamps"),
    ("Italian Grand Prix", "Italy", "Monza"),
    ("Singapore Grand Prix", "Singapore", "Singapore"),
]
_SESSION_PLAN = [  # (name, type, hours after the meeting starts)
    ("Practice 1", "Practice", 0.0),
    ("Practice 2", "Practice", 3.5),
    ("Practice 3", "Practice", 24.0),
    ("Qualifying", "Qualifying", 27.5),
    ("Race", "Race", 50.0),
]
# Word lists stay packed: one word per line would double this module.
# fmt: off
_FIRST = ["Max", "Lewis", "Charles", "Lando", "Oscar", "George", "Carlos", "Fernando", "Pierre",
          "Esteban", "Yuki", "Alex", "Nico", "Kevin", "Lance", "Valtteri", "Daniel", "Logan"]
_LAST = ["Verstrappen", "Hamiltown", "Leclair", "Norrish", "Piastro", "Russel", "Sainz",
         "Alonsa", "Gaslin", "Ocone", "Tsunami", "Albonn", "Hulkberg", "Magnusen", "Strole",
         "Bottis", "Ricardo", "Sargant"]
_TEAMS = ["Red Bull Racing", "Ferrari", "McLaren", "Mercedes", "Aston Martin", "Alpine",
          "Williams", "RB", "Kick Sauber", "Haas F1 Team"]
_CARDS = ["cashback-plus", "travel-elite", "fuel-saver", "student-basic", "premium-rewards",
          "business-pro", "shopping-max", "lifetime-free"]
# fmt: on
_COMPOUNDS = ["SOFT", "MEDIUM", "HARD"]
_RC_CATEGORIES = ["Flag", "Flag", "Other", "SafetyCar", "Drs", "CarEvent"]
_FLAGS = ["GREEN", "YELLOW", "DOUBLE YELLOW", "RED", "CHEQUERED", "BLUE", "CLEAR"]
_ENGAGEMENT_TYPES = ["EMAIL", "CALL", "MEETING", "NOTE", "TASK"]
_DOMAINS = ["example.com", "example.org", "mail.test", "corp.test"]
_INDUSTRIES = ["SOFTWARE", "RETAIL", "FINANCE", "LOGISTICS", "HEALTHCARE", "MEDIA"]
_TIERS = [(800.0, "platinum"), (700.0, "gold"), (600.0, "silver"), (0.0, "bronze")]
_CRM_EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
_ID_SEQUENCE = {"contacts": (10_001, 3), "engagements": (5_000_001, 7)}  # id = base + i * step

CrmTable = Literal["contacts", "engagements"]
"""The CRM lists that change over time."""


def _iso(t: datetime) -> str:
    return t.isoformat()


def _iso_z(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def user_record(seed: int, user_id: str, unknown_rate: float = 0.0) -> Record | None:
    """The partner API's record for ``user_id`` (a string of ASCII digits), or None (404).

    Every field comes from one blake2b digest of ``(seed, user_id)`` (stable across processes,
    unlike ``hash()``); no RNG to seed, so answering costs a couple of microseconds."""
    if not (user_id.isascii() and user_id.isdigit()):
        return None
    d = hashlib.blake2b(f"{seed}|user|{user_id}".encode(), digest_size=24).digest()
    if unknown_rate > 0 and int.from_bytes(d[:4], "big") / 2**32 < unknown_rate:
        return None
    score = round(450.0 + 450.0 * int.from_bytes(d[4:8], "big") / 2**32, 2)
    tier = next(name for floor, name in _TIERS if score >= floor)
    eligible = score >= 600.0
    cards: list[str] = []
    if eligible:
        order = sorted(range(len(_CARDS)), key=lambda i: d[8 + i])
        cards = [_CARDS[i] for i in order[: 1 + d[20] % 4]]
    return {"user_id": user_id, "score": score, "tier": tier, "eligible": eligible, "cards": cards}


@dataclass(eq=True, repr=False)
class Dataset:
    """Every record the mock API serves, as JSON-ready dicts. Treat as read-only."""

    seed: int
    meetings: list[Record]
    sessions: list[Record]
    drivers: list[Record]
    laps: list[Record]
    weather: list[Record]
    pit: list[Record]
    stints: list[Record]
    race_control: list[Record]
    team_radio: list[Record]
    contacts: list[Record]
    engagements: list[Record]
    associations: dict[str, list[str]]
    """engagement id -> the contact ids it is associated with (0..3)."""
    companies: list[Record]
    user_ids: list[str]
    unknown_user_rate: float = 0.0
    _by_session: dict[str, dict[int, list[Record]]] = field(
        default_factory=dict, compare=False, init=False
    )
    _crm: dict[str, ChangingTable] = field(default_factory=dict, compare=False, init=False)
    _clock: MockClock = field(default_factory=MockClock, compare=False, init=False)
    _rounds: int = field(default=0, compare=False, init=False)

    def __post_init__(self) -> None:
        for table in PER_SESSION_TABLES:
            index: dict[int, list[Record]] = {}
            for row in getattr(self, table):
                index.setdefault(row["session_key"], []).append(row)
            self._by_session[table] = index
        self._crm = {
            "contacts": ChangingTable("contacts", self.contacts),
            "engagements": ChangingTable("engagements", self.engagements),
        }

    @classmethod
    def build(cls, settings: MockSettings) -> Dataset:
        """The dataset ``settings`` describe; the same settings always build the same data."""
        return _build(settings)

    def for_session(self, table: str, session_key: int) -> list[Record]:
        """Rows of a per-session table (``laps``, ``pit``, ...) for one session, in served order."""
        return self._by_session[table].get(session_key, [])

    def user(self, user_id: str) -> Record | None:
        """What ``GET /partner/users/{user_id}`` answers (None means 404)."""
        return user_record(self.seed, user_id, self.unknown_user_rate)

    def association_records(self, engagement_id: str) -> list[Record]:
        """What ``/crm/v4/.../associations/contacts`` returns for one engagement."""
        return [
            {"toObjectId": cid, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 9}]}
            for cid in self.associations[engagement_id]
        ]

    def counts(self) -> dict[str, int]:
        """Records per endpoint for a full crawl (users: the ``user_ids`` batch)."""
        return {
            "meetings": len(self.meetings),
            "sessions": len(self.sessions),
            **{table: len(getattr(self, table)) for table in PER_SESSION_TABLES},
            "contacts": len(self.contacts),
            "engagements": len(self.engagements),
            "associations": sum(len(v) for v in self.associations.values()),
            "companies": len(self.companies),
            "users": len(self.user_ids),
        }

    # -- changes over time (the CRM lists) ------------------------------------------------------

    @property
    def clock(self) -> MockClock:
        """The mock clock that stamps every change (``advance``, ``set``; starts 2024-03-01)."""
        return self._clock

    def crm(self, table: CrmTable) -> ChangingTable:
        """The changing CRM list ``table`` (``contacts`` or ``engagements``) and its indexes."""
        return self._crm[table]

    def sync_token(self, table: CrmTable) -> str:
        """The ``/changes`` token that names every change of ``table`` made so far."""
        return sync_token(table, self._crm[table].last_seq)

    def _round(self, what: str, table: CrmTable, seed: int, now: datetime | None) -> random.Random:
        if now is not None:
            self._clock.set(now)
        self._rounds += 1
        return random.Random(f"{self.seed}|{what}|{table}|{seed}|{self._rounds}")

    def edit(
        self,
        fraction: float = 0.0,
        *,
        ids: Sequence[str] | None = None,
        table: CrmTable = "contacts",
        now: datetime | None = None,
        seed: int = 0,
    ) -> list[str]:
        """Change one field of ``fraction`` of the live (not archived) records of ``table`` (at
        least one when > 0), or of the records ``ids``, and set their ``updatedAt`` to ``now``
        (the clock is set to it first; default: the clock's instant). The sample and the new
        values are seeded by the dataset's seed, ``seed`` and the number of changes made so
        far, so a test repeats exactly. Returns the ids changed, in list order."""
        rng = self._round("edit", table, seed, now)
        changing = self._crm[table]
        chosen = sample_ids(changing, fraction, rng, ids)
        for rid in chosen:
            changing.replace(edited(table, changing.get(rid), rng, self._clock.now))
        return chosen

    def archive(
        self, ids: Sequence[str], *, table: CrmTable = "contacts", now: datetime | None = None
    ) -> list[str]:
        """Archive (HubSpot's delete) the records ``ids``: ``archived: true`` and ``updatedAt`` =
        ``now`` (see :meth:`edit`). They leave the default list and stay in the filtered and
        ``/changes`` ones, so an incremental client sees the delete. Returns the ids."""
        self._round("archive", table, 0, now)
        changing = self._crm[table]
        chosen = sample_ids(changing, 0.0, random.Random(0), ids)
        for rid in chosen:
            changing.replace(archived(changing.get(rid), self._clock.now))
        return chosen

    def create(
        self, n: int, *, table: CrmTable = "contacts", now: datetime | None = None, seed: int = 0
    ) -> list[str]:
        """Add ``n`` new records to ``table``, created and updated at ``now`` (see :meth:`edit`),
        with ids continuing the table's sequence; a new engagement gets 0..3 associated live
        contacts. Returns the new ids."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = self._round("create", table, seed, now)
        changing = self._crm[table]
        base, step = _ID_SEQUENCE[table]
        made = []
        for _ in range(n):
            k = len(changing.rows)
            rid = str(base + k * step)
            changing.replace(created(table, rid, k, rng, self._clock.now))
            made.append(rid)
            if table == "engagements":
                live = [c["id"] for c in self.contacts if not c.get("archived")]
                self.associations[rid] = rng.sample(live, min(len(live), rng.randint(0, 3)))
        return made

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.counts().items())
        return f"Dataset(seed={self.seed}, {shown})"


def _build(s: MockSettings) -> Dataset:
    rng = random.Random(s.seed)
    meetings, sessions = _meetings_and_sessions(rng, s)
    roster = _roster(rng, s.n_drivers)
    tables: dict[str, list[Record]] = {t: [] for t in PER_SESSION_TABLES}
    for session in sessions:
        _session_tables(rng, s, session, roster, tables)
    contacts = _contacts(rng, s.n_contacts)
    engagements = _engagements(rng, s.n_engagements, s.seed)
    contact_ids = [c["id"] for c in contacts]
    associations = {
        e["id"]: rng.sample(contact_ids, min(len(contact_ids), rng.randint(0, 3)))
        for e in engagements
    }
    return Dataset(
        seed=s.seed,
        meetings=meetings,
        sessions=sessions,
        **tables,
        contacts=contacts,
        engagements=engagements,
        associations=associations,
        companies=_companies(rng, s.n_companies),
        user_ids=_user_ids(rng, s),
        unknown_user_rate=s.unknown_user_rate,
    )


def _meetings_and_sessions(
    rng: random.Random, s: MockSettings
) -> tuple[list[Record], list[Record]]:
    meetings: list[Record] = []
    sessions: list[Record] = []
    plan = _SESSION_PLAN[-s.sessions_per_meeting :]
    for i in range(s.n_meetings):
        name, country, circuit = _GRANDS_PRIX[i % len(_GRANDS_PRIX)]
        start = datetime(s.year, 3, 1, 11, 30, tzinfo=UTC) + timedelta(days=(i * 7) % 280)
        meeting_key = 1200 + i
        meetings.append(
            {
                "meeting_key": meeting_key,
                "meeting_name": name,
                "country_name": country,
                "circuit_short_name": circuit,
                "date_start": _iso(start),
                "year": s.year,
            }
        )
        for j, (session_name, session_type, hours) in enumerate(plan):
            sessions.append(
                {
                    "session_key": 9000 + i * 10 + j,
                    "meeting_key": meeting_key,
                    "session_name": session_name,
                    "session_type": session_type,
                    "date_start": _iso(start + timedelta(hours=hours, minutes=rng.randint(0, 15))),
                }
            )
    return meetings, sessions


def _roster(rng: random.Random, n: int) -> list[Record]:
    numbers = rng.sample(range(1, 100), n)
    roster = []
    for k, number in enumerate(numbers):
        first, last = _FIRST[k % len(_FIRST)], rng.choice(_LAST)
        roster.append(
            {
                "driver_number": number,
                "full_name": f"{first} {last.upper()}",
                "team_name": _TEAMS[k // 2 % len(_TEAMS)],
                "name_acronym": last[:3].upper(),
            }
        )
    return roster


def _session_tables(
    rng: random.Random,
    s: MockSettings,
    session: Record,
    roster: list[Record],
    out: dict[str, list[Record]],
) -> None:
    key: int = session["session_key"]
    start = datetime.fromisoformat(session["date_start"])
    n_laps = s.laps_per_driver
    for driver in roster:
        number = driver["driver_number"]
        out["drivers"].append({"session_key": key, **driver})
        max_stops = 2 if session["session_type"] == "Race" else 1
        stops = (
            sorted(rng.sample(range(2, n_laps), min(rng.randint(0, max_stops), n_laps - 2)))
            if n_laps > 3
            else []
        )
        for lap in stops:
            out["pit"].append(
                {
                    "session_key": key,
                    "driver_number": number,
                    "lap_number": lap,
                    "pit_duration": round(rng.uniform(20.0, 30.0), 3),
                }
            )
        bounds = [0, *stops, n_laps]
        age = rng.choice([0, 0, 2, 3])
        for stint in range(len(bounds) - 1 if n_laps else 0):
            out["stints"].append(
                {
                    "session_key": key,
                    "driver_number": number,
                    "stint_number": stint + 1,
                    "compound": rng.choice(_COMPOUNDS),
                    "lap_start": bounds[stint] + 1,
                    "lap_end": bounds[stint + 1],
                    "tyre_age_at_start": age,
                }
            )
            age = 0
        for lap in range(1, n_laps + 1):
            out["laps"].append(_lap(rng, key, number, lap, pit_out=(lap - 1) in stops))
    for i in range(s.weather_per_session):
        out["weather"].append(
            {
                "session_key": key,
                "date": _iso(start + timedelta(minutes=i)),
                "air_temperature": round(rng.uniform(15, 35), 1),
                "track_temperature": round(rng.uniform(20, 55), 1),
                "humidity": round(rng.uniform(20, 90), 1),
                "rainfall": int(rng.random() < 0.1),
                "wind_speed": round(rng.uniform(0, 8), 1),
            }
        )
    for i in range(s.race_control_per_session):
        category = rng.choice(_RC_CATEGORIES)
        flag = rng.choice(_FLAGS) if category == "Flag" else None
        out["race_control"].append(
            {
                "session_key": key,
                "date": _iso(start + timedelta(seconds=90 * i)),
                "category": category,
                "flag": flag,
                "message": f"{flag} FLAG IN SECTOR {rng.randint(1, 3)}"
                if flag
                else f"{category.upper()} MESSAGE {i + 1}",
                "lap_number": None
                if i == 0 or n_laps == 0 or rng.random() < 0.2
                else 1 + i * (n_laps - 1) // s.race_control_per_session,
            }
        )
    for i in range(s.team_radio_per_session):
        number = rng.choice(roster)["driver_number"] if roster else 0
        out["team_radio"].append(
            {
                "session_key": key,
                "driver_number": number,
                "date": _iso(start + timedelta(seconds=137 * i)),
                "recording_url": f"https://livetiming.example/{key}/radio/{number}_{i + 1}.mp3",
            }
        )


def _lap(rng: random.Random, key: int, number: int, lap: int, *, pit_out: bool) -> Record:
    missing = (lap == 1 and rng.random() < 0.5) or rng.random() < 0.03
    base = rng.uniform(80.0, 95.0) + (20.0 if pit_out else 0.0)
    cuts = sorted((rng.uniform(0.3, 0.4), rng.uniform(0.65, 0.75)))
    sectors = (base * cuts[0], base * (cuts[1] - cuts[0]), base * (1 - cuts[1]))
    return {
        "session_key": key,
        "driver_number": number,
        "lap_number": lap,
        "lap_duration": None if missing else round(base, 3),
        "duration_sector_1": None if missing and lap == 1 else round(sectors[0], 3),
        "duration_sector_2": round(sectors[1], 3),
        "duration_sector_3": round(sectors[2], 3),
        "is_pit_out_lap": pit_out,
        "st_speed": None if rng.random() < 0.05 else rng.randint(270, 340),
    }


def _contacts(rng: random.Random, n: int) -> list[Record]:
    rows = []
    for i in range(n):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        created = _CRM_EPOCH + timedelta(minutes=rng.randint(0, 60 * 24 * 365))
        updated = created + timedelta(minutes=rng.randint(0, 60 * 24 * 30))
        rows.append(
            {
                "id": str(10_001 + i * 3),
                "properties": {
                    "email": f"{first.lower()}.{last.lower()}{i}@{rng.choice(_DOMAINS)}",
                    "firstname": first,
                    "lastname": last,
                    "createdate": _iso_z(created),
                },
                "createdAt": _iso_z(created),
                "updatedAt": _iso_z(updated),
                "archived": False,
            }
        )
    return rows


def _engagements(rng: random.Random, n: int, seed: int) -> list[Record]:
    epoch_ms = int(_CRM_EPOCH.timestamp() * 1000)
    rows: list[Record] = [
        {
            "id": str(5_000_001 + i * 7),
            "type": rng.choice(_ENGAGEMENT_TYPES),
            "timestamp": epoch_ms + rng.randint(0, 365 * 86_400_000),
            "ownerId": str(rng.randint(100, 120)),
        }
        for i in range(n)
    ]
    for row in rows:
        # Up to 30 days after the engagement, from a digest: the seeded stream the rest of the
        # dataset is drawn from stays as it was before engagements had an updatedAt.
        d = hashlib.blake2b(f"{seed}|engagement|{row['id']}".encode(), digest_size=8).digest()
        minutes = int.from_bytes(d, "big") % (60 * 24 * 30)
        updated = _CRM_EPOCH + timedelta(milliseconds=row["timestamp"] - epoch_ms, minutes=minutes)
        row["updatedAt"] = _iso_z(updated)
        row["archived"] = False
    return rows


def _companies(rng: random.Random, n: int) -> list[Record]:
    rows = []
    for i in range(n):
        word = rng.choice(_LAST).lower()
        rows.append(
            {
                "id": str(700_001 + i),
                "name": f"{word.title()} {rng.choice(['Ltd', 'Inc', 'GmbH'])}",
                "domain": f"{word}{i}.{rng.choice(_DOMAINS)}",
                "industry": rng.choice(_INDUSTRIES),
                "numberOfEmployees": rng.randint(1, 5000),
                "createdAt": _iso_z(_CRM_EPOCH + timedelta(hours=rng.randint(0, 24 * 365))),
            }
        )
    return rows


def _user_ids(rng: random.Random, s: MockSettings) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < s.n_users:
        uid = str(rng.randint(10_000_000, 99_999_999))
        if uid not in seen and user_record(s.seed, uid, s.unknown_user_rate) is not None:
            seen.add(uid)
            ids.append(uid)
    return ids
