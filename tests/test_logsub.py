"""The logging subscriber: levels, text lines and JSON lines with stable keys."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from asyncingest.core.events import (
    BreakerChanged,
    BudgetExhausted,
    EndpointFinished,
    EndpointStarted,
    Event,
    EventBus,
    FileCommitted,
    RatePaused,
    RequestFailed,
    RequestFinished,
    RequestRetried,
    RunFinished,
    RunStarted,
)
from asyncingest.core.result import EndpointStats, RunResult
from asyncingest.operate.logsub import configure_logging

REQUEST = RequestFinished(
    "laps",
    "GET",
    "https://api.example.com/laps?session_key=9158&api_key=***",
    200,
    1,
    True,
    0.1234,
    0.5,
    4300,
    100,
)


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    logger = logging.getLogger("asyncingest")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def finished(name: str = "laps", failed: int = 0) -> EndpointFinished:
    stats = EndpointStats(name, requests=212, retries=3, records_written=41_200)
    stats.failed_requests = failed
    stats.files.extend(["a.parquet", "b.parquet"])
    stats.finished = 12.5
    return EndpointFinished(stats.summary())


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_debug_line_per_request_in_text() -> None:
    out = io.StringIO()
    configure_logging("debug", "text", out)(REQUEST)
    line = out.getvalue().strip()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} DEBUG   laps: GET https://api\.example\.com/laps"
        r"\?session_key=9158&api_key=\*\*\* -> 200, attempt 1, 123\.4 ms, 4\.2 kB, 100 records",
        line,
    ), line


def test_requests_are_not_logged_at_info() -> None:
    out = io.StringIO()
    log = configure_logging("info", "text", out)
    log(REQUEST)
    log(EndpointStarted("laps", "sessions", None))
    assert out.getvalue().count("\n") == 1
    assert "INFO    laps: started (one job per sessions record)" in out.getvalue()


def test_json_request_line_has_stable_keys() -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "json", out)(REQUEST)
    [line] = json_lines(out)
    assert list(line) == [
        "ts",
        "level",
        "logger",
        "event",
        "message",
        "endpoint",
        "method",
        "url",
        "status",
        "attempt",
        "ok",
        "duration_ms",
        "limiter_wait_ms",
        "bytes",
        "records",
        "error",
    ]
    assert line["level"] == "debug" and line["event"] == "request_finished"
    assert line["duration_ms"] == 123.4 and line["bytes"] == 4300
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])


def test_levels_for_each_kind_of_event() -> None:
    out = io.StringIO()
    log = configure_logging("debug", "json", out)
    events: list[Event] = [
        RunStarted("r1", ("laps",), "out", ("170/10s",)),
        EndpointStarted("laps", None, 12_000),
        RequestRetried("laps", "https://x/1", "HTTP 503", 1, 0.5, 503),
        RequestFailed("laps", "https://x/2", "gave up after 5 attempts: HTTP 503", 5, 503),
        FileCommitted("laps", "out/laps/part-00000.parquet"),
        BreakerChanged("laps", "open", "closed", 5, 30.0),
        BreakerChanged("laps", "closed", "half-open", 0, 0.0),
        RatePaused("api", "laps", 30.0, "HTTP 429, Retry-After 30s", True),
        RatePaused("api", "laps", 8.0, "x-ratelimit: 1 remaining", False),
        finished(),
        finished("sessions", failed=2),
        RunFinished(RunResult("r1", "out", (finished().summary,), 20.0)),
    ]
    for event in events:
        log(event)
    got = [(line["event"], line["level"]) for line in json_lines(out)]
    assert got == [
        ("run_started", "info"),
        ("endpoint_started", "info"),
        ("request_retried", "warning"),
        ("request_failed", "warning"),
        ("file_committed", "info"),
        ("breaker_changed", "warning"),
        ("breaker_changed", "info"),
        ("rate_paused", "warning"),
        ("rate_paused", "info"),
        ("endpoint_finished", "info"),
        ("endpoint_finished", "warning"),
        ("run_finished", "info"),
    ]


def test_text_messages_read_well() -> None:
    out = io.StringIO()
    log = configure_logging("info", "text", out)
    log(RequestRetried("laps", "https://x/1", "HTTP 503", 1, 0.5, 503))
    log(BreakerChanged("laps", "open", "closed", 5, 30.0))
    log(finished())
    text = out.getvalue()
    assert "WARNING laps: attempt 1 failed (HTTP 503), retrying in 0.5s: https://x/1" in text
    assert "laps: circuit closed -> open after 5 failures, next probe in 30s" in text
    assert (
        "laps: finished in 12.5s: 41,200 records in 2 files, 212 requests, 3 retries, "
        "0 failed, 0 rejected" in text
    )


def test_warning_level_keeps_only_trouble() -> None:
    out = io.StringIO()
    log = configure_logging("warning", "text", out)
    log(EndpointStarted("laps", None, 10))
    log(RequestRetried("laps", "https://x/1", "timeout", 1, 0.5, None))
    assert out.getvalue().count("\n") == 1


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "text", first)
    log = configure_logging("info", "text", second)
    log(EndpointStarted("laps", None, 10))
    assert first.getvalue() == "" and second.getvalue().count("\n") == 1


def test_subscriber_errors_reach_the_log_as_json() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)

    def broken(event: object) -> None:
        raise RuntimeError("display bug")

    EventBus([broken]).emit(EndpointStarted("laps", None, 1))
    [line] = json_lines(out)
    assert line["level"] == "error" and "RuntimeError: display bug" in line["exception"]


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", "text", io.StringIO())
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("info", "xml", io.StringIO())  # type: ignore[arg-type]


def test_budget_used_up_and_a_stopped_run_are_warnings() -> None:
    out = io.StringIO()
    log = configure_logging("info", "json", out)
    reason = "rate budget 'api' is used up; the next request can go at 2023-11-15 00:00:00 UTC"
    log(BudgetExhausted("users", "api", 3600.0, 1_700_006_400.0, reason))
    stopped = RunResult("r1", "out", (), 5.0, stopped=True, note=reason)
    log(RunFinished(stopped))
    budget, finished_run = json_lines(out)
    assert budget["level"] == "warning" and budget["resume_at"] == "2023-11-15T00:00:00Z"
    assert finished_run["level"] == "warning" and finished_run["stopped"] is True
    assert "stopped (state saved, resumable)" in finished_run["message"]


def test_default_stream_is_stderr_at_write_time(monkeypatch: pytest.MonkeyPatch) -> None:
    log = configure_logging("info", "text")
    redirected = io.StringIO()  # as a rich live display redirects stderr while it runs
    monkeypatch.setattr(sys, "stderr", redirected)
    log(EndpointStarted("laps", None, 10))
    assert "laps: started (10 jobs)" in redirected.getvalue()
