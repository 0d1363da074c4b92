"""The progress model, the plain fallback (StringIO, fake time) and the live table."""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from asyncingest.core.events import (
    BreakerChanged,
    BudgetExhausted,
    EndpointFinished,
    EndpointStarted,
    EventBus,
    JobFinished,
    JobsQueued,
    RatePaused,
    RecordsExpected,
    RecordsRejected,
    RecordsWritten,
    RequestFailed,
    RequestFinished,
    RequestRetried,
    RequestStarted,
    RunFinished,
    RunStarted,
)
from asyncingest.core.result import EndpointStats, RunResult
from asyncingest.core.snapshot import EndpointSnapshot, Snapshot, WindowUsage
from asyncingest.operate.logsub import LogSubscriber
from asyncingest.operate.progress import (
    LiveProgress,
    PlainProgress,
    make_display,
    plain_line,
    render_progress,
    summary_table,
)
from asyncingest.operate.progress_model import Progress, ProgressModel, RateMeter
from asyncingest.testing import FakeClock


def request(endpoint: str = "laps", status: int = 200, wait: float = 0.0) -> RequestFinished:
    return RequestFinished(
        endpoint, "GET", "https://x/", status, 1, status == 200, 0.1, wait, 10, 1
    )


def done(name: str) -> EndpointFinished:
    return EndpointFinished(EndpointStats(name).summary())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=0.0)


@pytest.fixture
def model(clock: FakeClock) -> ProgressModel:
    return ProgressModel(clock.time)


async def requests_at(
    model: ProgressModel, clock: FakeClock, per_second: int, seconds: int, name: str = "laps"
) -> None:
    """``per_second`` requests each second, spread over it in steps of 1/per_second (a power
    of two, so every instant is an exact float)."""
    for _ in range(seconds * per_second):
        model(request(name))
        await clock.advance(1 / per_second)


# -- the model -----------------------------------------------------------------------------


def test_counts_per_endpoint(model: ProgressModel) -> None:
    model(RunStarted("r1", ("laps", "weather"), "out", ("170/10s",)))
    model(EndpointStarted("laps", "sessions", None))
    model(request(wait=0.5))
    model(request(status=429, wait=1.0))
    model(RequestRetried("laps", "https://x/", "HTTP 429", 1, 1.0, 429))
    model(RequestFailed("laps", "https://x/", "gave up", 5, 503))
    model(RecordsWritten("laps", 100))
    model(RecordsRejected("laps", 2, "no key"))
    row = model.rows["laps"]
    assert (row.requests, row.throttled, row.retries, row.failed) == (2, 1, 1, 1)
    assert (row.received, row.written, row.rejected, row.waited) == (1, 100, 2, 1.5)
    assert list(model.rows) == ["laps", "weather"]


async def test_rate_is_over_the_last_seconds_not_since_the_start(
    model: ProgressModel, clock: FakeClock
) -> None:
    model(EndpointStarted("laps", None, None))
    await requests_at(model, clock, 16, 20)
    assert model.rate(model.rows["laps"]) == 16.0
    await requests_at(model, clock, 2, 10)
    assert model.rate(model.rows["laps"]) == pytest.approx(2.0, rel=0.1)  # 9 in 4.75 s
    await clock.advance(6.0)  # a stall shows as 0, not as the average so far
    assert model.rate(model.rows["laps"]) == 0.0


def test_rate_meter_early_in_the_run_divides_by_time_elapsed() -> None:
    meter = RateMeter(5.0)
    for k in range(10):
        meter.add(k * 0.1)
    assert meter.rate(1.0, since=0.0) == pytest.approx(10.0)


def test_in_flight_from_started_and_finished(model: ProgressModel) -> None:
    for _ in range(3):
        model(RequestStarted("laps", "GET", "https://x/", 1))
    model(request())
    assert model.in_flight(model.rows["laps"]) == 2
    sampled = ProgressModel(in_flight=lambda name: 7)
    sampled(request())
    assert sampled.in_flight(sampled.rows["laps"]) == 7


