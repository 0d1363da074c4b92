"""``python -m asyncingest``: a thin layer over the public API.

Exit codes: 0 everything fetched and written; 1 finished, but some requests or records
failed (the summary names them; also a rerun of a finished run whose dead letters remain);
2 bad config or usage, or another run holds the output folder; 3 stopped before the end with
state saved (run the same command to resume); 4 the environment failed (disk full, output not
writable, a damaged checkpoint): committed files are intact, fix the cause and run the same
command (``--fresh`` for a damaged checkpoint); 130 interrupted in sync mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from ..config.loading import load_config
from ..config.models import PipelineConfig
from ..core.events import Subscriber
from ..core.result import RunResult
from ..errors import ConfigError, EnvironmentFailure, OutputLocked, Problem
from ..operate.logsub import LogFormat, json_line
from ..operate.progress_model import ProgressModel
from ..operate.reporter import Reporter
from ..operate.run import Operator, run_operated
from ..operate.tuning import tune_gc
from ..operate.validate_report import describe_plan

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_ENVIRONMENT = 4


def _number(
    kind: Callable[[str], Any], ok: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that also passes ``ok``; argparse names the option
    and exits 2 when it does not."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # what argparse shows if the type itself fails
    return parse


_POSITIVE_INT = _number(int, lambda v: v >= 1, "a whole number >= 1")
_COUNT = _number(int, lambda v: v >= 0, "a whole number >= 0")
_PORT = _number(int, lambda v: 0 <= v <= 65535, "a port number 0-65535")
_SECONDS = _number(float, lambda v: math.isfinite(v) and v > 0, "a number of seconds > 0")
_SECONDS_OR_0 = _number(float, lambda v: math.isfinite(v) and v >= 0, "a number of seconds >= 0")
_SHARE = _number(float, lambda v: 0 <= v <= 1, "a share between 0 and 1")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m asyncingest",
        description="Pull data out of rate-limited HTTP APIs into Parquet.",
        epilog="Exit codes: 0 all fetched; 1 finished with failures (dead letters); 2 bad "
        "config or usage, or the output folder is in use by another run; 3 stopped early, "
        "state saved (run the same command to resume); 4 environment failure (disk full, "
        "output not writable, damaged checkpoint; committed files intact).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a pipeline config (resumes an interrupted run in the same output)",
        description="Run a pipeline config. Running the same command again after an "
        "interruption (Ctrl-C, SIGTERM, a crash, SIGKILL) resumes where the last checkpoint "
        "left off: every record ends up in Parquet exactly once. With an incremental "
        "endpoint, running it on a finished output runs the next increment: only what changed "
        "since the last one.",
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
        "--full-refresh",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="incremental configs: refetch this endpoint from its incremental.initial in the "
        "next increment (its current table is replaced); repeatable",
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
        type=_POSITIVE_INT,
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
        description="Estimate requests (with a range) and duration from input file sizes and "
        "walks sampled from the API through the engine's own request path: root walks to "
        "their end (or to the total the API reports), a few walks of every other endpoint.",
    )
    plan.add_argument("config")
    _set_option(plan)
    plan.add_argument(
        "--sample", type=_COUNT, default=5, help="walks to sample per endpoint (default 5)"
    )
    plan.add_argument(
        "--sample-pages",
        type=_POSITIVE_INT,
        default=100,
        help="pages to follow per sampled walk (default 100)",
    )
    plan.add_argument("--no-sample", action="store_true", help="do not call the API")
    plan.add_argument("--json", action="store_true", help="print the estimate as JSON")

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
    mock.add_argument("--port", type=_PORT, default=8000)
    mock.add_argument("--preset", choices=["demo", "small"], default="demo")
    mock.add_argument("--seed", type=int, default=None)
    mock.add_argument(
        "--latency-ms", type=_SECONDS_OR_0, default=None, help="fixed latency per request"
    )
    mock.add_argument(
        "--fault-rate", type=_SHARE, default=None, help="share of requests given a fault"
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
    from .scale import add_parsers

    add_parsers(sub, _POSITIVE_INT, _PORT)
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
    p.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress display; errors and one final summary line only",
    )
    p.add_argument(
        "--progress-every",
        type=_SECONDS,
        default=10.0,
        metavar="SECONDS",
        help="when output is not a terminal: a progress line per endpoint this often",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="default warning (error with --quiet); debug logs every request (method, URL "
        "with secrets redacted, status, attempt, duration, bytes)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: every line on stderr is a JSON object, the summary included",
    )
    p.add_argument(
        "--metrics-port",
        type=_PORT,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on this port (needs asyncingest[metrics])",
    )
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument(
        "--stop-timeout",
        type=_SECONDS_OR_0,
        default=None,
        metavar="SECONDS",
        help="after Ctrl-C or SIGTERM, how long requests in flight may take (default 30)",
    )


def _log_level(args: argparse.Namespace) -> str:
    """``--log-level``, else warning, or error under ``--quiet`` (errors and the summary)."""
    if args.log_level is not None:
        return str(args.log_level)
    return "error" if args.quiet else "warning"


def _operator(
    args: argparse.Namespace, title: str = "asyncingest", fresh: bool = False
) -> Operator:
    return Operator(
        output=args.output,
        quiet=args.quiet,
        fresh=fresh or getattr(args, "fresh", False),
        retry_failed=getattr(args, "retry_failed", False),
        full_refresh=tuple(getattr(args, "full_refresh", ())),
        stop_timeout=30.0 if args.stop_timeout is None else args.stop_timeout,
        log_level=_log_level(args),
        log_format=args.log_format,
        progress_every=args.progress_every,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        title=title,
    )


def _console() -> Console:
    console = Console(stderr=True)
    if not console.is_terminal:
        # Logs and CI: do not squeeze tables into 80 columns.
        console = Console(stderr=True, width=max(console.width, 132))
    return console


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit code (see the
    module docstring); expected errors become one message, never a traceback.
    """
    args = _parse(argv)
    fmt: LogFormat = "json" if getattr(args, "log_format", "text") == "json" else "text"
    out = Reporter(_console(), fmt, quiet=getattr(args, "quiet", False))
    try:
        return _command(args, out)
    except ConfigError as exc:
        out.error(
            "usage_error",
            exc.render(),
            source=exc.source,
            problems=[{"location": p.location, "message": p.message} for p in exc.problems],
        )
        return EXIT_USAGE
    except OutputLocked as exc:
        out.error("output_locked", str(exc), output=exc.output, holder=exc.holder)
        return EXIT_USAGE
    except EnvironmentFailure as exc:
        out.error("environment_failure", str(exc), path=exc.path, cause=exc.cause, hint=exc.hint)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        out.say("interrupted", "interrupted", "warning")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not out.json:
            raise
        # A bug or an environment failure: still one JSON line, with the traceback inside.
        import traceback

        out.error("crash", f"{type(exc).__name__}: {exc}", exception=traceback.format_exc())
        return EXIT_FAILED


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse's own usage errors (exit 2) stay as they are, except under
    ``--log-format json``, where the error becomes one JSON line too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_json = "--log-format=json" in argv or any(
        a == "--log-format" and b == "json" for a, b in itertools.pairwise(argv)
    )
    if not wants_json:
        return _parser().parse_args(argv)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return _parser().parse_args(argv)
    except SystemExit as exc:
        text = captured.getvalue().strip()
        if exc.code:
            message = text.splitlines()[-1] if text else "bad usage"
            sys.stderr.write(json_line("error", "usage_error", message, logger="asyncingest.cli"))
            sys.stderr.write("\n")
        raise


