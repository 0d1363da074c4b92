"""What a server's rate-limit headers say about the budget left: one :class:`RateHint`.

Schemes understood (any mix may appear on one response):

* ``Retry-After``: delta-seconds or an HTTP-date (``core.retry.parse_retry_after``).
* ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (also ``X-Rate-Limit-*``, and Discord's
  ``X-RateLimit-Reset-After``). ``Reset`` is delta seconds, or epoch seconds when above 1e9
  (GitHub), or epoch milliseconds when above 1e12.
* IETF draft-ietf-httpapi-ratelimit-headers, in each of its shapes:
  ``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (drafts up to -06), the dictionary
  ``RateLimit: limit=100, remaining=50, reset=30`` (-07), and the named policies of -08 and
  later, ``RateLimit: "default";r=50;t=30``, described by ``RateLimit-Policy`` (``100;w=60``,
  ``default;l=100;w=60`` or ``"default";q=100;w=60``).
* HubSpot: ``X-HubSpot-RateLimit-Max`` / ``-Remaining`` per ``-Interval-Milliseconds``,
  ``-Secondly`` / ``-Secondly-Remaining`` per second, ``-Daily`` / ``-Daily-Remaining`` per day.
  HubSpot sends no reset time, so the window stands in for it.

A response may describe several quotas (HubSpot's interval and daily ones, several policies).
The hint reports the *binding* one: the fewest requests remaining (ties: the longest wait).
Parsing is pure; deciding what to do with a hint is ``limits.throttle.AdaptiveThrottle``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .retry import parse_retry_after

__all__ = ["RateHint", "parse_rate_headers"]

_EPOCH_SECONDS = 1e9  # a Reset above this is a Unix time, not a delay (2001-09-09)
_EPOCH_MILLIS = 1e12
_DAY = 86_400.0
_JOINED = ("ratelimit", "ratelimit-policy", "ratelimit-limit")  # list fields: lines combine


@dataclass(frozen=True, slots=True)
class RateHint:
    """The binding quota a response described. Times are seconds from the response."""

    limit: int | None
    remaining: int | None
    reset_after: float | None  # when the quota refills, if the server said
    window: float | None  # the quota's window length, if the server said
    retry_after: float | None  # Retry-After, if present
    source: str  # which schemes were read, e.g. "x-ratelimit+retry-after"

    @property
    def exhausted(self) -> bool:
        """True when the server says no request of the quota is left (``remaining <= 0``)."""
        return self.remaining is not None and self.remaining <= 0


@dataclass(frozen=True, slots=True)
class _Quota:
    limit: int | None
    remaining: int | None
    reset_after: float | None
    window: float | None
    source: str

    def rank(self) -> tuple[float, float]:
        remaining = math.inf if self.remaining is None else self.remaining
        wait = self.reset_after if self.reset_after is not None else (self.window or 0.0)
        return (remaining, -wait)


def parse_rate_headers(headers: Mapping[str, str], now_wall: float) -> RateHint | None:
    """The budget ``headers`` describe, or None when they carry no rate-limit information.

    ``headers`` may be any mapping (case-insensitive or not, a multidict or a dict);
    ``now_wall`` is epoch seconds (``Clock.wall()``) for HTTP dates and epoch resets.
    """
    h = _lower(headers)
    quotas = [
        *_x_ratelimit(h, now_wall, "x-ratelimit-"),
        *_x_ratelimit(h, now_wall, "x-rate-limit-"),
        *_ietf(h, now_wall),
        *_hubspot(h),
    ]
    retry_after = parse_retry_after(h.get("retry-after"), now_wall)
    if not quotas and retry_after is None:
        return None
    sources = list(dict.fromkeys(q.source for q in quotas))
    if retry_after is not None:
        sources.append("retry-after")
    best = min(quotas, key=_Quota.rank) if quotas else _Quota(None, None, None, None, "")
    return RateHint(
        best.limit, best.remaining, best.reset_after, best.window, retry_after, "+".join(sources)
    )


# -- schemes ---------------------------------------------------------------------------------


def _x_ratelimit(h: dict[str, str], now_wall: float, prefix: str) -> list[_Quota]:
    limit = _int(h.get(prefix + "limit"))
    remaining = _int(h.get(prefix + "remaining"))
    reset = _reset(h.get(prefix + "reset"), now_wall)
    after = _number(h.get(prefix + "reset-after"))
    if after is not None:
        reset = max(0.0, after)
    if limit is None and remaining is None and reset is None:
        return []
    return [_Quota(limit, remaining, reset, None, prefix.rstrip("-"))]


def _ietf(h: dict[str, str], now_wall: float) -> list[_Quota]:
    policies = _policies(h.get("ratelimit-policy", ""))
    quotas: list[_Quota] = []
    # Drafts up to -06: three fields; RateLimit-Limit may itself list policies ("100, 100;w=60").
    limit_field = _members(h.get("ratelimit-limit", ""))
    limit = _int(limit_field[0][0]) if limit_field else None
    remaining = _int(h.get("ratelimit-remaining"))
    reset = _reset(h.get("ratelimit-reset"), now_wall)
    if limit is not None or remaining is not None or reset is not None:
        window = _window_for(limit, policies) or _window_for(limit, _policies_from(limit_field))
        quotas.append(_Quota(limit, remaining, reset, window, "ratelimit"))
    members = _members(h.get("ratelimit", ""))
    named = [(item, params) for item, params in members if item is not None]
    flat = {k: v for item, params in members if item is None for k, v in params.items()}
    if flat:  # -07: one dictionary, "limit=100, remaining=50, reset=30"
        limit = _int(flat.get("limit"))
        quotas.append(
            _Quota(
                limit,
                _int(flat.get("remaining")),
                _reset(flat.get("reset"), now_wall),
                _window_for(limit, policies),
                "ratelimit",
            )
        )
    for name, params in named:  # -08 and later: "name";r=50;t=30, quota in RateLimit-Policy
        quota, window = policies.get(name, (None, None))
        quotas.append(
            _Quota(
                quota,
                _int(params.get("r")),
                _reset(params.get("t"), now_wall),
                window,
                "ratelimit",
            )
        )
    if not quotas and policies:  # only the policy: what the budget is, not what is left
        quota, window = min(policies.values(), key=lambda p: p[0] or math.inf)
        quotas.append(_Quota(quota, None, None, window, "ratelimit-policy"))
    return quotas


def _hubspot(h: dict[str, str]) -> list[_Quota]:
    p = "x-hubspot-ratelimit-"
    interval_ms = _number(h.get(p + "interval-milliseconds"))
    specs = (
        (p + "max", p + "remaining", interval_ms / 1000 if interval_ms else None),
        (p + "secondly", p + "secondly-remaining", 1.0),
        (p + "daily", p + "daily-remaining", _DAY),
    )
    quotas: list[_Quota] = []
    for limit_key, remaining_key, window in specs:
        limit, remaining = _int(h.get(limit_key)), _int(h.get(remaining_key))
        if limit is not None or remaining is not None:
            quotas.append(_Quota(limit, remaining, None, window, "hubspot"))
    return quotas


# -- structured-field-ish parsing ------------------------------------------------------------

Params = dict[str, str]


def _members(value: str) -> list[tuple[str | None, Params]]:
    """Split a list or dictionary field into ``(item, params)`` members, leniently.

    ``"a";q=1;w=2, b=3`` gives ``[("a", {"q": "1", "w": "2"}), (None, {"b": "3"})]``: a
    member whose first piece is ``key=value`` is a dictionary member (item None).
    """
    out: list[tuple[str | None, Params]] = []
    for member in _split(value, ","):
        pieces = [p.strip() for p in _split(member, ";")]
        if not pieces or not pieces[0]:
            continue
        item: str | None = None
        if "=" not in pieces[0] or pieces[0].startswith('"'):
            item = _unquote(pieces.pop(0))  # else the first piece is a key=value pair
        params: Params = {}
        for piece in pieces:
            key, sep, val = piece.partition("=")
            if sep:
                params[key.strip().lower()] = _unquote(val.strip())
        out.append((item, params))
    return out


def _policies(value: str) -> dict[str, tuple[int | None, float | None]]:
    return _policies_from(_members(value))


def _policies_from(
    members: list[tuple[str | None, Params]],
) -> dict[str, tuple[int | None, float | None]]:
    """Policy name (or its quota, for the nameless ``100;w=60``) -> (quota, window)."""
    out: dict[str, tuple[int | None, float | None]] = {}
    for item, params in members:
        if item is None:
            continue
        bare = _int(item)
        quota = bare if bare is not None else _int(params.get("q") or params.get("l"))
        out[item] = (quota, _number(params.get("w")))
    return out


def _window_for(
    limit: int | None, policies: dict[str, tuple[int | None, float | None]]
) -> float | None:
    """The window of the policy whose quota is ``limit`` (or of the only policy)."""
    values = list(policies.values())
    for quota, window in values:
        if limit is not None and quota == limit and window is not None:
            return window
    return values[0][1] if len(values) == 1 else None


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


# -- values ----------------------------------------------------------------------------------


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names; repeated list fields are joined as HTTP combines field lines."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        if name in out:
            if name in _JOINED:
                out[name] = f"{out[name]}, {value}"
        else:
            out[name] = value
    return out


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip().split(",")[0].strip()
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _int(value: str | None) -> int | None:
    number = _number(value)
    return None if number is None or number < 0 else int(number)


def _reset(value: str | None, now_wall: float) -> float | None:
    """Seconds until a reset given as a delay, epoch seconds or epoch milliseconds."""
    number = _number(value)
    if number is None:
        return None
    if number > _EPOCH_MILLIS:
        number = number / 1000 - now_wall
    elif number > _EPOCH_SECONDS:
        number -= now_wall
    return max(0.0, number)
