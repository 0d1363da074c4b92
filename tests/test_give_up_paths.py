"""Every way a request can give up leaves a dead letter: ``dead-letter lines == failed
requests``, on both engines.

A give-up path that counts the request as failed but writes no dead letter loses it for
good: the job is marked done, so ``--retry-failed`` (which reads the dead letters) can never
fetch it again. The paths: retries used up, the circuit breaker open (async engine only: sync
mode has no breaker), a pagination loop, a body of the wrong shape, and a job refused before
any request (an unsafe path value).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import asyncingest
from asyncingest import RunResult, config_from_dict

from .conftest import Runner

IDS = ["1", "2", "3", "4", ".."]  # ".." cannot be bound into a path: refused, never sent
SENT = len(IDS) - 1


def app() -> web.Application:
    async def ids(_: web.Request) -> web.Response:
        return web.json_response({"items": [{"id": i} for i in IDS]})

    async def fail(_: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=500)

    async def shape(_: web.Request) -> web.Response:
        return web.json_response({"items": "not a list"})

    async def loop(request: web.Request) -> web.Response:
        # A good page whose next link is itself: the walk must stop, with a dead letter.
        return web.json_response({"items": [{"n": 1}], "next": request.path})

    a = web.Application()
    a.router.add_get("/ids", ids)
    a.router.add_get("/fail/{id}", fail)
    a.router.add_get("/shape/{id}", shape)
    a.router.add_get("/loop/{id}", loop)
    return a


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with TestServer(app(), host="127.0.0.1") as s:
        yield str(s.make_url("")).rstrip("/")


def child(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "path": f"/{name}/{{id}}",
        "records": "items",
        "for_each": {"endpoint": "ids", "bind": ["id"]},
        **extra,
    }


def config(url: str, out: Path, **api: Any) -> Any:
    return config_from_dict(
        {
            "api": {
                "base_url": url,
                "retry": {"max_attempts": 2, "backoff_base": 0.001, "backoff_max": 0.002},
                "adaptive_rate": False,
                **api,
            },
            "output": {"directory": str(out)},
            "endpoints": [
                {"name": "ids", "path": "/ids", "records": "items"},
                child("fail"),
                child("shape"),
                child("loop", pagination={"type": "next_url", "next_path": "next"}),
            ],
        }
    )


def dead_letters(out: Path, endpoint: str) -> list[dict[str, Any]]:
    path = out / "_dead_letter" / endpoint / "dead-letters.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def assert_one_dead_letter_per_failed_request(result: RunResult, out: Path, name: str) -> None:
    s = result.endpoint(name)
    letters = [d for d in dead_letters(out, name) if d["kind"] in ("request", "job")]
    assert len(letters) == s.failed_requests == sum(s.failures.values()), (name, letters)
    assert sorted(d["job"] for d in letters) == list(range(len(IDS))), name  # each job once
    assert sum(d["kind"] == "job" for d in letters) == 1  # the refused ".."


def reasons(out: Path, name: str) -> list[str]:
    return [d["reason"] for d in dead_letters(out, name) if d["kind"] == "request"]


async def test_every_give_up_path_writes_a_dead_letter(
    engine: Runner, server: str, tmp_path: Path
) -> None:
    result = await engine(config(server, tmp_path, circuit_breaker=None))
    assert not result.ok
    for name in ("fail", "shape", "loop"):
        assert_one_dead_letter_per_failed_request(result, tmp_path, name)
    # retries used up
    assert result.endpoint("fail").failures == {"HTTP status": SENT, "unsafe path value": 1}
    assert all("gave up after 2 attempts" in r for r in reasons(tmp_path, "fail"))
    # the wrong shape, retried too
    assert result.endpoint("shape").failures["unexpected body shape"] == SENT
    # a pagination loop: the good first page is kept, the walk stops with a dead letter
    assert result.endpoint("loop").failures["unexpected body shape"] == SENT
    assert all("points at" in r or "loop" in r for r in reasons(tmp_path, "loop"))
    assert result.endpoint("loop").records_written == SENT


async def test_a_request_the_open_circuit_gives_up_writes_a_dead_letter(
    server: str, tmp_path: Path
) -> None:
    # One request at a time: the first job's two failures open the breaker for a minute,
    # longer than any request may wait (max_time), so every later job gives up at once.
    cfg = config(
        server,
        tmp_path,
        circuit_breaker={"failures": 2, "cooldown": 60, "max_cooldown": 60},
        concurrency={"requests_per_endpoint": 1},
        retry={"max_attempts": 2, "backoff_base": 0.001, "backoff_max": 0.002, "max_time": 5},
    )
    result = await asyncingest.run(cfg)
    assert_one_dead_letter_per_failed_request(result, tmp_path, "fail")
    failures = Counter(result.endpoint("fail").failures)
    opened = failures["circuit breaker open"]
    assert opened >= SENT - 1
    assert opened + failures["HTTP status"] == SENT
    assert sum("circuit" in r for r in reasons(tmp_path, "fail")) == opened
