"""Logs for people and for log pipelines: an event subscriber writing through ``logging``.

``configure_logging(level, fmt, stream)`` installs one handler on the ``asyncingest`` logger and
returns the subscriber to hand to the engine. Levels:

* DEBUG: one line per request (method, URL with secrets redacted, status, attempt, duration,
  bytes), records written, jobs queued;
* INFO: the run and each endpoint starting and finishing, files committed, the breaker closing,
  pauses taken before the server said 429;
* WARNING: retries, requests that gave up, rejected records, the breaker opening, 429 pauses,
  a budget used up (with when it returns), incremental cursors in the future (``cursor_ahead``).

``fmt="text"`` writes ``2024-05-01 12:00:00.123 INFO  laps: ...`` lines; ``fmt="json"`` writes
one JSON object per line with stable keys: ``ts``, ``level``, ``logger``, ``event``,
``message``, then the event's fields (always the same set for an event).
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Literal

import orjson

from ..core.events import (
    BreakerChanged,
    BudgetExhausted,
    ConcurrencyChanged,
    CursorAhead,
    EndpointFinished,
    EndpointStarted,
    Event,
    FileCommitted,
    IncrementStarted,
    JobsQueued,
    RatePaused,
    RecordsExpected,
    RecordsRejected,
    RecordsWritten,
    RequestFailed,
    RequestFinished,
    RequestRetried,
    RunFinished,
    RunStarted,
)

__all__ = ["LogFormat", "LogSubscriber", "configure_logging"]

LogFormat = Literal["text", "json"]
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_HANDLER_MARK = "_asyncingest_handler"

Fields = dict[str, Any]


Entry = tuple[int, str, str, Fields]  # level, event name, message, fields


class LogSubscriber:
    """Turns events into log records on ``logger`` (the engine's subscriber)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("asyncingest.run")

    @property
    def event_types(self) -> frozenset[type]:
        """The events it logs at the logger's level (read when it is subscribed): below DEBUG
        the engine then builds no per-request event for it."""
        if self.log.isEnabledFor(logging.DEBUG):
            return frozenset(_DESCRIBE)
        return frozenset(_DESCRIBE) - _DEBUG_ONLY

    def __call__(self, event: Event) -> None:
        describe = _DESCRIBE.get(type(event))
        if describe is None:
            return
        if type(event) in _DEBUG_ONLY and not self.log.isEnabledFor(logging.DEBUG):
            return  # the hot path: build nothing when nobody reads it
        level, name, message, fields = describe(event)
        self.log.log(level, message, extra={"event_name": name, "event_fields": fields})


def _request_finished(e: RequestFinished) -> Entry:
    f: Fields = {
        "endpoint": e.endpoint,
        "method": e.method,
        "url": e.url,
        "status": e.status,
        "attempt": e.attempt,
        "ok": e.ok,
        "duration_ms": round(e.duration * 1000, 1),
        "limiter_wait_ms": round(e.limiter_wait * 1000, 1),
        "bytes": e.nbytes,
        "records": e.records,
        "error": e.error,
    }
    status = e.status if e.status is not None else "no answer"
    error = f" ({e.error})" if e.error else ""
    msg = (
        f"{e.endpoint}: {e.method} {e.url} -> {status}{error}, attempt {e.attempt}, "
        f"{f['duration_ms']:g} ms, {_size(e.nbytes)}, {e.records} records"
    )
    return logging.DEBUG, "request_finished", msg, f


def _request_retried(e: RequestRetried) -> Entry:
    f: Fields = {
        "endpoint": e.endpoint,
        "url": e.url,
        "status": e.status,
        "attempt": e.attempt,
        "wait_s": round(e.wait, 3),
        "reason": e.reason,
    }
    msg = (
        f"{e.endpoint}: attempt {e.attempt} failed ({e.reason}), retrying in {e.wait:.3g}s: {e.url}"
    )
    return logging.WARNING, "request_retried", msg, f


def _request_failed(e: RequestFailed) -> Entry:
    f: Fields = {
        "endpoint": e.endpoint,
        "url": e.url,
        "status": e.status,
        "attempts": e.attempts,
        "reason": e.reason,
    }
    msg = f"{e.endpoint}: gave up after {e.attempts} attempts ({e.reason}): {e.url}"
    return logging.WARNING, "request_failed", msg, f


def _records_rejected(e: RecordsRejected) -> Entry:
    f: Fields = {"endpoint": e.endpoint, "count": e.count, "reason": e.reason}
    msg = f"{e.endpoint}: {e.count:,} records rejected: {e.reason}"
    return logging.WARNING, "records_rejected", msg, f


_Counted = RecordsWritten | JobsQueued | RecordsExpected


def _count(name: str, verb: str) -> Callable[[_Counted], Entry]:
    def describe(e: _Counted) -> Entry:
        f: Fields = {"endpoint": e.endpoint, "count": e.count}
        return logging.DEBUG, name, f"{e.endpoint}: {e.count:,} {verb}", f

    return describe


def _file_committed(e: FileCommitted) -> Entry:
    f: Fields = {"endpoint": e.endpoint, "path": e.path}
    return logging.INFO, "file_committed", f"{e.endpoint}: committed {e.path}", f


def _endpoint_started(e: EndpointStarted) -> Entry:
    f: Fields = {"endpoint": e.endpoint, "parent": e.parent, "jobs": e.total_jobs}
    what = f"{e.total_jobs:,} jobs" if e.total_jobs is not None else ""
    if e.parent:
        what = f"one job per {e.parent} record"
    msg = f"{e.endpoint}: started" + (f" ({what})" if what else "")
    return logging.INFO, "endpoint_started", msg, f


def _endpoint_finished(e: EndpointFinished) -> Entry:
    s = e.summary
    f: Fields = {
        "endpoint": s.name,
        "records": s.records_written,
        "requests": s.requests,
        "retries": s.retries,
        "throttled": s.throttled,
        "failed_requests": s.failed_requests,
        "rejected_records": s.records_rejected,
        "files": len(s.files),
        "bytes": s.nbytes,
        "limiter_wait_s": round(s.limiter_wait, 3),
        "duration_s": round(s.duration, 3),
        "ok": s.ok,
    }
    msg = (
        f"{s.name}: finished in {s.duration:.1f}s: {s.records_written:,} records in "
        f"{len(s.files)} files, {s.requests:,} requests, {s.retries:,} retries, "
        f"{s.failed_requests:,} failed, {s.records_rejected:,} rejected"
    )
    return logging.INFO if s.ok else logging.WARNING, "endpoint_finished", msg, f


def _run_started(e: RunStarted) -> Entry:
    f: Fields = {
        "run_id": e.run_id,
        "endpoints": list(e.endpoints),
        "output": e.output,
        "rate_limits": list(e.rate_limits),
    }
    limits = ", ".join(e.rate_limits) or "none"
    msg = f"run {e.run_id}: {', '.join(e.endpoints)} -> {e.output} (rate limits: {limits})"
    return logging.INFO, "run_started", msg, f


def _increment_started(e: IncrementStarted) -> Entry:
    inc = e.increment
    f: Fields = {
        "increment": inc.number,
        "resumed": e.resumed,
        "windows": [
            {"endpoint": w.endpoint, "start": w.start, "end": w.end, "full_refresh": w.full_refresh}
            for w in inc.windows
            if w.incremental
        ],
    }
    parts = []
    for w in inc.windows:
        if not w.incremental:
            continue
        if w.skipped:
            parts.append(f"{w.endpoint} skipped (backfill through {w.end} done)")
            continue
        start = "the beginning" if w.start is None else str(w.start)[:40]
        parts.append(
            f"{w.endpoint} from {start}"
            + (f" to {w.end}" if w.end is not None else "")
            + (" (full refresh)" if w.full_refresh else "")
        )
    how = "resumed" if e.resumed else "began"
    msg = f"increment {inc.number} {how}: {'; '.join(parts)}"
    return logging.INFO, "increment_started", msg, f


def _cursor_ahead(e: CursorAhead) -> Entry:
    f: Fields = {
        "endpoint": e.endpoint,
        "field": e.field,
        "value": e.value if isinstance(e.value, int | float | str) else repr(e.value),
        "limit": e.limit,
        "records": e.records,
    }
    more = f" (and {e.records - 1:,} more)" if e.records > 1 else ""
    msg = (
        f"{e.endpoint}: {e.field} {e.value!r} is beyond the run's start + future_tolerance "
        f"({e.limit}){more}: written, but it does not move the high-water mark"
    )
    return logging.WARNING, "cursor_ahead", msg, f


def _run_finished(e: RunFinished) -> Entry:
    r = e.result
    f: Fields = {
        "run_id": r.run_id,
        "records": r.records_written,
        "requests": r.requests,
        "duration_s": round(r.duration, 3),
        "cancelled": r.cancelled,
        "stopped": r.stopped,
        "note": r.note,
        "ok": r.ok,
        "exit_code": r.exit_code,
        "compacted": [
            {"folder": c.folder, "files": c.files, "compacted_from": c.compacted_from}
            for c in r.compacted
        ],
    }
    how = "finished" if r.ok else "finished with failures"
    if r.cancelled or r.stopped:
        how = "stopped at once" if r.cancelled else "stopped (state saved, resumable)"
    if r.note:
        how += f" ({r.note})"
    msg = (
        f"run {r.run_id} {how} in {r.duration:.1f}s: {r.records_written:,} records, "
        f"{r.requests:,} requests"
    )
    if r.compacted:  # the endpoints' "N files" counted the small files committed on the way
        msg += "; " + ", ".join(map(str, r.compacted))
    return logging.INFO if r.ok else logging.WARNING, "run_finished", msg, f


def _breaker_changed(e: BreakerChanged) -> Entry:
    f: Fields = {
        "endpoint": e.endpoint,
        "state": e.state,
        "previous": e.previous,
        "failures": e.failures,
        "cooldown_s": e.cooldown,
    }
    msg = f"{e.endpoint}: circuit {e.previous} -> {e.state}"
    if e.state == "open":
        msg += f" after {e.failures} failures, next probe in {e.cooldown:g}s"
    level = logging.WARNING if e.state == "open" else logging.INFO
    return level, "breaker_changed", msg, f


def _rate_paused(e: RatePaused) -> Entry:
    f: Fields = {
        "limiter": e.limiter,
        "endpoint": e.endpoint,
        "seconds": round(e.seconds, 3),
        "throttled": e.throttled,
        "reason": e.reason,
    }
    msg = f"{e.limiter} budget paused {e.seconds:.3g}s (from {e.endpoint}: {e.reason})"
    return logging.WARNING if e.throttled else logging.INFO, "rate_paused", msg, f


def _budget_exhausted(e: BudgetExhausted) -> Entry:
    resume = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.resume_at))
    f: Fields = {
        "endpoint": e.endpoint,
        "limiter": e.limiter,
        "wait_s": round(e.wait, 3),
        "resume_at": resume,
        "reason": e.reason,
    }
    return logging.WARNING, "budget_exhausted", f"{e.endpoint}: {e.reason}", f


