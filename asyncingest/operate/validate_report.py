"""The report ``validate`` prints for a valid config: endpoints in dependency order, how each
pages and fans out, and the limits that apply. Secrets are never part of it (only the
variable's name)."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from ..config.models import (
    CursorPagination,
    CustomPagination,
    EndpointConfig,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
    OAuth2Config,
    OffsetPagination,
    PagePagination,
    PipelineConfig,
)


def pagination_text(e: EndpointConfig) -> str:
    """How an endpoint pages, in one phrase."""
    p = e.pagination
    match p:
        case NoPagination():
            return "none"
        case OffsetPagination():
            total = f", total at {p.total_path}" if p.total_path else ""
            return f"offset ({p.offset_param}/{p.limit_param}={p.limit}{total})"
        case PagePagination():
            return f"page ({p.page_param} from {p.start}, {p.size_param}={p.size})"
        case CursorPagination():
            return f"cursor ({p.cursor_path} -> ?{p.cursor_param}=)"
        case NextUrlPagination():
            return f"next URL at {p.next_path}"
        case LinkHeaderPagination():
            return f'Link header rel="{p.rel}"'
        case CustomPagination():
            return f"custom ({p.function})"
    return "?"


def fan_out_text(e: EndpointConfig) -> str:
    """What an endpoint iterates over (parent records or an input file) and how values are bound, in
    one phrase.
    """
    if e.for_each:
        binds = ", ".join(f"{{{k}}}<-{v}" for k, v in e.for_each.bind.items())
        copy = f"; copies {', '.join(e.for_each.copy_fields)}" if e.for_each.copy_fields else ""
        return f"each {e.for_each.endpoint} record: {binds}{copy}"
    if e.from_file:
        f = e.from_file
        return f"each {f.column} in {f.path} ({f.file_format}) -> {{{f.variable}}}"
    return "one walk"


def describe_plan(cfg: PipelineConfig, source: str = "") -> Group:
    """The report ``validate`` prints for a valid config: the API, its auth and limits, then each
    endpoint in dependency order.
    """
    api = cfg.api
    head = Text()
    head.append(f"{source}: OK\n", style="bold green")
    head.append(f"API {api.base_url}")
    auth = api.auth
    if isinstance(auth, OAuth2Config):
        head.append(
            f", auth OAuth2 client credentials from ${auth.client_id_env} and "
            f"${auth.client_secret_env} via {auth.token_url}"
        )
    elif auth is not None:
        where = {
            "bearer": "Authorization: Bearer",
            "header": f"header {auth.name}",
            "query": f"query parameter {auth.name}",
        }[auth.type]
        head.append(f", auth {where} from ${auth.env}")
    limits = ", ".join(str(w) for w in api.rate_limits) or "none"
    head.append(f"\nrate limits (all enforced together): {limits}")
    c, h, r = api.concurrency, api.http, api.retry
    head.append(
        f"\nconcurrency: {c.endpoints} endpoint trees at once, {c.requests_per_endpoint} "
        f"requests in flight per endpoint; connections {h.max_connections}"
        f"\ntimeouts: connect {h.connect_timeout:g}s, read {h.read_timeout:g}s, total "
        f"{h.total_timeout:g}s; retries: {r.max_attempts} attempts within {r.max_time:g}s"
        f"\noutput: {cfg.output.directory} ({cfg.output.compression}, row groups of "
        f"{cfg.output.row_group_rows:,}, files of at most {cfg.output.max_rows_per_file:,} rows)"
    )
    body = Text("\nendpoints in dependency order:\n", style="bold")
    for i, e in enumerate(cfg.order(), 1):
        own = ", ".join(str(w) for w in e.rate_limits)
        workers = e.concurrency or c.requests_per_endpoint
        indent = "   " * _depth(cfg, e)
        body.append(f"{i:>3}. {indent}{e.name}", style="cyan")
        body.append(f"  {e.method} {e.path}\n")
        body.append(
            f"     {indent}records at {e.records}; pagination: {pagination_text(e)}; "
            f"fan-out: {fan_out_text(e)}; {workers} in flight"
            + (f"; limits {own}" if own else "")
            + "\n"
        )
        body.append(f"     {indent}columns: {schema_text(e)}\n")
        if e.incremental is not None or cfg.incremental:
            body.append(f"     {indent}increments: {incremental_text(e)}\n")
    return Group(head, body)


def incremental_text(e: EndpointConfig) -> str:
    """``updatedAt (timestamp) sent as ?updatedAfter, from 2024-01-01T00:00:00Z, lag 300;
    current table contacts_current`` (or how a non-incremental endpoint of an incremental
    config is fetched)."""
    inc = e.incremental
    if inc is None:
        if e.parent is not None and e.for_each is not None and e.for_each.parents == "all":
            return f"for every key of {e.parent}_current, each increment (parents: all)"
        if e.parent is not None:
            return f"for the {e.parent} records of each increment"
        return "fetched in full every increment"
    if inc.cursor_type == "token":
        text = f"a 'changes since' token from {inc.token_path}, sent as ?{inc.param}"
    else:
        sent = f"?{inc.param}" if inc.param else "{incremental.start}"
        text = f"{inc.cursor_field} ({inc.cursor_type}) sent as {sent}"
    if inc.initial is not None:
        text += f", from {inc.initial}"
    if inc.lag:
        text += f", lag {inc.lag:g}"
    if inc.end is not None:
        text += f", until {inc.end} (a backfill)"
    if e.current_folder:
        text += f"; current table {e.current_folder}"
        if inc.deleted_field:
            text += f" (without keys whose {inc.deleted_field} is set)"
    return text


def schema_text(e: EndpointConfig) -> str:
    """``lap_duration float64, is_pit_out_lap bool; the others inferred``."""
    if not e.schema_:
        return "all inferred"
    declared = ", ".join(f"{name} {ftype}" for name, ftype in e.schema_.items())
    if e.columns == "only_declared":
        return f"only {declared} (other fields dropped, counted in the run report)"
    return f"{declared}; the others inferred"


def _depth(cfg: PipelineConfig, e: EndpointConfig) -> int:
    return 0 if e.parent is None else 1 + _depth(cfg, cfg.endpoint(e.parent))
