"""Prometheus metrics: the subscriber, sampled gauges, and the endpoint scraped over HTTP."""

from __future__ import annotations

import sys

import aiohttp
import pytest

from asyncingest.core.events import (
    BreakerChanged,
    BudgetExhausted,
    Event,
    FileCommitted,
    JobFinished,
    JobsQueued,
    RatePaused,
    RecordsWritten,
    RequestFailed,
    RequestFinished,
    RequestRetried,
    RequestStarted,
)
from asyncingest.core.snapshot import WindowUsage

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from asyncingest.operate.metrics import (
    Metrics,
    MetricsUnavailable,
    exposition,
    start_metrics_server,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def finished(endpoint: str, status: int | None, wait: float = 0.0) -> RequestFinished:
    ok = status == 200
    return RequestFinished(
        endpoint, "GET", "https://x/", status, 1, ok, 0.2, wait, 1000 if ok else 0, 10 if ok else 0
    )


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(await response.text())


def feed(metrics: Metrics, events: list[Event]) -> None:
    for event in events:
        metrics(event)


async def test_metrics_endpoint_scraped_over_http_during_a_run(no_proxy_env: None) -> None:
    queue = {"laps": 7, "sessions": 0}
    metrics = Metrics()
    metrics.sample("queue_depth", "Jobs waiting in each endpoint's queue", lambda: queue)
    metrics.sample("pool_workers_busy", "Busy workers of the CPU pool", lambda: 3, label="pool")
    metrics.sample_windows(lambda: {"api": (WindowUsage(170, 10.0, 42, 42, 0.0),)})
    async with await start_metrics_server(0, metrics.registry) as server:
        feed(
            metrics,
            [
                JobsQueued("laps", 5),
                RequestStarted("laps", "GET", "https://x/", 1),
                RequestStarted("laps", "GET", "https://x/", 1),
                finished("laps", 200, wait=0.5),
                finished("laps", 429),
                RequestRetried("laps", "https://x/", "HTTP 429", 1, 1.0, 429),
            ],
        )
        first = await scrape(server.url)
        assert first[("asyncingest_requests_total", (("endpoint", "laps"), ("status", "200")))] == 1
        assert first[("asyncingest_requests_total", (("endpoint", "laps"), ("status", "429")))] == 1
        assert first[("asyncingest_retries_total", (("endpoint", "laps"),))] == 1
        assert first[("asyncingest_limiter_wait_seconds_total", (("endpoint", "laps"),))] == 0.5
        assert first[("asyncingest_requests_in_flight", (("endpoint", "laps"),))] == 0
        assert first[("asyncingest_queue_depth", (("endpoint", "laps"),))] == 7
        assert first[("asyncingest_pool_workers_busy", ())] == 3
        window = (("limiter", "api"), ("window", "170/10s"))
        assert first[("asyncingest_rate_window_used", window)] == 42
        assert first[("asyncingest_rate_window_limit", window)] == 170
        assert first[("asyncingest_request_duration_seconds_count", (("endpoint", "laps"),))] == 2

        queue["laps"] = 2
        feed(
            metrics,
            [
                RequestStarted("laps", "GET", "https://x/", 2),
                RecordsWritten("laps", 10),
                FileCommitted("laps", "out/laps/part-00000.parquet"),
                RequestFailed("laps", "https://x/", "gave up", 5, 503),
                JobFinished("laps"),
                RatePaused("api", "laps", 30.0, "HTTP 429", True),
                BreakerChanged("laps", "open", "closed", 5, 30.0),
            ],
        )
        second = await scrape(server.url)
    laps = (("endpoint", "laps"),)
    assert second[("asyncingest_requests_in_flight", laps)] == 1
    assert second[("asyncingest_records_written_total", laps)] == 10
    assert second[("asyncingest_files_committed_total", laps)] == 1
    assert second[("asyncingest_failed_requests_total", laps)] == 1
    assert second[("asyncingest_jobs_finished_total", laps)] == 1
    assert second[("asyncingest_queue_depth", laps)] == 2
    throttled = (("cause", "throttled"), ("limiter", "api"))
    assert second[("asyncingest_rate_pauses_total", throttled)] == 1
    assert second[("asyncingest_rate_paused_seconds_total", (("limiter", "api"),))] == 30
    assert second[("asyncingest_circuit_breaker_state", (*laps, ("state", "open")))] == 1
    assert second[("asyncingest_circuit_breaker_state", (*laps, ("state", "closed")))] == 0


async def test_server_shuts_down_with_the_run(no_proxy_env: None) -> None:
    metrics = Metrics()
    server = await start_metrics_server(0, metrics.registry)
    url = server.url
    await server.close()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


def test_in_flight_can_be_sampled_instead_of_counted() -> None:
    metrics = Metrics(in_flight=lambda: {"laps": 4})
    metrics(RequestStarted("laps", "GET", "https://x/", 1))
    body, _ = exposition(metrics.registry)
    assert parse(body.decode())[("asyncingest_requests_in_flight", (("endpoint", "laps"),))] == 4


def test_in_flight_never_goes_negative_without_started_events() -> None:
    metrics = Metrics()
    metrics(finished("laps", 200))
    samples = parse(exposition(metrics.registry)[0].decode())
    assert samples.get(("asyncingest_requests_in_flight", (("endpoint", "laps"),)), 0) == 0


def test_network_failures_have_status_none() -> None:
    metrics = Metrics()
    metrics(finished("laps", None))
    samples = parse(exposition(metrics.registry)[0].decode())
    assert samples[("asyncingest_requests_total", (("endpoint", "laps"), ("status", "none")))] == 1


def test_a_failing_sampler_does_not_break_the_scrape() -> None:
    metrics = Metrics()

    def broken() -> float:
        raise RuntimeError("gone")

    metrics.sample("queue_depth", "Jobs waiting", broken)
    metrics(finished("laps", 200))
    samples = parse(exposition(metrics.registry)[0].decode())
    assert ("asyncingest_requests_total", (("endpoint", "laps"), ("status", "200"))) in samples


def test_two_runs_in_one_process_do_not_clash() -> None:
    a, b = Metrics(), Metrics()
    a(finished("laps", 200))
    samples = parse(exposition(b.registry)[0].decode())
    assert ("asyncingest_requests_total", (("endpoint", "laps"), ("status", "200"))) not in samples


def test_openmetrics_when_asked() -> None:
    metrics = Metrics()
    body, content_type = exposition(metrics.registry, "application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_missing_prometheus_client_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MetricsUnavailable, match=r"pip install 'asyncingest\[metrics\]'"):
        Metrics()


def test_budgets_used_up_are_counted() -> None:
    metrics = Metrics()
    metrics(BudgetExhausted("users", "api", 3600.0, 1_700_006_400.0, "used up"))
    samples = parse(exposition(metrics.registry)[0].decode())
    assert samples[("asyncingest_budget_exhausted_total", (("limiter", "api"),))] == 1