def _command(args: argparse.Namespace, out: Reporter) -> int:
    if args.command == "validate":
        cfg = load_config(args.config, args.overrides)
        Console(soft_wrap=True).print(describe_plan(cfg, source=args.config))
        return EXIT_OK
    if args.command == "plan":
        from ..operate.sample import plan

        cfg = load_config(args.config, args.overrides)
        walks = 0 if args.no_sample else args.sample
        est = asyncio.run(plan(cfg, walks=walks, max_pages=args.sample_pages))
        if args.json:
            print(orjson.dumps(est.to_dict()).decode())
        else:
            Console(soft_wrap=True).print(est)
        return EXIT_OK
    if args.command == "run":
        return _run(args, out)
    if args.command == "demo":
        return _demo(args, out)
    if args.command in ("submit", "worker", "status"):
        from .scale import command

        return command(args, out)
    if args.command == "mock-api":
        from .mockapi import serve_from_args

        try:
            asyncio.run(serve_from_args(args, out.console))
        except OSError as exc:  # the port is taken, the host is not ours
            where = f"{args.host}:{args.port}"
            raise ConfigError("mock-api", [Problem(where, f"cannot listen: {exc}")]) from None
        return EXIT_OK
    return EXIT_USAGE


def _run(args: argparse.Namespace, out: Reporter) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.output.format == "none":  # the records would go nowhere
        raise ConfigError(
            args.config,
            [
                Problem(
                    "output.format",
                    "none delivers records only to Pipeline.batches() in a program; "
                    "the command line writes Parquet (format: parquet)",
                )
            ],
        )
    queued = [e.name for e in cfg.endpoints if e.from_queue is not None]
    if queued:
        raise ConfigError(
            args.config,
            [
                Problem(
                    f"endpoints[{queued[0]}].from_queue",
                    "a queue is read by the scale-out worker: python -m asyncingest worker "
                    "--config FILE --broker amqp://...",
                )
            ],
        )
    check_output(args.output, cfg)
    check_options(args)
    tune_gc()
    if args.mode == "sync":
        return _run_sync(cfg, args, out)
    try:
        result, model = asyncio.run(run_operated(cfg, _operator(args), out))
    except asyncio.CancelledError:
        out.stopped_at_once(resume_command(args))
        return EXIT_STOPPED
    return _finish(result, out, model, resume_command(args) if result.stopped else None)