async def test_progress_and_eta_for_input_ids(model: ProgressModel, clock: FakeClock) -> None:
    model(EndpointStarted("users", None, 100))
    for _ in range(10):
        await clock.advance(1.0)
        model(JobFinished("users"))
    row = model.rows["users"]
    p = model.progress(row)
    assert p is not None and (p.done, p.total, p.unit, p.final) == (10, 100, "jobs", True)
    assert model.eta(row) == pytest.approx(90.0)


def test_child_total_grows_until_the_parent_finishes(model: ProgressModel) -> None:
    model(EndpointStarted("sessions", None, None))
    model(EndpointStarted("laps", "sessions", None))
    model(JobsQueued("laps", 40))
    model(JobsQueued("laps", 10))
    p = model.progress(model.rows["laps"])
    assert p is not None and (p.total, p.final) == (50, False)
    model(done("sessions"))
    p = model.progress(model.rows["laps"])
    assert p is not None and p.final


def test_total_reported_by_the_api(model: ProgressModel) -> None:
    model(EndpointStarted("meetings", None, None))
    assert model.progress(model.rows["meetings"]) is None
    model(RecordsExpected("meetings", 400))
    for _ in range(100):
        model(request("meetings"))  # one record each
    p = model.progress(model.rows["meetings"])
    assert p is not None and (p.done, p.total, p.unit) == (100, 400, "records")


def test_breaker_and_pause(model: ProgressModel, clock: FakeClock) -> None:
    model(BreakerChanged("laps", "open", "closed", 5, 30.0))
    assert model.rows["laps"].breaker == "open"
    model(RatePaused("api", "laps", 30.0, "HTTP 429, Retry-After 30s", True))
    assert model.paused() == ("api", 30.0, "HTTP 429, Retry-After 30s")


# -- the plain fallback ----------------------------------------------------------------------


async def test_plain_line_every_interval(model: ProgressModel, clock: FakeClock) -> None:
    out = io.StringIO()
    async with PlainProgress(out, model, every=10.0, clock=clock) as plain:
        plain(RunStarted("r1", ("laps",), "out", ()))
        plain(EndpointStarted("laps", "sessions", None))
        plain(RecordsWritten("laps", 41_200))
        for _ in range(3):
            plain(RequestRetried("laps", "https://x/", "HTTP 503", 1, 0.5, 503))
        await clock.advance(5.0)
        await requests_at(model, clock, 16, 5)  # to t=10: 80 requests in the last 5 s
        model(RequestStarted("laps", "GET", "https://x/", 1))
        assert out.getvalue() == (
            "laps: 80 records (41,200 written), 80 req, 3 retries, 0 failed, 16.0 req/s\n"
        )
        await clock.advance(10.0)  # a stall still prints, and shows 0.0 req/s
    assert out.getvalue().splitlines()[-1] == (
        "laps: 80 records (41,200 written), 80 req, 3 retries, 0 failed, 0.0 req/s"
    )


async def test_plain_prints_done_at_once_and_skips_finished(
    model: ProgressModel, clock: FakeClock
) -> None:
    out = io.StringIO()
    async with PlainProgress(out, model, every=10.0, clock=clock) as plain:
        plain(EndpointStarted("laps", None, None))
        plain(EndpointStarted("weather", None, None))
        plain(done("laps"))
        assert out.getvalue() == (
            "laps: 0 records (0 written), 0 req, 0 retries, 0 failed, 0.0 req/s, done\n"
        )
        await clock.advance(10.0)
    assert out.getvalue().splitlines()[1].startswith("weather: ")
    assert len(out.getvalue().splitlines()) == 2


async def test_plain_line_with_progress_eta_breaker_budget_and_pause(clock: FakeClock) -> None:
    usage = {"api": (WindowUsage(170, 10.0, 85, 85, 0.0),)}
    model = ProgressModel(clock.time, budget=lambda: usage)
    out = io.StringIO()
    async with PlainProgress(out, model, every=10.0, clock=clock) as plain:
        plain(EndpointStarted("users", None, 160))
        for _ in range(40):  # 8 jobs a second for 5 s, then nothing: 4 a second since the start
            await clock.advance(0.125)
            plain(JobFinished("users"))
        plain(BreakerChanged("users", "half-open", "open", 5, 0.0))
        plain(RatePaused("api", "users", 12.0, "HTTP 429, Retry-After 12s", True))
        await clock.advance(5.0)
    assert out.getvalue().splitlines() == [
        "users: 0 records (0 written), 0 req, 0 retries, 0 failed, 0.0 req/s, 40/160 jobs (25%), "
        "ETA 30s, "
        "breaker half-open",
        "budget api: 170/10s 85 used (50%)",
        "api paused 7s more: HTTP 429, Retry-After 12s",
    ]


