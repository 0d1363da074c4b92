"""``python -m asyncingest``: a thin layer over the public API.

Exit codes: 0 everything fetched and written; 1 finished, but some requests or records
failed (the summary names them); 2 bad config or usage; 3 stopped before the end with state
saved (run the same command to resume); 130 interrupted in sync mode.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ._config import PipelineConfig
from ._errors import ConfigError, Problem
from ._events import Subscriber
from ._loading import load_config
from ._operate import Operator, run_operated
from ._plan import describe_plan
from ._progress import schema_lines, status_lines, summary_table
from ._progress_model import ProgressModel
from ._result import RunResult
from ._tuning import tune_gc

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m asyncingest",
        description="Pull data out of rate-limited HTTP APIs into Parquet.",
        epilog="Exit codes: 0 all fetched; 1 finished with failures (dead letters); 2 bad "
        "config or usage; 3 stopped early, state saved (run the same command to resume).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a pipeline config (resumes an interrupted run in the same output)",
        description="Run a pipeline config. Running the same command again after an "
        "interruption (Ctrl-C, SIGTERM, a crash, SIGKILL) resumes where the last checkpoint "
        "left off: every record ends up in Parquet exactly once.",
    )
    run.add_argument("config", help="pipeline config (YAML or JSON)")
    _run_options(run)
    _set_option(run)
    run.add_argument(
        "--fresh",
        action="store_true",
        help="start over: delete this output's data, dead letters and checkpoint first",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="request the dead-lettered requests of the last run again, then finish",
    )
    run.add_argument(
        "--mode",
        choices=["async", "sync"],
        default="async",
        help="async (default): one event loop; sync: the classic way, a thread pool of "
        "requests sessions (for comparison; no checkpoints)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="threads in sync mode (default: the sum of the endpoints' requests in flight)",
    )

    val = sub.add_parser(
        "validate",
        help="check a config and print the plan",
        description="Check a config: print every problem (exit 2) or the plan.",
    )
    val.add_argument("config")
    _set_option(val)

    plan = sub.add_parser(
        "plan",
        help="estimate how many requests a job makes and how long its budget makes it take",
        description="Estimate requests and duration from input file sizes and, where children "
        "depend on parents, a small sample of parent records fetched from the API.",
    )
    plan.add_argument("config")
    _set_option(plan)
    plan.add_argument("--sample", type=int, default=3, help="parent walks to sample (default 3)")
    plan.add_argument("--no-sample", action="store_true", help="do not call the API")

    demo = sub.add_parser(
        "demo",
        help="run the bundled demo against the bundled mock API",
        description="Start the mock API on a free loopback port and run the demo "
        "config against it. No network needed.",
    )
    _run_options(demo)

    mock = sub.add_parser(
        "mock-api",
        help="serve the bundled mock API",
        description="Serve the bundled mock API until interrupted.",
    )
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8000)
    mock.add_argument("--preset", choices=["demo", "small"], default="demo")
    mock.add_argument("--seed", type=int, default=None)
    mock.add_argument("--latency-ms", type=float, default=None, help="fixed latency per request")
    mock.add_argument(
        "--fault-rate", type=float, default=None, help="share of requests given a fault"
    )
    mock.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        metavar="N/SECONDS",
        help="server-side sliding window, e.g. 170/10 (repeatable)",
    )
    mock.add_argument(
        "--token", default=None, help="require this token (bearer, X-API-Key or api_key)"
    )
    return p


def _set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a config value, e.g. --set api.concurrency.requests_per_endpoint=32 "
        "or --set endpoints.laps.params.limit=50 (repeatable)",
    )


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", "-o", default=None, help="output directory (default: output.directory)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="when output is not a terminal: a progress line per endpoint this often",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="debug logs every request (method, URL with secrets redacted, status, attempt, "
        "duration, bytes)",
    )
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on this port (needs asyncingest[metrics])",
    )
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after Ctrl-C or SIGTERM, how long requests in flight may take (default 30)",
    )


def _operator(
    args: argparse.Namespace, title: str = "asyncingest", fresh: bool = False
) -> Operator:
    return Operator(
        output=args.output,
        quiet=args.quiet,
        fresh=fresh or getattr(args, "fresh", False),
        retry_failed=getattr(args, "retry_failed", False),
        stop_timeout=args.stop_timeout,
        log_level=args.log_level,
        log_format=args.log_format,
        progress_every=args.progress_every,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        title=title,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    if not console.is_terminal:
        # Logs and CI: do not squeeze tables into 80 columns.
        console = Console(stderr=True, width=max(console.width, 132))
    try:
        if args.command == "validate":
            cfg = load_config(args.config, args.overrides)
            Console(soft_wrap=True).print(describe_plan(cfg, source=args.config))
            return EXIT_OK
        if args.command == "plan":
            from ._sample import plan_command

            cfg = load_config(args.config, args.overrides)
            Console(soft_wrap=True).print(
                asyncio.run(plan_command(cfg, sample=0 if args.no_sample else args.sample))
            )
            return EXIT_OK
        if args.command == "run":
            cfg = load_config(args.config, args.overrides)
            tune_gc()
            if args.mode == "sync":
                return _run_sync(cfg, args, console)
            try:
                result, model = asyncio.run(run_operated(cfg, _operator(args), console))
            except asyncio.CancelledError:
                _print_resume(console, args, cancelled=True)
                return EXIT_STOPPED
            code = _finish(result, console, model)
            if result.stopped:
                _print_resume(console, args, why=result.note)
            return code
        if args.command == "demo":
            from ._demo import demo_settings, run_demo

            op = _operator(args, "demo", fresh=True)
            (result, model), server = asyncio.run(
                run_demo(args.output, lambda cfg: run_operated(cfg, op, console))
            )
            code = _finish(result, console, model)
            limits = ", ".join(f"{n}/{w:g}s" for n, w in demo_settings().rate_limits)
            console.print(
                f"mock API, as the server counted: {server.requests:,} requests, "
                f"{server.sent_429:,} 429s, {sum(server.faults.values()):,} injected faults; "
                f"window {limits}: peak {server.max_in_window}, {server.violations} violations",
                highlight=False,
            )
            return code
        if args.command == "mock-api":
            from ._mockapi_cli import serve_from_args

            asyncio.run(serve_from_args(args, console))
            return EXIT_OK
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    return EXIT_USAGE


def _run_sync(cfg: PipelineConfig, args: argparse.Namespace, console: Console) -> int:
    if args.retry_failed:
        raise ConfigError("--retry-failed", [Problem("--mode sync", "sync mode does not resume")])
    from ._logsub import configure_logging
    from ._progress import PlainProgress
    from ._sync import run_sync

    model = ProgressModel()
    subscribers: list[Subscriber] = [model, configure_logging(args.log_level, args.log_format)]
    if not args.quiet:
        subscribers.append(PlainProgress(console.file, model, every=args.progress_every))
    result = run_sync(
        cfg,
        output=args.output,
        subscribers=subscribers,
        max_workers=args.workers,
        fresh=args.fresh,
    )
    return _finish(result, console, model)


def _print_resume(
    console: Console, args: argparse.Namespace, cancelled: bool = False, why: str = ""
) -> None:
    how = "stopped at once" if cancelled else f"stopped{f' ({why})' if why else ''}"
    cmd = ["python -m asyncingest run", shlex.quote(args.config)]
    if args.output:
        cmd += ["--output", shlex.quote(args.output)]
    cmd += [f"--set {shlex.quote(o)}" for o in args.overrides]
    console.print(f"{how}; to resume: {' '.join(cmd)}", highlight=False, markup=False)


def _finish(result: RunResult, console: Console, model: ProgressModel | None = None) -> int:
    if result.note == "already complete":
        console.print(
            f"{result.output}: this run is already complete; --fresh runs it again, "
            "--retry-failed re-requests its dead letters",
            highlight=False,
        )
        return EXIT_OK
    console.print(summary_table(result, model))
    statuses = status_lines(result)
    if statuses:
        console.print("responses by status (retried where retryable):", highlight=False)
        for line in statuses:
            console.print(f"  {line}", highlight=False, markup=False)
    for line in schema_lines(result):
        console.print(line, highlight=False, markup=False)
    for e in result.endpoints:
        if not e.ok:
            console.print(
                f"[red]{e.name}[/]: {e.failed_requests} failed requests, "
                f"{e.records_rejected} rejected records",
                highlight=False,
            )
            for reason in e.first_errors:
                console.print(f"    {reason}", highlight=False, markup=False)
    if any(not e.ok for e in result.endpoints):
        console.print(f"dead letters: {Path(result.output) / '_dead_letter'}", highlight=False)
    console.print(f"output: {Path(result.output).resolve()}", highlight=False)
    report = Path(result.output) / "_asyncingest" / "runs" / f"{result.run_id}.json"
    if report.exists():
        console.print(f"run report: {report}", highlight=False)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
