"""A bundled mock of the APIs asyncingest is built for: seeded data, a strict server-side
sliding-window limit that referees the client, and named faults.

Used by the test suite, ``python -m asyncingest demo``, ``python -m asyncingest mock-api`` and
the benchmarks. Modules: ``_settings`` (what to serve), ``_data`` (the dataset), ``_routes``
(endpoints), ``_ratelimit`` (the referee), ``_faults`` (named faults), ``_stats`` (counters),
``_app`` (the server and its request pipeline).
"""

from .app import MockAPI, serve
from .data import Dataset, Record, user_record
from .faults import FaultPlan
from .ratelimit import SlidingWindowReferee
from .settings import FAULT_KINDS, TRANSIENT_FAULTS, FaultKind, MockSettings
from .stats import LogEntry, MockStats

__all__ = [
    "FAULT_KINDS",
    "TRANSIENT_FAULTS",
    "Dataset",
    "FaultKind",
    "FaultPlan",
    "LogEntry",
    "MockAPI",
    "MockSettings",
    "MockStats",
    "Record",
    "SlidingWindowReferee",
    "serve",
    "user_record",
]