def test_plain_refuses_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="every"):
        PlainProgress(io.StringIO(), every=0)


def test_quiet_means_no_display_and_a_pipe_means_plain() -> None:
    model = ProgressModel()
    assert make_display(Console(file=io.StringIO()), model, quiet=True) is None
    assert isinstance(make_display(Console(file=io.StringIO()), model), PlainProgress)
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert isinstance(make_display(terminal, model), LiveProgress)


# -- the live table and the report -----------------------------------------------------------


async def test_live_table_refreshes_from_the_loop(model: ProgressModel, clock: FakeClock) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    model.budget = lambda: {"api": (WindowUsage(170, 10.0, 17, 17, 0.0),)}
    async with LiveProgress(console, model, clock=clock) as live:
        live(RunStarted("r1", ("laps",), "out", ("170/10s",)))
        live(EndpointStarted("laps", None, 8))
        live(JobFinished("laps"))
        live(RecordsWritten("laps", 1234))
        await clock.advance(1.0)
    text = out.getvalue()
    assert "limits: 170/10s" in text and "budget api: 170/10s 17 used (10%)" in text
    assert "1/8 jobs" in text and "1,234" in text


def test_render_marks_an_open_breaker(model: ProgressModel) -> None:
    model(EndpointStarted("laps", None, None))
    model(BreakerChanged("laps", "open", "closed", 5, 30.0))
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(render_progress(model))
    assert "breaker open" in out.getvalue()


def test_report_shows_breakers_that_opened(model: ProgressModel) -> None:
    model(BreakerChanged("laps", "open", "closed", 5, 30.0))
    model(BreakerChanged("laps", "half-open", "open", 5, 0.0))
    model(BreakerChanged("laps", "closed", "half-open", 0, 0.0))
    result = RunResult("r1", "out", (EndpointStats("laps").summary(),), 3.0)
    model(RunFinished(result))
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(summary_table(result, model))
    assert "breaker" in out.getvalue() and "closed, opened 1x" in out.getvalue()
    plain = io.StringIO()
    Console(file=plain, width=160, color_system=None).print(summary_table(result))
    assert "breaker" not in plain.getvalue()


async def test_plain_says_at_once_when_a_budget_is_used_up(
    model: ProgressModel, clock: FakeClock
) -> None:
    out = io.StringIO()
    reason = "rate budget 'api' is used up; the next request can go at 2023-11-15 00:00:00 UTC"
    async with PlainProgress(out, model, clock=clock) as plain:
        plain(BudgetExhausted("users", "api", 3600.0, 1_700_006_400.0, reason))
    assert out.getvalue() == f"users: {reason}\n"
    assert model.notices == [reason]


# -- what the figures mean -------------------------------------------------------------------


def test_records_count_as_pages_arrive_not_when_the_writer_takes_them(
    model: ProgressModel,
) -> None:
    model(EndpointStarted("laps", None, None))
    for _ in range(3):  # three pages of 50 records; the writer has not written a row group yet
        model(RequestFinished("laps", "GET", "https://x/", 200, 1, True, 0.1, 0.0, 10, 50))
    model(RequestFinished("laps", "GET", "https://x/", 503, 1, False, 0.1, 0.0, 10, 0))
    row = model.rows["laps"]
    assert (row.received, row.written) == (150, 0)
    assert plain_line(model, row).startswith("laps: 150 records (0 written), 4 req")
    model(RecordsWritten("laps", 150))
    assert plain_line(model, row).startswith("laps: 150 records (150 written), 4 req")


