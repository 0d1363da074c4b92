"""What the CLI attaches to a run for the people operating it: the progress display, logs,
Prometheus metrics and signal handling. All of it subscribes to the engine's events or
samples its state; the engine itself runs the same without any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..config.models import PipelineConfig
from ..core.events import Subscriber
from ..core.result import RunResult
from ..core.snapshot import WindowUsage
from ..engine.pipeline import Pipeline
from ..errors import ConfigError, Problem
from .logsub import configure_logging
from .progress import make_display
from .progress_model import ProgressModel
from .reporter import Reporter


@dataclass(frozen=True)
class Operator:
    """The CLI's run options (parsed once from argv)."""

    output: str | None = None
    quiet: bool = False
    fresh: bool = False
    retry_failed: bool = False
    full_refresh: tuple[str, ...] = ()  # incremental endpoints refetched from initial
    stop_timeout: float = 30.0
    log_level: str = "warning"
    log_format: Literal["text", "json"] = "text"
    progress_every: float = 10.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    title: str = "asyncingest"


async def run_operated(
    cfg: PipelineConfig, op: Operator, out: Reporter
) -> tuple[RunResult, ProgressModel]:
    """Run ``cfg`` with the display, logs, metrics and signal handlers ``op`` asks for;
    messages go through ``out`` (text, quiet or JSON lines)."""
    pipeline = Pipeline(
        cfg,
        output=op.output,
        fresh=op.fresh,
        retry_failed=op.retry_failed,
        full_refresh=op.full_refresh,
    )

    def budget() -> Mapping[str, Sequence[WindowUsage]]:
        return pipeline.snapshot().windows

    # Counters from snapshots at the display's refresh rate; events only for what they show.
    model = ProgressModel(snapshot=pipeline.snapshot)
    # JSON logs on stderr stay parseable: no plain progress lines between them.
    quiet = op.quiet or op.log_format == "json"
    console = out.console
    display = make_display(console, model, quiet=quiet, every=op.progress_every, title=op.title)
    # The display feeds the model (and prints an endpoint's "done" line at once); subscribing
    # the model as well would count every event twice.
    subscribers: list[Subscriber] = [model if display is None else display]
    subscribers.append(configure_logging(op.log_level, op.log_format, everything=True))
    metrics_server = None
    if op.metrics_port is not None:
        from .metrics import Metrics, start_metrics_server

        def in_flight_by_endpoint() -> dict[str, float]:
            return {e.name: e.in_flight for e in pipeline.snapshot().endpoints}

        def queued_by_endpoint() -> dict[str, float]:
            return {e.name: e.queued for e in pipeline.snapshot().endpoints}

        metrics = Metrics(in_flight=in_flight_by_endpoint)
        metrics.sample(
            "queue_depth_jobs", "Jobs waiting in each endpoint's queue", queued_by_endpoint
        )
        metrics.sample_windows(budget)
        subscribers.append(metrics)
        try:
            metrics_server = await start_metrics_server(
                op.metrics_port, metrics.registry, host=op.metrics_host
            )
        except OSError as exc:  # the port is taken, or the host is not this machine's
            where = f"{op.metrics_host}:{op.metrics_port}"
            problem = Problem(where, f"cannot serve metrics: {exc}")
            raise ConfigError("--metrics-port", [problem]) from None
        out.say("metrics_serving", f"metrics: {metrics_server.url}", url=metrics_server.url)
    for sub in subscribers:
        pipeline.subscribe(sub)
    _install_signal_handlers(pipeline, out, op.stop_timeout)
    try:
        if display is None:
            return await _run(pipeline), model
        async with display:
            return await _run(pipeline), model
    finally:
        if metrics_server is not None:
            await metrics_server.close()


async def _run(pipeline: Pipeline) -> RunResult:
    await pipeline.start()
    return await pipeline.wait()


def _install_signal_handlers(pipeline: Pipeline, out: Reporter, deadline: float) -> None:
    """First SIGINT/SIGTERM: graceful stop (state saved). Second, or after ``deadline``
    seconds: stop at once (a cancel: requests in flight are dropped, what was fetched is saved
    by a last checkpoint, staging files are removed)."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopping: list[asyncio.Task[RunResult]] = []

    def hard_stop() -> None:
        out.say(
            "stopping_now",
            "stopping now; requests in flight are dropped, what was fetched is saved",
            "warning",
        )
        main.cancel()

    def on_signal(signame: str) -> None:
        if stopping:
            hard_stop()
            return
        out.say(
            "stopping",
            f"{signame}: finishing requests in flight (up to {deadline:g}s), "
            "then saving state; press Ctrl-C again to stop at once",
            "warning",
            signal=signame,
        )
        # The run's own end (or error) reaches the CLI through wait(); this task only asks.
        task = loop.create_task(pipeline.stop(), name="asyncingest-stop")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        stopping.append(task)
        loop.call_later(deadline, hard_stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
