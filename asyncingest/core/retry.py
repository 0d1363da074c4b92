"""When to retry a failed request, and how long to wait first (see docs/architecture.md).

In the style of stamina, the policy is pure arithmetic on ``(attempt, elapsed, failure)`` and
never sleeps: the engine asks :meth:`RetryPolicy.decide`, then waits the returned seconds on its
Clock. So backoff maths is tested without sleeping, and fake time makes whole retry sequences
instant.

One type describes a failed attempt for everyone: :class:`Failure` (what kind, a detail for the
dead letter and the logs, and when the server answered: the status, its ``Retry-After`` already
parsed to seconds, and its headers for the rate-limit guards). Both HTTP clients, the page
parser, the retry policy, the ledger and ``plan`` take it, in both engines.
:func:`parse_retry_after` reads both header forms; :meth:`Failure.answered` applies it once, when
the response arrives, against the wall clock of the run.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from itertools import islice

import backoff

from ..config.models import RetryConfig

__all__ = [
    "DEFAULT_RETRY_KINDS",
    "DEFAULT_RETRY_STATUSES",
    "Failure",
    "FailureKind",
    "RetryDecision",
    "RetryPolicy",
    "parse_retry_after",
    "retry_policy",
]

_DELTA_SECONDS = re.compile(r"-?\d+(?:\.\d+)?")


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header, or None if absent or unreadable.

    Accepts delta-seconds (``"120"``; ``"1.5"`` tolerated) and an HTTP-date (RFC 7231
    IMF-fixdate, e.g. ``"Wed, 21 Oct 2015 07:28:00 GMT"``), compared with ``now_wall`` (epoch
    seconds, ``Clock.wall()``). Negative delays and dates in the past give 0.0.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return max(0.0, float(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" (and obsolete forms) parse naive; HTTP dates are UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_wall)


class FailureKind(enum.Enum):
    """What went wrong with one attempt; the value is how reasons describe it."""

    TIMEOUT = "timeout"
    CONNECTION = "connection error"
    RESET = "connection reset"
    TRUNCATED = "truncated body"
    MALFORMED_JSON = "malformed JSON"
    WRONG_SHAPE = "unexpected body shape"
    BODY_TOO_LARGE = "body too large"
    HTTP_STATUS = "HTTP status"
    CIRCUIT_OPEN = "circuit breaker open"
    TOO_MANY_REDIRECTS = "too many redirects"
    UNSAFE_PATH_VALUE = "unsafe path value"


DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 429, *range(500, 600)})
DEFAULT_RETRY_KINDS: frozenset[FailureKind] = frozenset(FailureKind) - {
    FailureKind.BODY_TOO_LARGE,  # the same request returns the same body
    FailureKind.HTTP_STATUS,  # decided by status, see RetryPolicy.retry_statuses
    FailureKind.CIRCUIT_OPEN,  # the breaker already waited as long as the request may
    FailureKind.TOO_MANY_REDIRECTS,  # the same request is redirected the same way
    FailureKind.UNSAFE_PATH_VALUE,  # never sent: the same value is refused again
}


@dataclass(frozen=True, slots=True)
class Failure:
    """One attempt that got no usable answer, as either engine saw it.

    ``kind`` says what went wrong; ``detail`` says it for the dead letter and the logs (the
    secret already redacted by the client). When the server answered: ``status``,
    ``retry_after`` (the ``Retry-After`` header in seconds, parsed when the response arrived;
    None without a readable one) and ``headers`` (the rate-limit guards read the quota headers
    of a failed answer too). ``str()`` is how reasons name it: ``HTTP 503 (...)``, ``timeout``.
    """

    kind: FailureKind
    detail: str = ""
    status: int | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] | None = None

    @classmethod
    def answered(
        cls, status: int, detail: str, headers: Mapping[str, str], now_wall: float
    ) -> Failure:
        """An error status (``HTTP_STATUS``), its ``Retry-After`` read against ``now_wall``
        (epoch seconds, ``Clock.wall()``; HTTP dates are absolute)."""
        retry_after = parse_retry_after(headers.get("Retry-After"), now_wall)
        return cls(FailureKind.HTTP_STATUS, detail, status, retry_after, headers)

    @classmethod
    def http(cls, status: int, retry_after: float | None = None, detail: str = "") -> Failure:
        """An error status with an already parsed ``Retry-After`` (tests, policies)."""
        return cls(FailureKind.HTTP_STATUS, detail, status, retry_after)

    def __str__(self) -> str:
        what = f"HTTP {self.status}" if self.kind is FailureKind.HTTP_STATUS else self.kind.value
        return f"{what} ({self.detail})" if self.detail else what


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What :class:`RetryPolicy` decided about a failed attempt: retry after ``wait`` seconds, or
    give up, and why.
    """

    retry: bool
    wait: float  # seconds to wait before the next attempt; 0.0 when giving up
    reason: str  # for logs and the final error: why we retry, or why we gave up


