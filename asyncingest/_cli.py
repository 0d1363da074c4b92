"""``python -m asyncingest``: a thin layer over the public API.

Exit codes: 0 everything fetched and written; 1 finished, but some requests or records
failed (the summary names them); 2 bad config or usage; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ._config import PipelineConfig
from ._display import LiveDisplay, PlainDisplay, summary_table
from ._engine import Engine
from ._errors import ConfigError
from ._events import Subscriber
from ._loading import load_config
from ._plan import describe_plan
from ._result import RunResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEMO_CONFIG = Path(__file__).parent / "_demo" / "demo.yaml"


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
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a config value, e.g. --set api.concurrency.requests_per_endpoint=32 "
        "or --set endpoints.laps.params.limit=50 (repeatable)",
    )

    val = sub.add_parser(
        "validate",
        help="check a config and print the plan",
        description="Check a config: print every problem (exit 2) or the plan.",
    )
    val.add_argument("config")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")

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


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", "-o", default=None, help="output directory (default: output.directory)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after Ctrl-C or SIGTERM, how long requests in flight may take (default 30)",
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
        if args.command == "run":
            cfg = load_config(args.config, args.overrides)
            try:
                result = asyncio.run(_run(cfg, args, console))
            except asyncio.CancelledError:
                _print_resume(console, args, cancelled=True)
                return EXIT_STOPPED
            code = _finish(result, console)
            if result.stopped:
                _print_resume(console, args, why=result.note)
            return code
        if args.command == "demo":
            from ._demo import demo_settings, run_demo

            result, server = asyncio.run(
                run_demo(args.output, lambda cfg: _run(cfg, args, console, "demo", fresh=True))
            )
            code = _finish(result, console)
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


async def _run(
    cfg: PipelineConfig,
    args: argparse.Namespace,
    console: Console,
    title: str = "asyncingest",
    *,
    fresh: bool = False,
) -> RunResult:
    subscribers: list[Subscriber] = []
    display: LiveDisplay | None = None
    if not args.quiet:
        if console.is_terminal:
            display = LiveDisplay(console, title)
            subscribers.append(display)
        else:
            subscribers.append(PlainDisplay(console.file))
    engine = Engine(
        cfg,
        output=getattr(args, "output", None),
        subscribers=subscribers,
        fresh=fresh or getattr(args, "fresh", False),
        retry_failed=getattr(args, "retry_failed", False),
    )
    _install_signal_handlers(engine, console, args.stop_timeout)
    if display is None:
        return await engine.run()
    with display:
        return await engine.run()


def _install_signal_handlers(engine: Engine, console: Console, deadline: float) -> None:
    """First SIGINT/SIGTERM: graceful stop (state saved). Second, or after ``deadline``
    seconds: stop at once; only complete files stay visible and the last checkpoint counts."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def hard_stop() -> None:
        console.print("[red]stopping now[/]; the last checkpoint is kept")
        main.cancel()

    def on_signal(signame: str) -> None:
        if engine.stopping:
            hard_stop()
            return
        console.print(
            f"[yellow]{signame}[/]: finishing requests in flight (up to {deadline:g}s), "
            "then saving state; press Ctrl-C again to stop at once",
            highlight=False,
        )
        engine.stop()
        loop.call_later(deadline, hard_stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)


def _print_resume(
    console: Console, args: argparse.Namespace, cancelled: bool = False, why: str = ""
) -> None:
    how = "stopped at once" if cancelled else f"stopped{f' ({why})' if why else ''}"
    cmd = ["python -m asyncingest run", shlex.quote(args.config)]
    if args.output:
        cmd += ["--output", shlex.quote(args.output)]
    cmd += [f"--set {shlex.quote(o)}" for o in args.overrides]
    console.print(f"{how}; to resume: {' '.join(cmd)}", highlight=False, markup=False)


def _finish(result: RunResult, console: Console) -> int:
    if result.note == "already complete":
        console.print(
            f"{result.output}: this run is already complete; --fresh runs it again, "
            "--retry-failed re-requests its dead letters",
            highlight=False,
        )
        return EXIT_OK
    console.print(summary_table(result))
    for e in result.endpoints:
        if not e.ok:
            console.print(
                f"[red]{e.name}[/]: {e.failed_requests} failed requests, "
                f"{e.records_rejected} rejected records",
                highlight=False,
            )
            for reason in e.first_errors:
                console.print(f"    {reason}", highlight=False, markup=False)
    if not result.ok:
        console.print(f"dead letters: {Path(result.output) / '_dead_letter'}", highlight=False)
    console.print(f"output: {Path(result.output).resolve()}", highlight=False)
    report = Path(result.output) / "_asyncingest" / "runs" / f"{result.run_id}.json"
    if report.exists():
        console.print(f"run report: {report}", highlight=False)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