def test_limiter_wait_is_shown_as_the_mean_per_request(model: ProgressModel) -> None:
    model(EndpointStarted("laps", None, None))
    for wait in (0.2, 0.4, 0.6, 0.8):  # 2 s summed over 4 requests waiting side by side
        model(request(wait=wait))
    row = model.rows["laps"]
    assert model.wait_per_request(row) == pytest.approx(0.5)
    assert plain_line(model, row).endswith(", 500ms/req limiter wait")
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(render_progress(model))
    header, line = out.getvalue().splitlines()[1:3]
    assert "wait/req" in header and "waited" not in header
    assert line.split()[-2] == "500ms"


def test_the_report_shows_the_mean_limiter_wait_per_request() -> None:
    stats = EndpointStats("laps")
    stats.requests, stats.limiter_wait = 4, 2.0
    result = RunResult("r1", "out", (stats.summary(),), 3.0)
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(summary_table(result))
    text = out.getvalue()
    assert "wait/req" in text and "500ms" in text and "mean time a request waited" in text


# -- fed by snapshots ---------------------------------------------------------------------------


class Counters:
    """A run's snapshots as the model reads them: ``laps`` counters a test moves by hand."""

    def __init__(self) -> None:
        self.laps = EndpointSnapshot("laps", "sessions", started=True)
        self.windows = {"api": (WindowUsage(170, 10.0, 17, 17, 0.0),)}

    def move(self, **fields: int) -> None:
        self.laps = dataclasses.replace(self.laps, **fields)

    def __call__(self) -> Snapshot:
        return Snapshot("r1", "running", 0.0, (self.laps,), self.windows)


def test_a_model_fed_by_snapshots_wants_no_per_request_event() -> None:
    model = ProgressModel(snapshot=Counters())
    wanted = model.event_types
    assert wanted is not None
    assert not {RequestStarted, RequestFinished, JobFinished, RequestRetried} & wanted
    assert {RunStarted, EndpointStarted, EndpointFinished, BreakerChanged} <= wanted
    plain = PlainProgress(io.StringIO(), model)
    logs = LogSubscriber()  # at WARNING: no per-request line either
    bus = EventBus([plain, logs])
    for per_request in (RequestStarted, RequestFinished, JobFinished):
        assert not bus.listening_to(per_request)()
    assert bus.listening_to(RequestRetried)()  # the log shows retries
    assert ProgressModel().event_types is None  # counting from events: all of them


async def test_a_model_fed_by_snapshots_counts_and_rates_from_them(clock: FakeClock) -> None:
    counters = Counters()
    model = ProgressModel(clock.time, snapshot=counters)
    model(EndpointStarted("laps", "sessions", None))
    for second in range(1, 11):  # 16 requests, 4 jobs and 40 records a second, refreshed each
        await clock.advance(1.0)
        counters.move(
            requests=16 * second,
            jobs=100,
            jobs_done=4 * second,
            records_received=40 * second,
            records_written=30 * second,
            retries=second,
            throttled=2,
            in_flight=3,
            queued=5,
        )
        model.refresh()
    row = model.rows["laps"]
    assert (row.requests, row.received, row.written, row.retries, row.throttled) == (
        160,
        400,
        300,
        10,
        2,
    )
    assert model.in_flight(row) == 3 and model.rate(row) == 16.0
    assert model.progress(row) == Progress(40, 100, "jobs", False)
    assert model.eta(row) == 15.0  # 60 jobs left at 4 a second
    assert model.budget is not None and model.budget() == counters.windows


async def test_the_plain_display_refreshes_its_snapshot_before_each_line(
    clock: FakeClock,
) -> None:
    counters = Counters()
    out = io.StringIO()
    model = ProgressModel(clock.time, snapshot=counters)
    async with PlainProgress(out, model, every=10.0, clock=clock) as plain:
        plain(EndpointStarted("laps", None, None))
        counters.move(requests=50, records_received=500, records_written=400)
        await clock.advance(10.0)
        counters.move(requests=80, records_received=800, records_written=800)
        plain(done("laps"))
    lines = out.getvalue().splitlines()
    first, last = lines[0], lines[-1]
    assert lines[1] == "budget api: 170/10s 17 used (10%)"
    assert first.startswith(
        "laps: 500 records (400 written), 50 req, 0 retries, 0 failed, 5.0 req/s"
    )
    assert last.startswith("laps: 800 records (800 written), 80 req")
    assert last.endswith(", done")