_RNG = random.Random()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Times are seconds.

    ``max_attempts`` counts every attempt including the first. ``max_time`` is measured from the
    start of the first attempt: no retry starts after it (a wait that would pass it is shortened
    to end there, unless the server's Retry-After forbids that, in which case we give up).
    ``max_retry_after`` is the longest a server may make us wait: a longer ``Retry-After``
    gives up at once (the request is dead-lettered; ``--retry-failed`` asks again later)
    rather than sleeping for it or retrying early against the server's word.
    """

    max_attempts: int = 5
    max_time: float = 300.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    jitter: bool = True
    retry_statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES)
    retry_kinds: frozenset[FailureKind] = field(default=DEFAULT_RETRY_KINDS)
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("max_time", "backoff_base", "backoff_max", "max_retry_after"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    def retryable(self, failure: Failure) -> bool:
        """Whether ``failure`` may be retried at all: its status is in ``retry_statuses``, or
        its kind (any other) in ``retry_kinds``."""
        if failure.kind is FailureKind.HTTP_STATUS:
            return failure.status in self.retry_statuses
        return failure.kind in self.retry_kinds

    def backoff_ceiling(self, attempt: int) -> float:
        """The un-jittered wait after failed attempt ``attempt`` (1-based):
        ``min(backoff_max, backoff_base * 2 ** (attempt - 1))``, from ``backoff.expo``."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        waits = backoff.expo(base=2, factor=self.backoff_base, max_value=self.backoff_max)
        next(waits)  # backoff's generators are primed with one send(None)
        return float(next(islice(waits, attempt - 1, None)))

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """The wait after failed attempt ``attempt``: exponential backoff with full jitter,
        never less than ``retry_after`` capped at ``max_retry_after``.

        Full jitter is ``backoff.full_jitter`` (uniform in [0, ceiling], AWS "Exponential
        Backoff And Jitter"), drawn from ``rng`` instead of the global ``random`` module so that
        tests are deterministic.
        """
        ceiling = self.backoff_ceiling(attempt)
        wait = rng.uniform(0.0, ceiling) if self.jitter else ceiling
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait

    def decide(
        self,
        attempt: int,
        elapsed: float,
        failure: Failure,
        rng: random.Random | None = None,
    ) -> RetryDecision:
        """Retry (and after how long) or give up, after attempt number ``attempt`` (1-based)
        failed with ``failure``, ``elapsed`` seconds after the first attempt started."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        what = str(failure)
        if not self.retryable(failure):
            return _give_up(f"{what} (not retryable)")
        retry_after = failure.retry_after
        if retry_after is not None and retry_after > self.max_retry_after:
            return _give_up(
                f"gave up after {attempt} attempts: Retry-After {retry_after:g}s exceeds "
                f"max_retry_after {self.max_retry_after:g}s: {what}"
            )
        if attempt >= self.max_attempts:
            return _give_up(f"gave up after {attempt} attempts: {what}")
        remaining = self.max_time - elapsed
        if remaining <= 0:
            return _give_up(
                f"gave up after {attempt} attempts: max_time {self.max_time:g}s reached: {what}"
            )
        if retry_after is not None and retry_after > remaining:
            return _give_up(
                f"gave up after {attempt} attempts: Retry-After {retry_after:g}s "
                f"would pass max_time {self.max_time:g}s ({remaining:g}s left): {what}"
            )
        wait = min(self.delay(attempt, retry_after, _RNG if rng is None else rng), remaining)
        return RetryDecision(
            True, wait, f"{what}: retry {attempt + 1}/{self.max_attempts} in {wait:.3g}s"
        )


def _give_up(reason: str) -> RetryDecision:
    return RetryDecision(False, 0.0, reason)


def retry_policy(c: RetryConfig) -> RetryPolicy:
    """The retry policy a config's ``retry`` section describes (both engines, and ``plan``)."""
    all_5xx = frozenset(range(500, 600)) if c.retry_all_5xx else frozenset()
    return RetryPolicy(
        max_attempts=c.max_attempts,
        max_time=c.max_time,
        backoff_base=c.backoff_base,
        backoff_max=c.backoff_max,
        jitter=c.jitter,
        retry_statuses=c.retry_statuses | all_5xx,
        max_retry_after=c.max_retry_after,
    )