def _demo(args: argparse.Namespace, out: Reporter) -> int:
    from ..demo import demo_settings, run_demo

    check_output(args.output, None)
    check_options(args)
    op = _operator(args, "demo", fresh=True)
    (result, model), server = asyncio.run(
        run_demo(args.output, lambda cfg: run_operated(cfg, op, out))
    )
    limits = ", ".join(f"{n}/{w:g}s" for n, w in demo_settings().rate_limits)
    out.say(
        "mock_api_counts",
        f"mock API, as the server counted: {server.requests:,} requests, "
        f"{server.sent_429:,} 429s, {sum(server.faults.values()):,} injected faults; "
        f"window {limits}: peak {server.max_in_window}, {server.violations} violations",
        requests=server.requests,
        sent_429=server.sent_429,
        faults=sum(server.faults.values()),
        peak_in_window=server.max_in_window,
        violations=server.violations,
    )
    return _finish(result, out, model)  # the summary last, in every voice


def check_options(args: argparse.Namespace) -> None:
    """Options that parse but do not fit together: refused, never silently ignored."""
    problems = []
    if args.metrics_port is not None:
        from ..operate.metrics import MetricsUnavailable, require_prometheus

        try:
            require_prometheus()
        except MetricsUnavailable:
            problems.append(
                Problem(
                    "--metrics-port",
                    "Prometheus metrics need the metrics extra: pip install 'asyncingest[metrics]'",
                )
            )
    if getattr(args, "fresh", False) and getattr(args, "full_refresh", None):
        problems.append(
            Problem("--full-refresh", "--fresh starts over: every endpoint is fetched from initial")
        )
    if getattr(args, "fresh", False) and getattr(args, "retry_failed", False):
        problems.append(
            Problem("--fresh", "--fresh deletes the dead letters --retry-failed would ask again")
        )
    if getattr(args, "mode", "async") == "sync":
        for flag, value in (
            ("--retry-failed", args.retry_failed),
            ("--full-refresh", bool(args.full_refresh)),
            ("--metrics-port", args.metrics_port),
            ("--stop-timeout", args.stop_timeout),
        ):
            if value is not None and value is not False:  # 0 is a port
                problems.append(Problem(flag, "not available in sync mode (see docs/sync-mode.md)"))
    elif getattr(args, "workers", None) is not None:
        problems.append(Problem("--workers", "only used with --mode sync"))
    if problems:
        raise ConfigError("command line", problems)


