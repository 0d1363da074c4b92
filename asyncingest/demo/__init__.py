"""``python -m asyncingest demo``: the bundled demo config (``demo.yaml``, ``users.csv``) against
the bundled mock API. It may import :mod:`asyncingest.config` and :mod:`asyncingest.mockapi`
(it runs whatever runner the CLI passes in, so it needs no engine); only the CLI imports it.
Private: everything below the public API in :mod:`asyncingest` may change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from ..config.loading import load_config
from ..config.models import PipelineConfig
from ..mockapi import MockAPI, MockSettings, MockStats

DEMO_CONFIG = Path(__file__).parent / "demo.yaml"
R = TypeVar("R")


def demo_settings() -> MockSettings:
    """The demo server: a strict 100/s window (the config asks for 90/s), latency, faults.
    The same server ``python -m asyncingest mock-api`` starts by default."""
    return MockSettings.demo()


async def run_demo(
    output: str | None,
    runner: Callable[[PipelineConfig], Awaitable[R]],
    settings: MockSettings | None = None,
) -> tuple[R, MockStats]:
    """Start the mock API on a free loopback port and run the demo config against it.

    Returns the run's result and the server's own counters (requests, 429s, violations).
    """
    async with MockAPI(settings or demo_settings()) as api:
        overrides = [f"api.base_url={api.url}"]
        if output:
            overrides.append(f"output.directory={output}")
        cfg = load_config(DEMO_CONFIG, overrides)
        return await runner(cfg), api.stats
