"""A bundled mock of the APIs asyncingest is built for: seeded data, a strict server-side
sliding-window limit that referees the client, and named faults.

Used by the test suite, ``python -m asyncingest demo``, ``python -m asyncingest mock-api`` and
the benchmarks. Modules: ``settings`` (what to serve), ``data`` (the dataset), ``changes`` (CRM
records that change over time on a mock clock, "changed since" filters and sync tokens),
``routes`` (endpoints), ``ratelimit`` (the referee), ``faults`` (named faults), ``stats``
(counters), ``oauth`` (a token endpoint), ``app`` (the server and its request pipeline). It
stands alone: it imports nothing of the client (the import contract checks it), so it referees
the client rather than trusting it.
Private, like every sub-package: only the public API in :mod:`asyncingest` is stable.
"""

from .app import MockAPI, serve
from .changes import ChangingTable, MockClock
from .data import CrmTable, Dataset, Record, user_record
from .faults import FaultPlan
from .oauth import TokenIssuer, TokenStats
from .ratelimit import SlidingWindowReferee
from .settings import FAULT_KINDS, TRANSIENT_FAULTS, FaultKind, MockSettings, OAuthSettings
from .stats import LogEntry, MockStats

__all__ = [
    "FAULT_KINDS",
    "TRANSIENT_FAULTS",
    "ChangingTable",
    "CrmTable",
    "Dataset",
    "FaultKind",
    "FaultPlan",
    "LogEntry",
    "MockAPI",
    "MockClock",
    "MockSettings",
    "MockStats",
    "OAuthSettings",
    "Record",
    "SlidingWindowReferee",
    "TokenIssuer",
    "TokenStats",
    "serve",
    "user_record",
]