def check_output(option: str | None, cfg: PipelineConfig | None) -> None:
    """The output folder can be made: nothing on its way is a file (a mistyped path)."""
    if option is not None and not option.strip():
        raise ConfigError("command line", [Problem("--output", "is empty; name a folder")])
    if option is None and cfg is None:
        return
    where = "--output" if option is not None else "output.directory"
    folder = Path(option if option is not None else cfg.output.directory)  # type: ignore[union-attr]
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                what = "is" if part == folder else f"is inside {part}, which is"
                raise ConfigError(
                    "command line" if option is not None else "config",
                    [Problem(where, f"{folder} {what} a file, not a folder")],
                )
            return


def _run_sync(cfg: PipelineConfig, args: argparse.Namespace, out: Reporter) -> int:
    from ..operate.logsub import configure_logging
    from ..operate.progress import PlainProgress
    from ..sync import run_sync

    model = ProgressModel()
    logs = configure_logging(_log_level(args), args.log_format, everything=True)
    subscribers: list[Subscriber] = [logs]
    if args.quiet or out.json:
        subscribers.append(model)
    else:  # the display feeds the model: subscribing both would count every event twice
        subscribers.append(PlainProgress(out.console.file, model, every=args.progress_every))
    result = run_sync(
        cfg,
        output=args.output,
        subscribers=subscribers,
        max_workers=args.workers,
        fresh=args.fresh,
    )
    return _finish(result, out, model)


def resume_command(args: argparse.Namespace) -> str:
    """The command that resumes this run, quoted for a POSIX shell."""
    cmd = ["python -m asyncingest run", shlex.quote(args.config)]
    if args.output:
        cmd += ["--output", shlex.quote(args.output)]
    cmd += [f"--set {shlex.quote(o)}" for o in args.overrides]
    cmd += [f"--full-refresh {shlex.quote(n)}" for n in getattr(args, "full_refresh", ())]
    return " ".join(cmd)


def _finish(
    result: RunResult,
    out: Reporter,
    model: ProgressModel | None = None,
    resume: str | None = None,
) -> int:
    if result.note == "already complete":
        if result.ok:
            out.say(
                "already_complete",
                f"{result.output}: this run is already complete; --fresh runs it again",
                output=result.output,
            )
        else:
            out.error(
                "already_complete",
                f"{result.output}: this run is already complete, but {_dead_letters_left(result)}",
                output=result.output,
                dead_requests=result.dead_requests,
                dead_records=result.dead_records,
            )
        if out.quiet or out.json:
            out.summary(result, model, resume)
        return result.exit_code
    out.summary(result, model, resume)
    this_run = sum(e.failed_requests + e.records_rejected for e in result.endpoints)
    if result.dead_requests + result.dead_records > this_run:  # left by an earlier run
        out.say("dead_letters_left", f"{result.output}: {_dead_letters_left(result)}", "warning")
    return result.exit_code


def _dead_letters_left(result: RunResult) -> str:
    """``3 dead letters remain (...)`` and what to do about them."""
    n = result.dead_requests + result.dead_records
    parts = []
    if result.dead_requests:
        parts.append(f"{result.dead_requests:,} failed requests")
    if result.dead_records:
        parts.append(f"{result.dead_records:,} refused records")
    dead = Path(result.output) / "_dead_letter"
    text = f"{n:,} dead letter{'s' if n != 1 else ''} remain ({', '.join(parts)}) in {dead}"
    if result.dead_requests:
        text += (
            "; --retry-failed asks the failed requests again (e.g. after fixing an API key "
            "that gave 401s)"
        )
    if result.dead_records:
        text += "; refused records stay there with the reason (--fresh runs everything again)"
    return text


if __name__ == "__main__":
    sys.exit(main())
