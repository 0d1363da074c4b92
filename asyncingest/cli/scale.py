"""``submit``, ``worker`` and ``status``: the scale-out commands (docs/scale-out.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson

from ..config.loading import load_config
from ..errors import ConfigError, Problem
from ..operate.reporter import Reporter
from ..scale.broker import DEFAULT_QUEUE, DELIVERY_LIMIT, QueueNames, check_broker_url, redact
from ..scale.shards import DEFAULT_SHARD_SIZE, valid_run_id


def add_parsers(sub: Any, positive_int: Callable[[str], Any], port: Callable[[str], Any]) -> None:
    """The three commands' parsers on ``sub`` (the main parser's subparsers)."""
    submit = sub.add_parser(
        "submit",
        help="cut a job into shards and publish them to RabbitMQ for workers",
        description="Cut the job into deterministic shards (ranges of an input file, root "
        "walks) and publish them with publisher confirms to a durable quorum queue. The "
        "config travels with the shards. Submitting the same --run-id again publishes only "
        "the shards not committed.",
    )
    submit.add_argument("config", help="pipeline config (YAML or JSON)")
    _broker_options(submit)
    submit.add_argument("--run-id", default=None, help="the run's id (default: a new one)")
    submit.add_argument(
        "--output",
        "-o",
        default=None,
        help="shared output folder, or an object store URI such as s3://bucket/prefix "
        "(default: output.directory)",
    )
    submit.add_argument(
        "--shard-size",
        type=positive_int,
        default=DEFAULT_SHARD_SIZE,
        help=f"ids per shard of an input file (default {DEFAULT_SHARD_SIZE:,})",
    )
    submit.add_argument(
        "--inline-children",
        action="store_true",
        help="run each shard's children in the same shard (default: a child endpoint that "
        "binds one variable becomes shards of its own, published as its parents finish)",
    )
    submit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a config value (repeatable)",
    )

    worker = sub.add_parser(
        "worker",
        help="run shards from RabbitMQ until stopped (run N of them)",
        description="Take shards from the queue, run each with the engine into a private "
        "staging folder, commit it to the shared output and only then ack it. SIGTERM: take "
        "no new shards, finish the ones in hand, exit 0 (a second SIGTERM requeues them).",
    )
    _broker_options(worker)
    worker.add_argument(
        "--config",
        default=None,
        help="a config whose endpoint has from_queue: consume that queue (each message one id) "
        "instead of submitted shards",
    )
    worker.add_argument(
        "--output", "-o", default=None, help="with --config: output folder (default: the config's)"
    )
    worker.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="with --config: override a config value (repeatable)",
    )
    worker.add_argument(
        "--budget",
        default=None,
        metavar="redis://HOST:PORT/DB",
        help="share one rate budget between all workers through Redis",
    )
    worker.add_argument(
        "--shards-at-once",
        type=positive_int,
        default=1,
        help="shards this worker runs at once; also its prefetch (default 1)",
    )
    worker.add_argument(
        "--delivery-limit",
        type=positive_int,
        default=DELIVERY_LIMIT,
        help=f"deliveries before a failing shard is dead-lettered (default {DELIVERY_LIMIT}; "
        "must match the queue's)",
    )
    worker.add_argument("--metrics-port", type=port, default=None, metavar="PORT")
    worker.add_argument("--metrics-host", default="127.0.0.1")
    worker.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info"
    )

    status = sub.add_parser(
        "status",
        help="shards done, in flight and failed of a run; with --budget, window use",
        description="How far a run is: shards done, in flight, failed, waiting (a from_queue "
        "run is queue-<its queue>); with --budget, each rate window's use of the shared budget.",
    )
    status.add_argument("run_id", metavar="ID")
    _broker_options(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--budget",
        default=None,
        metavar="redis://HOST:PORT/DB",
        help="the workers' --budget: also show each rate window's use, read from Redis",
    )
    status.add_argument(
        "--output",
        "-o",
        default=None,
        help="the run's output (folder or URI), for a run whose record the broker no longer has",
    )


def _broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, metavar="amqp://USER:PASSWORD@HOST:PORT/VHOST")
    p.add_argument(
        "--queue",
        default=DEFAULT_QUEUE,
        help=f"the shard queue (default {DEFAULT_QUEUE}; its dead letters go to QUEUE.dead)",
    )


def _names(args: argparse.Namespace) -> QueueNames:
    if not args.queue or len(args.queue) > 200:
        raise ConfigError("command line", [Problem("--queue", "expected a queue name")])
    return QueueNames(args.queue)


def command(args: argparse.Namespace, out: Reporter) -> int:
    """Run the scale-out command in ``args``; returns the exit code."""
    check_broker_url(args.broker)
    names = _names(args)
    if args.command == "submit":
        return _submit(args, names, out)
    if args.command == "worker":
        return _worker(args, names, out)
    return _status(args, names)


def _submit(args: argparse.Namespace, names: QueueNames, out: Reporter) -> int:
    from ..scale.submit import new_run_id, submit

    run_id = args.run_id or new_run_id()
    if not valid_run_id(run_id):
        raise ConfigError(
            "command line",
            [Problem("--run-id", "expected 1-100 letters, digits, '_', '-', '.'")],
        )
    cfg = load_config(args.config, args.overrides)
    output = _output(args.output if args.output is not None else cfg.output.directory)
    done = asyncio.run(
        submit(
            cfg,
            args.broker,
            run_id=run_id,
            output=output,
            shard_size=args.shard_size,
            names=names,
            split_children=not args.inline_children,
        )
    )
    out.say(
        "submitted",
        f"run {done.run_id}: {done.shards} shards, {done.published} published to "
        f"{done.queue} on {redact(args.broker)}, {done.skipped} committed already; "
        f"output {done.output}",
        run_id=done.run_id,
        shards=done.shards,
        published=done.published,
        skipped=done.skipped,
    )
    print(done.run_id)
    return 0


def _output(where: str) -> str:
    """The shared output: an object store URI as given (refused with credentials in it), or
    a folder made absolute (every worker must see the same path)."""
    from ..scale.store import check_output, is_uri

    if is_uri(where):
        return check_output(where, "--output")
    return str(Path(where).resolve())


def _budget_note(url: str | None) -> str:
    if url is None:
        return (
            "budget: in-process (the shards of a run in this worker share the configured "
            "windows; other workers keep their own, so N workers may send up to N times the "
            "limit; --budget redis://... shares one between all of them)"
        )
    return f"budget {redact(url)}: one per run, shared by every worker through Redis"


def _worker(args: argparse.Namespace, names: QueueNames, out: Reporter) -> int:
    from ..operate.logsub import configure_logging
    from ..scale.budgets import Budgets
    from ..scale.worker import QueueSource, Worker

    if args.budget is not None and not args.budget.startswith(("redis://", "rediss://")):
        raise ConfigError("command line", [Problem("--budget", "expected redis://HOST:PORT/DB")])
    source = None
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
        output = _output(args.output if args.output is not None else cfg.output.directory)
        source = QueueSource.from_config(cfg, output)
    elif args.output is not None or args.overrides:
        raise ConfigError(
            "command line", [Problem("--output/--set", "only with --config (a from_queue job)")]
        )
    configure_logging(args.log_level, "text", everything=True)
    out.say("budget", _budget_note(args.budget), "warning" if args.budget is None else "info")

    async def main() -> int:
        observer = None
        async with contextlib.AsyncExitStack() as stack:
            if args.metrics_port is not None:
                observer = await stack.enter_async_context(
                    _metrics(args.metrics_port, args.metrics_host, out)
                )
            budgets = Budgets(args.budget)
            stack.push_async_callback(budgets.aclose)
            worker = Worker(
                args.broker,
                budgets=budgets,
                names=names,
                shards_at_once=args.shards_at_once,
                delivery_limit=args.delivery_limit,
                observer=observer,
                source=source,
            )
            return await worker.run()

    return asyncio.run(main())


@contextlib.asynccontextmanager
async def _metrics(port: int, host: str, out: Reporter) -> AsyncIterator[Any]:
    from ..operate.metrics import start_metrics_server
    from ..operate.worker_metrics import WorkerMetrics

    metrics = WorkerMetrics()
    try:
        server = await start_metrics_server(port, metrics.registry, host=host)
    except OSError as exc:
        raise ConfigError(
            "command line", [Problem("--metrics-port", f"cannot listen on {host}:{port}: {exc}")]
        ) from None
    out.say("metrics", f"metrics on {server.url}")
    async with server:
        yield metrics


def _status(args: argparse.Namespace, names: QueueNames) -> int:
    from ..scale.status import run_status

    if args.budget is not None and not args.budget.startswith(("redis://", "rediss://")):
        raise ConfigError("command line", [Problem("--budget", "expected redis://HOST:PORT/DB")])
    output = _output(args.output) if args.output is not None else None
    status = asyncio.run(
        run_status(args.run_id, args.broker, names, budget=args.budget, output=output)
    )
    if args.json:
        print(orjson.dumps(status.to_dict()).decode())
    else:
        print(status)
    return 0