def _concurrency_changed(e: ConcurrencyChanged) -> Entry:
    f: Fields = {"endpoint": e.endpoint, "limit": e.limit, "reason": e.reason}
    msg = f"{e.endpoint}: concurrency {e.limit} ({e.reason})"
    return logging.DEBUG, "concurrency_changed", msg, f


_DESCRIBE: dict[type, Callable[[Any], Entry]] = {
    RequestFinished: _request_finished,
    RequestRetried: _request_retried,
    RequestFailed: _request_failed,
    RecordsRejected: _records_rejected,
    RecordsWritten: _count("records_written", "records written"),
    JobsQueued: _count("jobs_queued", "jobs queued"),
    RecordsExpected: _count("records_expected", "records expected"),
    FileCommitted: _file_committed,
    EndpointStarted: _endpoint_started,
    EndpointFinished: _endpoint_finished,
    RunStarted: _run_started,
    IncrementStarted: _increment_started,
    CursorAhead: _cursor_ahead,
    RunFinished: _run_finished,
    BreakerChanged: _breaker_changed,
    RatePaused: _rate_paused,
    BudgetExhausted: _budget_exhausted,
    ConcurrencyChanged: _concurrency_changed,
}
_DEBUG_ONLY: frozenset[type] = frozenset(
    {RequestFinished, RecordsWritten, JobsQueued, RecordsExpected, ConcurrencyChanged}
)


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    if nbytes < 1024 * 1024:
        return f"{nbytes / 1024:.1f} kB"
    return f"{nbytes / 1024 / 1024:.1f} MB"


