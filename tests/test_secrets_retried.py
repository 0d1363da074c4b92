"""A secret the server echoes back in an error body never leaves the client, on the retry
path too: not in an event, a log line (text or JSON), a dead letter, the state, or any file
of the output, for every kind of credential and on both engines.

The earlier tests cover a non-retryable 400 with one attempt; dropping the redaction of the
retry message (``RequestRetried.reason``, the warning it logs) passed them all.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from asyncingest import config_from_dict
from asyncingest.operate.logsub import TextFormatter, configure_logging

from .conftest import Runner

SECRET = "tok-5e1b-echoed-back"

AUTHS = [
    {"type": "bearer", "env": "ECHO_TOKEN"},
    {"type": "header", "name": "X-API-Key", "env": "ECHO_TOKEN"},
    {"type": "query", "name": "api_key", "env": "ECHO_TOKEN"},
]


def echo(request: web.Request) -> str:
    """What a careless API puts in its error body: the query string and the auth headers."""
    headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "X-API-Key")}
    return f"internal error for {request.path_qs} with {headers}"


def app(calls: Counter[str]) -> web.Application:
    async def flaky(request: web.Request) -> web.Response:
        calls[request.path] += 1
        if calls[request.path] <= 2:  # two echoing 500s, then the page
            return web.Response(status=500, text=echo(request))
        return web.json_response([{"id": 1}])

    async def down(request: web.Request) -> web.Response:
        calls[request.path] += 1
        return web.Response(status=503, text=echo(request))

    a = web.Application()
    a.router.add_get("/flaky", flaky)
    a.router.add_get("/down", down)
    return a


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Counter[str]]]:
    calls: Counter[str] = Counter()
    async with TestServer(app(calls), host="127.0.0.1") as s:
        yield str(s.make_url("")).rstrip("/"), calls


@pytest.fixture
def logs() -> Any:
    """The JSON log subscriber at debug level, plus the same records as text lines."""
    json_out, text_out = io.StringIO(), io.StringIO()
    subscriber = configure_logging("debug", "json", stream=json_out)
    text = logging.StreamHandler(text_out)
    text.setFormatter(TextFormatter())
    logger = logging.getLogger("asyncingest")
    logger.addHandler(text)
    yield subscriber, json_out, text_out
    logger.removeHandler(text)
    configure_logging("warning", "text")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("auth", AUTHS, ids=lambda a: a["type"])
async def test_an_echoed_secret_never_leaves_the_client_on_the_retry_path(
    engine: Runner,
    server: tuple[str, Counter[str]],
    logs: Any,
    auth: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, calls = server
    subscriber, json_out, text_out = logs
    monkeypatch.setenv("ECHO_TOKEN", SECRET)
    cfg = config_from_dict(
        {
            "api": {
                "base_url": url,
                "auth": auth,
                "retry": {"max_attempts": 3, "backoff_base": 0.001, "backoff_max": 0.002},
                "circuit_breaker": None,
                "adaptive_rate": False,
            },
            "output": {"directory": str(tmp_path / "out")},
            "endpoints": [{"name": "flaky", "path": "/flaky"}, {"name": "down", "path": "/down"}],
        }
    )
    events: list[Any] = []
    result = await engine(cfg, subscribers=[events.append, subscriber])
    assert calls == {"/flaky": 3, "/down": 3}  # the server did see (and echo) the secret
    assert result.endpoint("flaky").records_written == 1
    assert result.endpoint("flaky").retries == 2 and result.endpoint("down").failed_requests == 1

    retried = [e for e in events if type(e).__name__ == "RequestRetried"]
    assert len(retried) == 4 and all("internal error for" in e.reason for e in retried)
    assert all("***" in e.reason for e in retried)  # the echo was there, and redacted
    for e in events:
        assert SECRET not in repr(e), e
    json_lines, text_lines = json_out.getvalue(), text_out.getvalue()
    assert "internal error for" in json_lines and "internal error for" in text_lines
    assert SECRET not in json_lines and SECRET not in text_lines
    assert SECRET not in repr(result) and SECRET not in str(result)
    written = files(tmp_path / "out")
    assert any("_dead_letter" in name for name in written)
    leaked = [name for name, data in written.items() if SECRET.encode() in data]
    assert leaked == []
