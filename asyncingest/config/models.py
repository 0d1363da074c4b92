"""The pipeline config: typed, frozen pydantic models, parsed once at the edge.

Everything inside the engine takes these objects, never a dict of settings. Loading
(YAML/JSON files, ``--set`` overrides, error formatting) lives in ``config/loading.py``.
See docs/architecture.md for where the config enters the data flow.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .cursor import CursorKind, CursorType, format_timestamp, infer_type

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

FieldType = Literal[
    "string",
    "int64",
    "float64",
    "bool",
    "timestamp",
    "timestamp_ms",
    "timestamp_us",
    "timestamp_ns",
    "date",
    "json",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def template_fields(template: str) -> set[str]:
    """Names of the ``{placeholders}`` in a path or parameter template."""
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


# --------------------------------------------------------------------------- API-level


class AuthConfig(_Model):
    """Credentials come from an environment variable, never from the file itself."""

    type: Literal["bearer", "header", "query"]
    env: str = Field(description="environment variable holding the secret")
    name: str | None = Field(
        default=None, description="header name (type header) or query parameter (type query)"
    )

    @model_validator(mode="after")
    def _name_needed(self) -> AuthConfig:
        if self.type in ("header", "query") and not self.name:
            raise ValueError(f"auth type '{self.type}' needs 'name' (the header or parameter)")
        return self


class OAuth2Config(_Model):
    """OAuth 2.0 client credentials (RFC 6749, section 4.4): the client id and secret come from
    environment variables, never from the file; the access token they buy is sent as
    ``Authorization: Bearer``, to the API's origin only. See asyncingest/http/oauth.py for when the
    token is fetched and refreshed.
    """

    type: Literal["oauth2_client_credentials"]
    token_url: HttpUrl = Field(description="the token endpoint (often another host than the API)")
    client_id_env: str = Field(description="environment variable holding the client id")
    client_secret_env: str = Field(description="environment variable holding the client secret")
    scope: str | None = Field(None, description="sent as 'scope' when set")
    audience: str | None = Field(None, description="sent as 'audience' when set (Auth0, Okta)")
    client_auth: Literal["basic", "body"] = Field(
        "basic",
        description="basic: HTTP Basic with the id and secret (RFC 6749 2.3.1, what servers must "
        "support); body: client_id and client_secret in the form",
    )
    refresh_margin: float = Field(
        60.0,
        ge=0,
        description="seconds before the token's expiry it is replaced (at most half its life)",
    )

    @property
    def env_names(self) -> str:
        """``ID_VAR and SECRET_VAR``: what a message about bad credentials points at."""
        return f"{self.client_id_env} and {self.client_secret_env}"


Auth = Annotated[AuthConfig | OAuth2Config, Field(discriminator="type")]


class HttpConfig(_Model):
    """How each HTTP request is made: timeouts, connection pool, TLS and the body cap
    (``api.http``).
    """

    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(
        30.0, gt=0, description="max gap between two chunks of a body of unknown length"
    )
    total_timeout: float = Field(
        60.0, gt=0, description="deadline for a whole request, body included"
    )
    max_connections: int = Field(100, ge=1)
    max_connections_per_host: int = Field(0, ge=0, description="0 = no per-host cap")
    verify_tls: bool = True
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    user_agent: str = "asyncingest/0.1"


class RateWindow(_Model):
    """One rate window: at most ``requests`` requests in any ``per_seconds`` seconds."""

    requests: int = Field(ge=1)
    per_seconds: float = Field(gt=0)

    def __str__(self) -> str:
        return f"{self.requests}/{self.per_seconds:g}s"


class RetryConfig(_Model):
    """When a failed request is tried again and how long to back off (``api.retry``)."""

    max_attempts: int = Field(5, ge=1)
    max_time: float = Field(300.0, gt=0, description="seconds from the first attempt")
    backoff_base: float = Field(0.5, gt=0)
    backoff_max: float = Field(30.0, gt=0)
    jitter: bool = True
    retry_statuses: frozenset[int] = Field(
        default=frozenset({408, 429, 500, 502, 503, 504}),
        description="statuses retried (plus every 5xx when retry_all_5xx)",
    )
    retry_all_5xx: bool = True
    max_retry_after: float = Field(120.0, ge=0)

    @field_validator("retry_statuses")
    @classmethod
    def _statuses(cls, v: frozenset[int]) -> frozenset[int]:
        bad = sorted(s for s in v if not 100 <= s <= 599)
        if bad:
            raise ValueError(f"not HTTP statuses: {bad}")
        return v


class ConcurrencyConfig(_Model):
    """How much runs at once: endpoint trees, requests per endpoint, transform processes and
    adaptive concurrency (``api.concurrency``).
    """

    endpoints: int = Field(4, ge=1, description="endpoint trees running at once")
    requests_per_endpoint: int = Field(16, ge=1, description="requests in flight per endpoint")
    cpu_workers: int | None = Field(
        None, ge=1, description="processes for transforms (default: the number of CPUs)"
    )
    adaptive: bool = Field(
        False,
        description="raise requests in flight slowly and cut them on 429s and rising latency, "
        "never above the configured limits",
    )


class BreakerConfig(_Model):
    """The per-endpoint circuit breaker: open after ``failures`` consecutive failures, probe after
    ``cooldown`` seconds (``api.circuit_breaker``).
    """

    failures: int = Field(20, ge=1, description="consecutive failures that open the breaker")
    cooldown: float = Field(30.0, gt=0, description="seconds before one probe is let through")
    max_cooldown: float = Field(300.0, gt=0, description="cap when the cool-down doubles")


class ApiConfig(_Model):
    """The API being read: base URL, headers, credentials, HTTP settings, rate windows shared by
    every endpoint, retries, concurrency and protection (``api``).
    """

    base_url: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict)
    auth: Auth | None = None
    http: HttpConfig = HttpConfig()
    rate_limits: tuple[RateWindow, ...] = ()
    retry: RetryConfig = RetryConfig()
    concurrency: ConcurrencyConfig = ConcurrencyConfig()
    circuit_breaker: BreakerConfig | None = BreakerConfig()
    adaptive_rate: bool = Field(
        True,
        description="read the server's rate-limit headers and pause the shared budget before "
        "it answers 429; a 429 pauses the whole budget for the time it asks",
    )
    on_budget_exhausted: Literal["wait", "stop"] = Field(
        "wait",
        description="when a rate window (e.g. a daily quota) has no room for longer than "
        "budget_wait_threshold: keep waiting (and say when it returns) or save state and stop",
    )
    budget_wait_threshold: float = Field(60.0, gt=0)

    @field_validator("headers")
    @classmethod
    def _no_secret_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key.lower() in ("authorization", "proxy-authorization", "cookie"):
                raise ValueError(
                    f"header '{key}' would put a secret in the config file; "
                    "use 'auth' with an environment variable instead"
                )
        return v

    @property
    def origin(self) -> tuple[str, str, int]:
        """The ``(scheme, host, port)`` of ``base_url``: the only origin credentials are sent to."""
        url = self.base_url
        port = url.port or (443 if url.scheme == "https" else 80)
        return (url.scheme, (url.host or "").lower(), port)


# --------------------------------------------------------------------------- pagination


class NoPagination(_Model):
    """A single request per walk: no next page."""

    type: Literal["none"] = "none"


class OffsetPagination(_Model):
    """``?offset=0&limit=100``, then offset += records received."""

    type: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(100, ge=1)
    start: int = 0
    total_path: str | None = Field(None, description="dotted path of the total count")


class PagePagination(_Model):
    """``?page=1&page_size=100``, then page += 1."""

    type: Literal["page"]
    page_param: str = "page"
    size_param: str | None = "page_size"
    size: int = Field(100, ge=1)
    start: int = 1
    total_pages_path: str | None = None
    total_path: str | None = None


class CursorPagination(_Model):
    """A cursor taken from the body (``paging.next.after``) sent back as a parameter."""

    type: Literal["cursor"]
    cursor_path: str = Field(description="dotted path of the next cursor in the body")
    cursor_param: str = "after"
    limit_param: str | None = "limit"
    limit: int | None = Field(100, ge=1)


class NextUrlPagination(_Model):
    """An absolute or relative URL of the next page in the body."""

    type: Literal["next_url"]
    next_path: str = "next"


class LinkHeaderPagination(_Model):
    """RFC 8288 ``Link: <url>; rel="next"``."""

    type: Literal["link_header"]
    rel: str = "next"


class CustomPagination(_Model):
    """Your own paginator, for APIs the six kinds above do not fit: ``function`` names a class
    (or any callable) that ``options`` are passed to as keyword arguments, and what it returns
    has the stateless ``first(request)`` / ``next(page)`` methods of the built-in ones (see
    ``asyncingest.Paginator``). Checked when the config is loaded: importable, constructible,
    and with both methods.
    """

    type: Literal["custom"]
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the class (JSON-like values)"
    )
    function: str = Field(
        description="'package.module:Class'; Class(**options) has first(request) and next(page)"
    )

    @field_validator("function")
    @classmethod
    def _paginator(cls, v: str, info: ValidationInfo) -> str:
        from .callables import load_paginator

        options = info.data.get("options")
        if options is None:  # options were invalid: that error is reported on its own
            return v
        load_paginator(v, options)  # a clear ValueError when it is missing or unfit
        return v


Pagination = Annotated[
    NoPagination
    | OffsetPagination
    | PagePagination
    | CursorPagination
    | NextUrlPagination
    | LinkHeaderPagination
    | CustomPagination,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- fan-out


class ForEach(_Model):
    """One request (or paginated walk) per record of a parent endpoint (of an incremental parent:
    per record of each increment, or with ``parents: all`` per key of its current table)."""

    endpoint: str
    bind: dict[str, str] = Field(
        description="template variable -> parent field (dotted path)", min_length=1
    )
    copy_fields: dict[str, str] = Field(
        default_factory=dict,
        alias="copy",
        description="child record field -> parent field copied into every child record",
    )
    parents: Literal["increment", "all"] = Field(
        "increment",
        description="incremental parent: 'increment' fetches children for the parent records "
        "of each increment; 'all' for every key of the parent's current table (the parent "
        "needs merge: latest)",
    )
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("bind", "copy_fields", mode="before")
    @classmethod
    def _list_shorthand(cls, v: Any) -> Any:
        # `bind: [session_key]` means `bind: {session_key: session_key}`.
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return {x: x for x in v}
        return v


class FromFile(_Model):
    """One request per id read from a CSV, JSONL or Parquet column."""

    path: str
    column: str
    var: str | None = Field(None, description="template variable (default: the column name)")
    format: Literal["csv", "jsonl", "parquet"] | None = Field(
        None, description="default: from the file extension"
    )
    copy_id: bool = Field(True, description="copy the id into each record when absent")
    copy_fields: tuple[str, ...] = Field(
        (),
        alias="copy",
        description="JSONL only: fields of each line copied into that id's records (how the "
        "scale-out worker carries a parent's copied fields into a child shard)",
    )
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _copy_needs_jsonl(self) -> FromFile:
        if self.copy_fields and self.file_format != "jsonl":
            raise ValueError("'copy' needs a JSONL input file (format: jsonl)")
        return self

    @property
    def variable(self) -> str:
        """The template variable each id is bound to: ``var``, or the column name."""
        return self.var or self.column

    @property
    def file_format(self) -> Literal["csv", "jsonl", "parquet"]:
        """The file's format: ``format``, or guessed from the file name (``.parquet``,
        ``.jsonl``/``.ndjson``, else CSV).
        """
        if self.format:
            return self.format
        lower = self.path.lower()
        if lower.endswith(".parquet"):
            return "parquet"
        if lower.endswith((".jsonl", ".ndjson")):
            return "jsonl"
        return "csv"


class FromQueue(_Model):
    """One request per message of a RabbitMQ queue the user already has (``{"match_id": 7}``):
    the ``worker --config`` command consumes it (docs/scale-out.md); ``run`` refuses it."""

    queue: str = Field(min_length=1, max_length=255)
    field: str = Field(min_length=1, description="the JSON field of each message holding the id")
    var: str | None = Field(None, description="template variable (default: the field name)")
    copy_id: bool = Field(True, description="copy the id into each record when absent")

    @property
    def variable(self) -> str:
        """The template variable each id is bound to: ``var``, or the field name."""
        return self.var or self.field


# --------------------------------------------------------------------------- endpoints


class TransformConfig(_Model):
    """A CPU-bound function over batches of an endpoint's records, run in a process pool."""

    function: str = Field(description="'package.module:function'; fn(list[dict]) -> list[dict]")
    initializer: str | None = Field(
        None, description="'package.module:function' run once in each worker process"
    )
    batch_size: int = Field(500, ge=1, description="records per batch sent to the pool")
    max_in_flight: int | None = Field(
        None, ge=1, description="batches out at once (default: 2 x pool workers)"
    )
    max_crash_retries: int = Field(2, ge=0, description="retries of a batch whose worker died")
    output: str | None = Field(None, description="output folder (default: <endpoint>_out)")
    keep_raw: bool = Field(True, description="also write the raw records")

    @field_validator("function", "initializer")
    @classmethod
    def _importable(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from .callables import load_callable

        load_callable(v)  # a clear ValueError when the module or function is missing
        return v

    @field_validator("output")
    @classmethod
    def _folder(cls, v: str | None) -> str | None:
        if v is not None and (not _NAME_RE.match(v) or ".." in v):
            raise ValueError("must be a plain folder name (letters, digits, '_', '-', '.')")
        return v


#: Placeholders an incremental endpoint may use in ``params`` and ``body``.
INCREMENTAL_START = "incremental.start"
INCREMENTAL_END = "incremental.end"


class IncrementalConfig(_Model):
    """Fetch only what changed since the last run (``incremental:`` of an endpoint).

    Each run is an *increment*: its window starts at the high-water mark the last increment
    committed (the highest ``cursor_field`` of its durable records) minus ``lag``, or at
    ``initial`` the first time, and is sent as ``?<param>=<start>`` or through the
    ``{incremental.start}`` / ``{incremental.end}`` placeholders of ``params`` and ``body``.
    With ``cursor_type: token`` the API hands out an opaque "changes since" value
    (``token_path`` in the response) that the next increment sends back as it is. The values
    are read by :class:`asyncingest.config.cursor.CursorKind`; README, "Incremental runs".
    """

    cursor_field: str | None = Field(
        None,
        min_length=1,
        description="dotted path of each record's cursor (updatedAt); with cursor_type token "
        "only used to order the current table",
    )
    cursor_type: CursorType | None = Field(
        None,
        description="timestamp (ISO 8601, zones compared in UTC) | epoch_s | epoch_ms | "
        "integer | token; default: timestamp when initial is ISO text",
    )
    param: str | None = Field(
        None, min_length=1, description="query parameter the window's start is sent as"
    )
    end_param: str | None = Field(
        None, min_length=1, description="query parameter the window's end (end) is sent as"
    )
    initial: Any = Field(None, description="the first increment's start (none: no filter)")
    lag: float = Field(
        0,
        ge=0,
        description="re-read this much before the high-water mark each increment (seconds for "
        "time cursors, a count for integer cursors), for late writes",
    )
    end: Any = Field(None, description="a bounded backfill: the window ends here")
    deleted_field: str | None = Field(
        None,
        min_length=1,
        description="dotted path of a flag (deleted/archived): a truthy value removes the key "
        "from the current table (merge: latest)",
    )
    token_path: str | None = Field(
        None,
        min_length=1,
        description="cursor_type token: dotted path of the next 'changes since' token in a "
        "response body (the newest one seen is kept)",
    )
    future_tolerance: float | None = Field(
        86_400,
        ge=0,
        description="time cursors: a record whose cursor is later than the run's start plus "
        "this many seconds (bad data: year 9999, epoch ms sent as s) is written but does not "
        "move the high-water mark, and is reported; null: no guard",
    )

    @model_validator(mode="before")
    @classmethod
    def _infer(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("cursor_type") is None:
            inferred = infer_type(data.get("initial"))
            if inferred is not None:
                data = {**data, "cursor_type": inferred}
        return data

    @field_validator("initial", "end")
    @classmethod
    def _value(cls, v: Any, info: ValidationInfo) -> Any:
        """A cursor value of the type: stored as the state and the report write it (ISO UTC
        text for a timestamp, YAML's own timestamps included; a number otherwise)."""
        cursor_type = info.data.get("cursor_type")
        if v is None or cursor_type in (None, "token"):
            return v
        key = CursorKind(cursor_type).parse(v)  # CursorError is a ValueError: reported here
        return format_timestamp(key) if cursor_type == "timestamp" else v

    @model_validator(mode="after")
    def _check(self) -> IncrementalConfig:
        if self.cursor_type is None:
            why = "only an ISO 8601 initial says timestamp on its own"
            if isinstance(self.initial, str):
                why = f"initial {self.initial!r} is not ISO 8601 text, so it says no type"
            raise ValueError(
                f"cursor_type is needed: one of timestamp, epoch_s, epoch_ms, integer, token "
                f"({why})"
            )
        kind = CursorKind(self.cursor_type)
        if self.cursor_type == "token":
            if not self.token_path:
                raise ValueError("cursor_type token needs token_path (where the API puts it)")
            if self.lag:
                raise ValueError("lag: a token cursor cannot be stepped back; leave lag out")
            if self.end is not None or self.end_param is not None:
                raise ValueError("end: a token cursor has no end; leave end out")
            if not self.param:
                raise ValueError("cursor_type token needs param (the token is sent as ?param=)")
        else:
            if not self.cursor_field:
                raise ValueError(f"cursor_type {self.cursor_type} needs cursor_field")
            if self.token_path:
                raise ValueError("token_path: only for cursor_type token")
            if self.cursor_type == "integer" and not float(self.lag).is_integer():
                raise ValueError(f"lag: a count for an integer cursor, got {self.lag:g}")
        if (
            not kind.timed
            and "future_tolerance" in self.model_fields_set
            and self.future_tolerance is not None
        ):
            raise ValueError(
                f"future_tolerance: only for time cursors (timestamp, epoch_s, epoch_ms), "
                f"not {self.cursor_type}; leave it out"
            )
        if (
            self.initial is not None
            and self.end is not None
            and kind.parse(self.end) < kind.parse(self.initial)
        ):
            raise ValueError(f"end ({self.end}) is before initial ({self.initial})")
        if self.end_param is not None and self.end is None:
            raise ValueError("end_param: needs end (the value it sends)")
        return self

    @property
    def kind(self) -> CursorKind:
        """The semantics of this cursor's values."""
        assert self.cursor_type is not None
        return CursorKind(self.cursor_type)


class EndpointConfig(_Model):
    """One endpoint: its request template, where the records are in a body, keys, schema,
    pagination, what it iterates over (``for_each`` or ``from_file``), limits and an optional
    transform. Its name is also its output folder.
    """

    name: str
    path: str
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    json_body: dict[str, Any] | None = Field(None, alias="body")
    records: str = Field(
        "$", description="dotted path of the list of records in the body; '$' is the body itself"
    )
    single_record: bool = Field(
        False,
        description="the value at 'records' is one object (e.g. the whole body), not a list; "
        "anything else is a wrong-shaped response",
    )
    primary_key: tuple[str, ...] = ()
    schema_: dict[str, FieldType] | None = Field(
        None,
        alias="schema",
        description="types of some or all fields; fields not listed are inferred",
    )
    columns: Literal["all", "only_declared"] = Field(
        "all",
        description="all: every field is written (undeclared ones inferred); only_declared: "
        "fields not in the schema are dropped and counted in the run report",
    )
    pagination: Pagination = NoPagination()
    for_each: ForEach | None = None
    from_file: FromFile | None = None
    from_queue: FromQueue | None = None
    rate_limits: tuple[RateWindow, ...] = ()
    concurrency: int | None = Field(None, ge=1, description="requests in flight (override)")
    transform: TransformConfig | None = None
    incremental: IncrementalConfig | None = None
    merge: Literal["latest"] | None = Field(
        None,
        description="latest: keep OUTPUT/<name>_current/, one row per primary_key (the highest "
        "cursor), rebuilt after each increment; needs primary_key and incremental",
    )
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @property
    def current_folder(self) -> str | None:
        """The current table's folder (``<name>_current``) with ``merge: latest``, else None."""
        return f"{self.name}_current" if self.merge == "latest" else None

    @property
    def transform_folder(self) -> str | None:
        """The transform's output folder (``transform.output`` or ``<name>_out``), or None without a
        transform.
        """
        if self.transform is None:
            return None
        return self.transform.output or f"{self.name}_out"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _NAME_RE.match(v) or v in (".", "..") or ".." in v:
            raise ValueError(
                "must be 1-100 characters of letters, digits, '_', '-', '.', starting with a "
                "letter or digit (it names the output folder)"
            )
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if "://" in v:
            raise ValueError("must be a path relative to api.base_url, not a full URL")
        return v

    @field_validator("primary_key", mode="before")
    @classmethod
    def _pk(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> EndpointConfig:
        if sum(x is not None for x in (self.for_each, self.from_file, self.from_queue)) > 1:
            raise ValueError("use one of 'for_each', 'from_file' and 'from_queue'")
        if self.json_body is not None and self.method != "POST":
            raise ValueError("'body' needs method: POST")
        provided: set[str] = set()
        if self.for_each:
            provided = set(self.for_each.bind)
        elif self.from_file:
            provided = {self.from_file.variable}
        elif self.from_queue:
            provided = {self.from_queue.variable}
        in_path = template_fields(self.path)
        window = {INCREMENTAL_START, INCREMENTAL_END}
        if in_path & window:
            raise ValueError(
                "{incremental.start} and {incremental.end} go in params or body, not in path"
            )
        used = set(in_path)
        for value in self.params.values():
            if isinstance(value, str):
                used |= template_fields(value)
        if self.json_body is not None:
            used |= _body_fields(self.json_body)
        self._check_incremental(used & window)
        missing = sorted(used - provided - window)
        if missing:
            raise ValueError(
                f"template variables {missing} are not bound "
                "(bind them with for_each.bind or from_file.column)"
            )
        if self.columns == "only_declared":
            if not self.schema_:
                raise ValueError("columns: only_declared needs a schema (the columns to keep)")
            absent = [k for k in self.primary_key if k not in self.schema_]
            if absent:
                raise ValueError(
                    f"primary_key fields {absent} are not in the schema, and "
                    "columns: only_declared would drop them"
                )
        return self

    def _check_incremental(self, placeholders: set[str]) -> None:
        inc = self.incremental
        if inc is None:
            if placeholders:
                raise ValueError(
                    f"{{{sorted(placeholders)[0]}}} needs an incremental: block (the window)"
                )
            if self.merge is not None:
                raise ValueError(
                    "merge: latest needs incremental: (a cursor that says which version of a "
                    "record is the latest) and primary_key"
                )
            return
        if self.from_queue is not None:
            raise ValueError("incremental: not with from_queue (a queue has no increments)")
        if not inc.param and INCREMENTAL_START not in placeholders:
            raise ValueError(
                "incremental needs param (sent as ?param=<start>) or an {incremental.start} "
                "placeholder in params or body; without either every increment would fetch "
                "everything"
            )
        if INCREMENTAL_END in placeholders and inc.end is None:
            raise ValueError("{incremental.end} needs incremental.end (the window's end)")
        if placeholders and inc.initial is None and inc.cursor_type != "token":
            raise ValueError(
                "incremental.initial is needed with {incremental.start} (the first "
                "increment's start fills it)"
            )
        if inc.cursor_type == "token":
            if placeholders:
                raise ValueError("cursor_type token is sent with param, not a placeholder")
            if self.for_each is not None or self.from_file is not None:
                raise ValueError(
                    "cursor_type token: only on an endpoint walked once per increment (no "
                    "for_each or from_file): the API hands out one token per walk"
                )
        if self.merge == "latest" and not self.primary_key:
            raise ValueError("merge: latest needs primary_key (one row per key)")
        if inc.deleted_field is not None and self.merge is None:
            raise ValueError(
                "incremental.deleted_field: only used by merge: latest (the current table); "
                "add merge: latest or leave it out"
            )

    @property
    def parent(self) -> str | None:
        """The endpoint this one iterates over (``for_each.endpoint``), or None for a root."""
        return self.for_each.endpoint if self.for_each else None


def _body_fields(body: Any) -> set[str]:
    if isinstance(body, str):
        return template_fields(body)
    if isinstance(body, dict):
        return set().union(*(_body_fields(v) for v in body.values())) if body else set()
    if isinstance(body, list):
        return set().union(*(_body_fields(v) for v in body)) if body else set()
    return set()


_PARQUET_ONLY = ("directory", "compression", "max_rows_per_file", "min_rows_per_file")


class OutputConfig(_Model):
    """Where and how the Parquet output is written: folder, compression, row groups, file sizes, and
    how often progress is checkpointed (``output``).

    ``format: none`` (or just ``output: none``) writes no Parquet at all: records reach the
    embedding service only as Arrow batches (``Pipeline.batches``), a batch about every
    ``row_group_rows`` records (it ends with the page that filled it) and at checkpoints. Its
    checkpoint state then lives in ``state_dir``, and a restarted pipeline continues after the
    last batch delivered; without ``state_dir`` there is no state and every run starts afresh
    (README, "Records back as Arrow batches").
    """

    format: Literal["parquet", "none"] = Field(
        "parquet",
        description="'parquet' (files under directory) or 'none' (Arrow batches only, "
        "through Pipeline.batches)",
    )
    state_dir: str | None = Field(
        None,
        description="format none only: a folder for the checkpoint state, so a restarted "
        "pipeline continues after the last delivered batch (default: no state, every run "
        "starts afresh)",
    )
    directory: str = "output"
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = "zstd"
    row_group_rows: int = Field(10_000, ge=1)
    max_rows_per_file: int = Field(1_000_000, ge=1)
    min_rows_per_file: int | None = Field(
        None,
        ge=1,
        description="a finished run merges committed files smaller than this into files of "
        "up to max_rows_per_file rows, so at most one file per folder is smaller "
        "(default: half of max_rows_per_file)",
    )
    checkpoint_seconds: float = Field(
        10.0,
        gt=0,
        description="how often progress is made durable (files committed, state saved); "
        "a killed run redoes at most about this much work",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """``output: none`` / ``output: parquet`` stand for ``{format: ...}``."""
        if isinstance(data, str):
            if data.strip().lower() not in ("none", "parquet"):
                raise ValueError(
                    f"expected a mapping, or 'none' (Arrow batches only) or 'parquet', got {data!r}"
                )
            return {"format": data.strip().lower()}
        return data

    @model_validator(mode="after")
    def _format_fits(self) -> OutputConfig:
        if self.format == "none":
            given = [f for f in _PARQUET_ONLY if f in self.model_fields_set]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: only for Parquet output, but format is none "
                    "(records go only to Pipeline.batches(); checkpoint state goes to state_dir)"
                )
        elif self.state_dir is not None:
            raise ValueError(
                "state_dir: only for format none (Parquet output keeps its checkpoint state in "
                "its directory)"
            )
        if self.state_dir is not None and not self.state_dir.strip():
            raise ValueError("state_dir: is empty; name a folder, or leave it out for no state")
        return self

    @model_validator(mode="after")
    def _groups_fit(self) -> OutputConfig:
        if self.row_group_rows > self.max_rows_per_file:
            raise ValueError("row_group_rows cannot exceed max_rows_per_file")
        if self.min_rows_per_file is not None and self.min_rows_per_file > self.max_rows_per_file:
            raise ValueError("min_rows_per_file cannot exceed max_rows_per_file")
        return self

    @property
    def min_rows(self) -> int:
        """``min_rows_per_file``, or its default: half of ``max_rows_per_file`` (at least 1)."""
        if self.min_rows_per_file is not None:
            return self.min_rows_per_file
        return max(1, self.max_rows_per_file // 2)


class PipelineConfig(_Model):
    """A whole pipeline, validated and frozen: the API, the output and the endpoints (their graph
    checked: known parents, no cycles).
    """

    api: ApiConfig
    output: OutputConfig = OutputConfig()
    endpoints: tuple[EndpointConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _graph(self) -> PipelineConfig:
        names = [e.name for e in self.endpoints]
        folders = names + [e.transform_folder for e in self.endpoints if e.transform_folder]
        folders += [e.current_folder for e in self.endpoints if e.current_folder]
        seen: set[str] = set()
        for n in folders:
            if n.lower() in seen:
                raise ValueError(f"output folder '{n}' is used twice (folder names must differ)")
            seen.add(n.lower())
        for e in self.endpoints:
            if self.output.format == "none" and e.transform is not None:
                raise ValueError(
                    f"endpoint '{e.name}': a transform writes Parquet, but output format is "
                    "none; drop the transform or use format parquet"
                )
            if self.output.format == "none" and e.incremental is not None:
                raise ValueError(
                    f"endpoint '{e.name}': incremental runs need Parquet output (increments are "
                    "partitions of its folder); output format none is not supported yet"
                )
            if e.for_each and e.for_each.endpoint not in names:
                raise ValueError(
                    f"endpoint '{e.name}': for_each.endpoint '{e.for_each.endpoint}' "
                    f"is not defined (endpoints: {', '.join(names)})"
                )
            if e.for_each and e.for_each.endpoint == e.name:
                raise ValueError(f"endpoint '{e.name}' cannot iterate over itself")
            if e.for_each and e.for_each.parents == "all":
                parent = next(p for p in self.endpoints if p.name == e.for_each.endpoint)
                if parent.merge != "latest":
                    raise ValueError(
                        f"endpoint '{e.name}': for_each.parents: all walks every key of "
                        f"'{parent.name}'s current table, so '{parent.name}' needs "
                        "merge: latest (with primary_key and incremental); add it, or use "
                        "parents: increment (the default: the parent records of each increment)"
                    )
        self.order()  # raises on cycles
        return self

    @property
    def incremental(self) -> bool:
        """Whether any endpoint is incremental: then every run is an increment and every
        endpoint's files go to ``<folder>/increment=<n>/``."""
        return any(e.incremental is not None for e in self.endpoints)

    def endpoint(self, name: str) -> EndpointConfig:
        """The endpoint named ``name`` (KeyError if there is none)."""
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)

    def children(self, name: str) -> list[EndpointConfig]:
        """The endpoints that iterate over ``name`` (``for_each.endpoint == name``), in config
        order.
        """
        return [e for e in self.endpoints if e.parent == name]

    def order(self) -> list[EndpointConfig]:
        """Endpoints in dependency order: parents first, then config order."""
        from graphlib import CycleError, TopologicalSorter

        ts: TopologicalSorter[str] = TopologicalSorter()
        for e in self.endpoints:
            ts.add(e.name, *([e.parent] if e.parent else []))
        try:
            ts.prepare()
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            raise ValueError(f"for_each dependencies form a cycle: {cycle}") from None
        by_name = {e.name: e for e in self.endpoints}

        def depth(e: EndpointConfig) -> int:
            return 0 if e.parent is None else 1 + depth(by_name[e.parent])

        index = {e.name: i for i, e in enumerate(self.endpoints)}
        return sorted(self.endpoints, key=lambda e: (depth(e), index[e.name]))