class TextFormatter(logging.Formatter):
    """The text log line: time with milliseconds, level, message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, message, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line: level, event name, message, the event's fields, and the
        exception's traceback when there is one."""
        fields = getattr(record, "event_fields", None)
        extra: dict[str, Any] = dict(fields) if isinstance(fields, Mapping) else {}
        if record.exc_info:
            extra["exception"] = self.formatException(record.exc_info)
        return json_line(
            record.levelname.lower(),
            getattr(record, "event_name", "log"),
            record.getMessage(),
            extra,
            logger=record.name,
            created=record.created,
        )


def json_line(
    level: str,
    event: str,
    message: str,
    fields: Mapping[str, Any] | None = None,
    *,
    logger: str = "asyncingest",
    created: float | None = None,
) -> str:
    """One JSON log line (no newline): ts, level, logger, event, message, then ``fields``.
    Log records and the CLI's own messages (``operate.reporter``) share it, so a log pipeline
    sees one shape on stderr."""
    created = time.time() if created is None else created
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    out: dict[str, Any] = {
        "ts": f"{ts}.{int(created % 1 * 1000):03d}Z",
        "level": level,
        "logger": logger,
        "event": event,
        "message": message,
    }
    for key, value in (fields or {}).items():
        out.setdefault(key, value)
    return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class _Stderr(io.TextIOBase):
    """Whatever ``sys.stderr`` is when a line is written, so a rich live display that
    redirects stderr prints log lines above itself instead of being torn by them."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    level: str = "info",
    fmt: LogFormat = "text",
    stream: IO[str] | None = None,
    *,
    everything: bool = False,
) -> LogSubscriber:
    """Send ``asyncingest`` logs at ``level`` and above to ``stream`` (stderr) as ``fmt``;
    return the subscriber that logs the engine's events. Calling it again replaces the
    handler it installed before, so tests and repeated runs do not log twice.

    ``everything`` (the CLI): Python warnings and other libraries' warnings and errors (the
    root logger) go through the same handler too, so stderr holds one format only."""
    try:
        threshold = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (one of: {', '.join(LEVELS)})") from None
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    logger = logging.getLogger("asyncingest")
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else _Stderr())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(threshold)
    logger.propagate = False  # our handler is the one; the root logger would print it twice
    if everything:
        logging.captureWarnings(True)
        for other in (logging.getLogger("py.warnings"), logging.getLogger()):
            for old in [h for h in other.handlers if getattr(h, _HANDLER_MARK, False)]:
                other.removeHandler(old)
            other.addHandler(handler)
        logging.getLogger("py.warnings").propagate = False
        root = logging.getLogger()
        root.setLevel(max(threshold, logging.WARNING))
    return LogSubscriber(logger.getChild("run"))
