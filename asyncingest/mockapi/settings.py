"""What the mock API serves and how it misbehaves: one frozen, validated settings model.

The data knobs (``seed`` and the ``n_*`` scale fields) decide :class:`Dataset`; everything else
decides behaviour (latency, the server-side rate limit, auth, faults). Two presets exist:
:meth:`MockSettings.small` for tests and :meth:`MockSettings.demo` for ``asyncingest demo``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal[
    "status_500",
    "status_503",
    "status_429",
    "reset_mid_body",
    "truncated_body",
    "malformed_json",
    "wrong_shape",
    "reset_before_answer",
    "slow_body",
]
"""The named faults (see ``faults.py`` for what each one sends)."""

FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)

TRANSIENT_FAULTS: tuple[FaultKind, ...] = (
    "status_500",
    "status_503",
    "status_429",
    "reset_mid_body",
    "truncated_body",
)
"""Faults any sane client retries; the default ``fault_kinds``."""

RateWindow = tuple[Annotated[int, Field(gt=0)], Annotated[float, Field(gt=0)]]
"""``(N, W)``: at most N arrivals in any sliding window of W seconds."""


class OAuthSettings(BaseModel):
    """The mock's OAuth token endpoint (``oauth.py``): which client it knows, how long its
    tokens live, and how many token requests it fails first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = "asyncingest-mock"
    client_secret: str = "mock-secret"
    expires_in: float = Field(default=3600.0, gt=0.0)
    """Seconds a token lives (sent as ``expires_in``)."""
    token_path: str = "/oauth/token"
    fail_first: int = Field(default=0, ge=0)
    """The first N token requests answer 503 (with ``Retry-After: 0``)."""


class MockSettings(BaseModel):
    """Seed, scale and behaviour of the mock API. Frozen; build variants with ``model_copy``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0

    # -- F1 (OpenF1 style) -------------------------------------------------------------------
    year: int = 2024
    n_meetings: int = Field(default=3, ge=0)
    sessions_per_meeting: int = Field(default=2, ge=1, le=5)
    n_drivers: int = Field(default=10, ge=0, le=99)
    laps_per_driver: int = Field(default=20, ge=0)
    weather_per_session: int = Field(default=20, ge=0)
    race_control_per_session: int = Field(default=30, ge=0)
    team_radio_per_session: int = Field(default=15, ge=0)

    # -- CRM (HubSpot style) -----------------------------------------------------------------
    n_contacts: int = Field(default=200, ge=0)
    n_engagements: int = Field(default=100, ge=0)
    n_companies: int = Field(default=50, ge=0)

    # -- partner API (per user) --------------------------------------------------------------
    n_users: int = Field(default=100, ge=0)
    """How many user ids :attr:`Dataset.user_ids` lists (the batch input); any digit id works."""
    unknown_user_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Share of digit ids that answer 404 (chosen by a stable hash; never in ``user_ids``)."""

    # -- behaviour ---------------------------------------------------------------------------
    latency_ms: float = Field(default=0.0, ge=0.0)
    latency_jitter_ms: float = Field(default=0.0, ge=0.0)
    rate_limits: tuple[RateWindow, ...] = ()
    enforce_rate_limit: bool = True
    """True: a violating arrival gets 429 + Retry-After. False: it is only counted, then served."""
    fault_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    fault_kinds: tuple[FaultKind, ...] = TRANSIENT_FAULTS
    max_faults_per_url: int = Field(default=2, ge=0)
    forced_faults: dict[str, tuple[FaultKind, ...]] = Field(default_factory=dict)
    """Path (``/v1/laps``), path prefix (``/partner/users``) or exact URL with query
    (``/v1/laps?offset=0&session_key=1``) -> the faults for attempts 0, 1, ... of each URL."""
    token: str | None = None
    oauth: OAuthSettings | None = None
    """A token endpoint, and every other route then needs one of its bearer tokens."""
    slow_body_seconds: float = Field(default=2.0, gt=0.0)
    fault_retry_after: float = Field(default=1.0, gt=0.0)
    """The ``Retry-After`` (seconds) the ``status_429`` fault sends. Whole seconds are what HTTP
    allows; a fraction (which asyncingest reads, as many clients do) keeps test runs short:
    :meth:`small` uses 0.2."""

    @model_validator(mode="after")
    def _faults_need_kinds(self) -> Self:
        if self.fault_rate > 0 and not self.fault_kinds:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        return self

    @property
    def has_latency(self) -> bool:
        """True when answers are delayed (a latency or a jitter is set)."""
        return self.latency_ms > 0 or self.latency_jitter_ms > 0

    @classmethod
    def small(cls, **overrides: Any) -> MockSettings:
        """A tiny dataset for tests: every endpoint has data, pagination needs a small page."""
        base: dict[str, Any] = {
            "seed": 7,
            "n_meetings": 2,
            "sessions_per_meeting": 2,
            "n_drivers": 3,
            "laps_per_driver": 12,
            "weather_per_session": 8,
            "race_control_per_session": 7,
            "team_radio_per_session": 5,
            "n_contacts": 25,
            "n_engagements": 15,
            "n_companies": 12,
            "n_users": 10,
            "fault_retry_after": 0.2,  # not 1 s: every injected 429 would cost a second
        }
        return cls.model_validate(base | overrides)

    @classmethod
    def demo(cls, **overrides: Any) -> MockSettings:
        """Demo-sized: ~5,000 records, ~600 requests, a little latency, 3% transient faults
        (so retries show) and a strict server limit of 100 per second, which the bundled
        configs stay under. What ``asyncingest demo`` serves and ``asyncingest mock-api``
        serves by default: a config run by hand against it behaves as in the demo."""
        base: dict[str, Any] = {
            "seed": 2024,
            "n_meetings": 4,
            "sessions_per_meeting": 2,
            "n_drivers": 10,
            "laps_per_driver": 25,
            "weather_per_session": 20,
            "race_control_per_session": 30,
            "team_radio_per_session": 15,
            "n_contacts": 600,
            "n_engagements": 300,
            "n_companies": 150,
            "n_users": 250,
            "latency_ms": 15.0,
            "latency_jitter_ms": 10.0,
            "rate_limits": ((100, 1.0),),
            "fault_rate": 0.03,
        }
        return cls.model_validate(base | overrides)
