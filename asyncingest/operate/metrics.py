"""Prometheus metrics (the optional ``asyncingest[metrics]`` extra): an event subscriber that
updates counters, gauges sampled from run state at scrape time, and an exposition endpoint
served by aiohttp on the run's own event loop, so it stops with the run.

The core never imports this module (nor ``prometheus_client``); the CLI wires it when asked.
Each :class:`Metrics` has its own ``CollectorRegistry``, never the global one, so tests and
several runs in one process do not clash. Names follow the Prometheus conventions: a unit
suffix in base units (``_seconds``, ``_bytes``), ``_total`` on counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from ..core.events import (
    BreakerChanged,
    BudgetExhausted,
    ConcurrencyChanged,
    Event,
    FileCommitted,
    JobFinished,
    JobsQueued,
    RatePaused,
    RecordsRejected,
    RecordsWritten,
    RequestFailed,
    RequestFinished,
    RequestRetried,
    RequestStarted,
)
from ..core.snapshot import WindowUsage

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry, Gauge
    from prometheus_client.metrics_core import GaugeMetricFamily, Metric

__all__ = ["Metrics", "MetricsServer", "MetricsUnavailable", "exposition", "start_metrics_server"]

log = logging.getLogger("asyncingest")

NAMESPACE = "asyncingest"
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BREAKER_STATES = ("closed", "open", "half-open")
Sample = Callable[[], "float | Mapping[str, float]"]


class MetricsUnavailable(ImportError):
    """``--metrics-port`` without prometheus-client installed; the message says what to install."""

    def __init__(self) -> None:
        super().__init__(
            "Prometheus metrics need the prometheus-client package: "
            "pip install 'asyncingest[metrics]'"
        )


def require_prometheus() -> None:
    """Raise :class:`MetricsUnavailable` unless prometheus-client can be imported."""
    try:
        import prometheus_client  # noqa: F401  # only to say clearly that it is missing
    except ImportError:
        raise MetricsUnavailable() from None


class Metrics:
    """The run's metrics: call it with each event; register samplers for live state.

    ``in_flight``, when given, is sampled at scrape time for ``requests_in_flight``
    (e.g. ``lambda: {n: r.in_flight for n, r in runners.items()}``); otherwise the gauge
    follows ``RequestStarted`` / ``RequestFinished`` events.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        in_flight: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        require_prometheus()
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r, ep = self.registry, ["endpoint"]

        def counter(name: str, doc: str, labels: Sequence[str] = ("endpoint",)) -> Counter:
            return Counter(f"{NAMESPACE}_{name}", doc, list(labels), registry=r)

        self.requests = counter("requests", "Request attempts, by status", ("endpoint", "status"))
        self.retries = counter("retries", "Attempts that failed and were retried")
        self.failed = counter("failed_requests", "Requests that gave up (dead-lettered)")
        self.limiter_wait = counter("limiter_wait_seconds", "Seconds spent waiting on limits")
        self.response_bytes = counter("response_bytes", "Response body bytes received")
        self.records = counter("records_written", "Records written to Parquet")
        self.rejected = counter("records_rejected", "Records refused (dead-lettered)")
        self.files = counter("files_committed", "Parquet files committed")
        self.jobs_queued = counter("jobs_queued", "Jobs (walks) queued")
        self.jobs_finished = counter("jobs_finished", "Jobs (walks) finished")
        self.pauses = counter("rate_pauses", "Pauses of a shared budget", ("limiter", "cause"))
        self.paused_seconds = counter("rate_paused_seconds", "Seconds of pause", ("limiter",))
        self.exhausted = counter("budget_exhausted", "Budgets found used up", ("limiter",))
        self.duration = Histogram(
            f"{NAMESPACE}_request_duration_seconds",
            "Time from sending a request to its complete answer",
            ep,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.breaker = Gauge(
            f"{NAMESPACE}_circuit_breaker_state",
            "1 for the state each endpoint's circuit breaker is in",
            ["endpoint", "state"],
            registry=r,
        )
        self.concurrency = Gauge(
            f"{NAMESPACE}_concurrency_limit", "Adaptive limit of requests in flight", ep, registry=r
        )
        self._in_flight: dict[str, int] = {}
        self._in_flight_gauge: Gauge | None = None
        if in_flight is not None:
            self.sample("requests_in_flight", "Requests sent and not yet answered", in_flight)
        else:
            self._in_flight_gauge = Gauge(
                f"{NAMESPACE}_requests_in_flight",
                "Requests sent and not yet answered",
                ep,
                registry=r,
            )

    # -- sampled gauges ------------------------------------------------------------------------

    def sample(self, name: str, documentation: str, fn: Sample, *, label: str = "endpoint") -> None:
        """A gauge read from ``fn()`` at each scrape: a number, or a mapping label value ->
        number (e.g. ``sample("queue_depth", "Jobs waiting", lambda: {n: q.qsize() ...})``)."""
        full = name if name.startswith(f"{NAMESPACE}_") else f"{NAMESPACE}_{name}"
        self.registry.register(_Sampled(full, documentation, label, fn))

    def sample_windows(self, fn: Callable[[], Mapping[str, Sequence[WindowUsage]]]) -> None:
        """Rate-window budgets at each scrape: ``fn()`` maps a limiter name to its
        ``SlidingWindowLimiter.usage()``."""
        self.registry.register(_Windows(fn))

    # -- events --------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        match event:
            case RequestFinished(endpoint=name):
                status = str(event.status) if event.status is not None else "none"
                self.requests.labels(name, status).inc()
                self.limiter_wait.labels(name).inc(event.limiter_wait)
                self.response_bytes.labels(name).inc(event.nbytes)
                self.duration.labels(name).observe(event.duration)
                if self._in_flight_gauge is not None and self._in_flight.get(name, 0) > 0:
                    self._in_flight[name] -= 1
                    self._in_flight_gauge.labels(name).dec()
            case RequestStarted(endpoint=name):
                if self._in_flight_gauge is not None:
                    self._in_flight[name] = self._in_flight.get(name, 0) + 1
                    self._in_flight_gauge.labels(name).inc()
            case RequestRetried(endpoint=name):
                self.retries.labels(name).inc()
            case RequestFailed(endpoint=name):
                self.failed.labels(name).inc()
            case RecordsWritten(endpoint=name, count=n):
                self.records.labels(name).inc(n)
            case RecordsRejected(endpoint=name, count=n):
                self.rejected.labels(name).inc(n)
            case FileCommitted(endpoint=name):
                self.files.labels(name).inc()
            case JobsQueued(endpoint=name, count=n):
                self.jobs_queued.labels(name).inc(n)
            case JobFinished(endpoint=name):
                self.jobs_finished.labels(name).inc()
            case RatePaused(limiter=limiter):
                cause = "throttled" if event.throttled else "quota"
                self.pauses.labels(limiter, cause).inc()
                self.paused_seconds.labels(limiter).inc(event.seconds)
            case BudgetExhausted(limiter=limiter):
                self.exhausted.labels(limiter).inc()
            case BreakerChanged(endpoint=name, state=state):
                for each in BREAKER_STATES:
                    self.breaker.labels(name, each).set(1.0 if each == state else 0.0)
            case ConcurrencyChanged(endpoint=name, limit=limit):
                self.concurrency.labels(name).set(limit)


class _Sampled:
    def __init__(self, name: str, documentation: str, label: str, fn: Sample) -> None:
        self.name, self.documentation, self.label, self.fn = name, documentation, label, fn

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            value = self.fn()
        except Exception:  # a scrape must not fail because one sampler did
            log.exception("metrics sampler %s failed", self.name)
            return
        if isinstance(value, Mapping):
            for key, number in sorted(value.items()):
                family.add_metric([str(key)], float(number))
        else:
            family.add_metric([], float(value))
        yield family

    def _family(self) -> GaugeMetricFamily:
        from prometheus_client.metrics_core import GaugeMetricFamily

        return GaugeMetricFamily(self.name, self.documentation, labels=[self.label])


class _Windows:
    _NAMES = (
        (f"{NAMESPACE}_rate_window_used", "Requests counted in each rate window now"),
        (f"{NAMESPACE}_rate_window_limit", "Requests each rate window allows"),
        (f"{NAMESPACE}_rate_window_seconds", "Length of each rate window"),
    )

    def __init__(self, fn: Callable[[], Mapping[str, Sequence[WindowUsage]]]) -> None:
        self.fn = fn

    def _families(self) -> list[GaugeMetricFamily]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        return [
            GaugeMetricFamily(name, doc, labels=["limiter", "window"]) for name, doc in self._NAMES
        ]

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        used, limit, seconds = self._families()
        try:
            usage = self.fn()
        except Exception:  # a scrape must not fail because one sampler did
            log.exception("metrics sampler for rate windows failed")
            return
        for limiter, windows in sorted(usage.items()):
            for w in windows:
                labels = [limiter, f"{w.limit}/{w.seconds:g}s"]
                used.add_metric(labels, float(w.used))
                limit.add_metric(labels, float(w.limit))
                seconds.add_metric(labels, float(w.seconds))
        yield from (used, limit, seconds)


class MetricsServer:
    """The exposition endpoint (``GET /metrics``) while the run lasts."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """Where Prometheus scrapes: ``http://host:port/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    async def close(self) -> None:
        """Stop serving and free the port."""
        await self._runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"MetricsServer({self.url})"


def exposition(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The scrape body and its content type (OpenMetrics when ``accept`` asks for it)."""
    require_prometheus()
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


async def start_metrics_server(
    port: int, registry: CollectorRegistry, *, host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve ``registry`` (``Metrics.registry``) on ``http://host:port/metrics`` from the
    running loop (``port`` 0 picks a free one; ``server.port`` tells which)."""
    from aiohttp import web

    async def scrape(request: web.Request) -> web.Response:
        body, content_type = exposition(registry, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return MetricsServer(runner, host, int(bound))
