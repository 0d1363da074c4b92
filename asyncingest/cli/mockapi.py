"""``python -m asyncingest mock-api``: serve the bundled mock API until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from rich.console import Console

from ..errors import ConfigError, Problem
from ..mockapi import MockAPI, MockSettings, serve


def settings_from_args(args: argparse.Namespace) -> MockSettings:
    """The mock API's settings: the ``--preset`` with the command line's overrides applied."""
    preset = MockSettings.demo if args.preset == "demo" else MockSettings.small
    overrides: dict[str, object] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.latency_ms is not None:
        overrides["latency_ms"] = args.latency_ms
        overrides["latency_jitter_ms"] = 0.0
    if args.fault_rate is not None:
        overrides["fault_rate"] = args.fault_rate
    if args.token:
        overrides["token"] = args.token
    if args.rate_limit:
        windows = []
        for item in args.rate_limit:
            n, sep, w = item.partition("/")
            try:
                windows.append((int(n), float(w)))
            except ValueError:
                raise ConfigError(
                    "--rate-limit", [Problem(item, "expected N/SECONDS, e.g. 170/10")]
                ) from None
            if not sep:
                raise ConfigError("--rate-limit", [Problem(item, "expected N/SECONDS")])
        overrides["rate_limits"] = tuple(windows)
    return preset(**overrides)


async def serve_from_args(args: argparse.Namespace, console: Console) -> None:
    """Serve the mock API the command line describes until cancelled, saying where it listens."""
    settings = settings_from_args(args)

    def ready(api: MockAPI) -> None:
        limits = ", ".join(f"{n}/{w:g}s" for n, w in settings.rate_limits) or "none"
        console.print(
            f"mock API listening on {api.url} (preset {args.preset}, seed {settings.seed}, "
            f"rate limits {limits}, fault rate {settings.fault_rate:g}); Ctrl-C stops it",
            highlight=False,
        )

    with contextlib.suppress(asyncio.CancelledError):
        await serve(settings, args.host, args.port, on_ready=ready)
