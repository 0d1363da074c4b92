"""Credentials go to the configured origin only, and never show up in output or errors.

Tests taking the ``engine`` fixture run once on the async engine and once in sync mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import asyncingest
from asyncingest import config_from_dict

from .conftest import Runner, read_records

SECRET = "tok-7f3a9c-very-secret"


class Recorder:
    """A loopback server that remembers the credentials each request carried."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None, str | None]] = []
        self.raw: list[str] = []  # raw paths (with query) of /more
        self.other_url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/items", self.items)
        app.router.add_get("/more", self.more)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/same-origin-redirect", self.same_origin_redirect)
        app.router.add_get("/echo-error", self.echo_error)
        app.router.add_get("/items-echo", self.items_echo)
        app.router.add_get("/redirect-echo", self.redirect_echo)
        app.router.add_get("/same", self.same)
        return app

    def note(self, request: web.Request) -> None:
        self.seen.append(
            (
                request.path,
                request.headers.get("Authorization"),
                request.headers.get("X-API-Key"),
                request.query.get("api_key"),
            )
        )

    async def items(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.json_response({"items": [{"id": 1}], "next": f"{self.other_url}/more"})

    def key(self, request: web.Request) -> str:
        return (
            request.headers.get("Authorization", "").removeprefix("Bearer ")
            or request.headers.get("X-API-Key")
            or request.query.get("api_key", "")
        )

    async def items_echo(self, request: web.Request) -> web.Response:
        """A next link to another host with the caller's key in it (a careless API)."""
        self.note(request)
        nxt = f"{self.other_url}/more?api_key={self.key(request)}&token={self.key(request)}"
        return web.json_response({"items": [{"id": 1}], "next": nxt})

    async def same(self, request: web.Request) -> web.Response:
        """A next link back to this very page, differing only by the echoed key."""
        self.note(request)
        return web.json_response(
            {"items": [{"id": 1}], "next": f"/same?api_key={self.key(request)}"}
        )

    async def redirect_echo(self, request: web.Request) -> web.Response:
        self.note(request)
        raise web.HTTPFound(f"{self.other_url}/more?api_key={self.key(request)}")

    async def more(self, request: web.Request) -> web.Response:
        self.note(request)
        self.raw.append(request.raw_path)
        return web.json_response({"items": [{"id": 2}], "next": None})

    async def redirect(self, request: web.Request) -> web.Response:
        self.note(request)
        raise web.HTTPFound(f"{self.other_url}/more")

    async def same_origin_redirect(self, request: web.Request) -> web.Response:
        self.note(request)
        raise web.HTTPFound("/more")

    async def echo_error(self, request: web.Request) -> web.Response:
        self.note(request)
        auth = request.headers.get("Authorization", "") + request.query.get("api_key", "")
        return web.Response(status=400, text=f"bad credentials {auth}")


def creds(entry: tuple[str, str | None, str | None, str | None]) -> list[str]:
    return [c.removeprefix("Bearer ") for c in entry[1:] if c]


@pytest.fixture
async def servers() -> Any:
    home, other = Recorder(), Recorder()
    async with (
        TestServer(home.app(), host="127.0.0.1") as hs,
        TestServer(other.app(), host="127.0.0.1") as os_,
    ):
        home.other_url = str(os_.make_url("")).rstrip("/")
        other.other_url = home.other_url
        yield home, str(hs.make_url("")).rstrip("/"), other


AUTHS = [
    {"type": "bearer", "env": "API_TOKEN"},
    {"type": "header", "name": "X-API-Key", "env": "API_TOKEN"},
    {"type": "query", "name": "api_key", "env": "API_TOKEN"},
]


def config(url: str, auth: dict[str, Any], out: Path, endpoints: list[dict[str, Any]]) -> Any:
    return config_from_dict(
        {
            "api": {"base_url": url, "auth": auth, "retry": {"max_attempts": 1}},
            "output": {"directory": str(out)},
            "endpoints": endpoints,
        }
    )


@pytest.mark.parametrize("auth", AUTHS, ids=lambda a: a["type"])
async def test_next_page_link_to_another_host_gets_no_credentials(
    engine: Runner,
    servers: Any,
    auth: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home, url, other = servers
    monkeypatch.setenv("API_TOKEN", SECRET)
    endpoint = {
        "name": "items",
        "path": "/items",
        "records": "items",
        "pagination": {"type": "next_url"},
    }
    result = await engine(config(url, auth, tmp_path, [endpoint]))
    assert result.ok
    assert [creds(e) for e in home.seen] == [[SECRET]]
    assert other.seen and all(creds(e) == [] for e in other.seen)
    assert sorted(r["id"] for r in read_records(tmp_path, "items")) == [1, 2]


@pytest.mark.parametrize("auth", AUTHS, ids=lambda a: a["type"])
async def test_redirect_to_another_host_gets_no_credentials(
    engine: Runner,
    servers: Any,
    auth: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home, url, other = servers
    monkeypatch.setenv("API_TOKEN", SECRET)
    endpoint = {"name": "r", "path": "/redirect", "records": "items"}
    result = await engine(config(url, auth, tmp_path, [endpoint]))
    assert result.ok
    assert [creds(e) for e in home.seen] == [[SECRET]]
    assert [e[0] for e in other.seen] == ["/more"] and creds(other.seen[0]) == []


@pytest.mark.parametrize("path", ["/items-echo", "/redirect-echo"])
@pytest.mark.parametrize("auth", AUTHS, ids=lambda a: a["type"])
async def test_a_link_to_another_host_carrying_the_key_is_followed_without_it(
    servers: Any,
    auth: dict[str, Any],
    path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API puts the caller's key into a next link or a redirect to another host: the
    parameters carrying it are dropped before the request leaves."""
    home, url, other = servers
    monkeypatch.setenv("API_TOKEN", SECRET)
    endpoint = {"name": "e", "path": path, "records": "items", "pagination": {"type": "next_url"}}
    result = await asyncingest.run(config(url, auth, tmp_path, [endpoint]))
    assert result.ok
    assert [creds(e) for e in home.seen] == [[SECRET]]
    assert other.raw and all(SECRET not in raw for raw in other.raw)
    assert all(creds(e) == [] for e in other.seen)


@pytest.mark.parametrize("auth", AUTHS, ids=lambda a: a["type"])
async def test_a_link_back_to_the_same_page_but_for_the_echoed_key_is_a_loop(
    servers: Any, auth: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scrubbing the key must not hide a loop: the link is the current page once the key is
    gone, so the walk stops and says so instead of asking the same page forever."""
    import asyncio

    home, url, _ = servers
    monkeypatch.setenv("API_TOKEN", SECRET)
    endpoint = {
        "name": "s",
        "path": "/same",
        "records": "items",
        "pagination": {"type": "next_url"},
    }
    async with asyncio.timeout(20):
        result = await asyncingest.run(config(url, auth, tmp_path, [endpoint]))
    assert result.exit_code == 1 and len(home.seen) == 1
    dead = (tmp_path / "_dead_letter" / "s" / "dead-letters.jsonl").read_text()
    assert "points at the current page" in dead and SECRET not in dead
    assert [r["id"] for r in read_records(tmp_path, "s")] == [1]


async def test_same_origin_redirect_keeps_credentials(
    engine: Runner, servers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, url, _ = servers
    monkeypatch.setenv("API_TOKEN", SECRET)
    endpoint = {"name": "r", "path": "/same-origin-redirect", "records": "items"}
    result = await engine(config(url, AUTHS[0], tmp_path, [endpoint]))
    assert result.ok
    assert [e[0] for e in home.seen] == ["/same-origin-redirect", "/more"]
    assert all(creds(e) for e in home.seen)


@pytest.mark.parametrize("auth", AUTHS[::2], ids=lambda a: a["type"])
async def test_secret_never_reaches_dead_letters_results_or_events(
    engine: Runner,
    servers: Any,
    auth: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url, _ = servers
    monkeypatch.setenv("API_TOKEN", SECRET)
    events: list[Any] = []
    endpoint = {"name": "e", "path": "/echo-error"}
    result = await engine(config(url, auth, tmp_path, [endpoint]), subscribers=[events.append])
    assert result.exit_code == 1
    dead = (tmp_path / "_dead_letter" / "e" / "dead-letters.jsonl").read_text()
    assert "bad credentials" in dead and "***" in dead
    everything = dead + repr(result) + repr(events) + json.dumps(str(result.endpoints))
    assert SECRET not in everything


def test_missing_secret_variable_is_a_config_error(tmp_path: Path) -> None:
    from asyncingest.cli.main import main

    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "api: {base_url: 'http://127.0.0.1:9', auth: {type: bearer, env: NOT_SET_ANYWHERE_X}}\n"
        "endpoints: [{name: a, path: /a}]\n"
    )
    assert main(["run", str(cfg), "--quiet", "--output", str(tmp_path / "o")]) == 2


async def test_a_stalled_chunked_body_fails_after_read_timeout(tmp_path: Path) -> None:
    """Bodies of unknown length can stream forever; a gap longer than read_timeout ends them
    (bodies with a Content-Length are bounded by total_timeout)."""
    import asyncio

    calls = 0

    async def stalls(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b'[{"id": 1}')
        if calls == 1:
            await asyncio.sleep(1.0)  # longer than read_timeout below
        await resp.write(b"]")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/stream", stalls)
    async with TestServer(app, host="127.0.0.1") as server:
        cfg = config_from_dict(
            {
                "api": {
                    "base_url": str(server.make_url("")),
                    "http": {"read_timeout": 0.2, "total_timeout": 30},
                    "retry": {"backoff_base": 0.01, "backoff_max": 0.02},
                },
                "output": {"directory": str(tmp_path)},
                "endpoints": [{"name": "s", "path": "/stream"}],
            }
        )
        events: list[Any] = []
        result = await asyncingest.run(cfg, subscribers=[events.append])
    assert result.ok and calls == 2
    retried = [e for e in events if type(e).__name__ == "RequestRetried"]
    assert len(retried) == 1 and "read_timeout" in retried[0].reason


class Echoer:
    """An API that echoes the secret back: into its next-page links (as the auth parameter
    itself for query auth, and as ``echo=``) and into the body of a failing page."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str | None]] = []  # (page, the secret the request carried)
        self.fail_page = 0  # this page answers 400, with the secret in the body
        self.on_page: dict[int, Any] = {}  # page -> hook called when it is served

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/walk", self.walk)
        return app

    async def walk(self, request: web.Request) -> web.Response:
        from urllib.parse import urlencode

        key = (
            request.headers.get("Authorization", "").removeprefix("Bearer ")
            or request.headers.get("X-API-Key")
            or request.query.get("api_key")
        )
        page = int(request.query.get("page", "1"))
        self.seen.append((page, key))
        if page in self.on_page:
            self.on_page.pop(page)()
        if page == self.fail_page:
            return web.Response(status=400, text=f"key {key} is not allowed on page {page}")
        query = {**request.query, "page": str(page + 1), "echo": key or ""}
        nxt = f"/walk?{urlencode(query)}" if page < 3 else None
        return web.json_response({"items": [{"id": page}], "next": nxt})


def every_file_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def leaks(root: Path, extra: str = "") -> list[str]:
    found = [name for name, data in every_file_under(root).items() if SECRET.encode() in data]
    return found + (["events or results"] if SECRET in extra else [])


@pytest.mark.parametrize("auth", AUTHS, ids=lambda a: a["type"])
async def test_secret_echoed_by_the_api_is_in_no_file_the_run_writes(
    auth: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API echoes the key into next links and error bodies. Nothing the run writes holds
    it: not state.json's part-way walks (a run stopped after page 2), not the dead letter's
    request (page 2 failing), not the run reports. And both still resume: the stopped walk
    and the dead-lettered page are asked again with the credentials attached."""
    monkeypatch.setenv("API_TOKEN", SECRET)
    echo = Echoer()
    endpoint = {
        "name": "w",
        "path": "/walk",
        "records": "items",
        "pagination": {"type": "next_url"},
    }
    events: list[Any] = []
    async with TestServer(echo.app(), host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")

        # 1. Stopped part way: state.json holds the walk's next request (page 3).
        stopped_out = tmp_path / "stopped"
        engine = asyncingest.Engine(
            config(url, auth, stopped_out, [endpoint]), subscribers=[events.append]
        )
        echo.on_page[2] = engine.stop
        first = await engine.run()
        assert first.stopped
        state = (stopped_out / "_asyncingest" / "state.json").read_text()
        assert "page=3" in state  # the walk is part way, as intended
        assert leaks(stopped_out, repr(events) + repr(first)) == []
        resumed = await asyncingest.run(
            config(url, auth, stopped_out, [endpoint]), subscribers=[events.append]
        )
        assert resumed.ok and resumed.note == "resumed"
        assert sorted(r["id"] for r in read_records(stopped_out, "w")) == [1, 2, 3]

        # 2. A dead letter: page 2 fails with the key in its body.
        echo.fail_page = 2
        dead_out = tmp_path / "dead"
        failed = await asyncingest.run(
            config(url, auth, dead_out, [endpoint]), subscribers=[events.append]
        )
        assert failed.exit_code == 1
        dead = (dead_out / "_dead_letter" / "w" / "dead-letters.jsonl").read_text()
        assert "page=2" in dead and "not allowed" in dead
        echo.fail_page = 0
        retried = await asyncingest.Engine(
            config(url, auth, dead_out, [endpoint]), retry_failed=True, subscribers=[events.append]
        ).run()
        assert retried.ok
        assert sorted(r["id"] for r in read_records(dead_out, "w")) == [1, 2, 3]

    assert leaks(tmp_path, repr(events) + repr([first, resumed, failed, retried])) == []
    # Every request went to the origin with the secret, resumed ones included.
    assert echo.seen and all(key == SECRET for _, key in echo.seen)


@pytest.mark.parametrize("auth", AUTHS, ids=lambda a: a["type"])
async def test_sync_mode_keeps_an_echoed_secret_out_of_its_files_and_other_hosts(
    servers: Any, auth: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread-pool engine shares the scrubbing: a next link to another host carrying the
    key loses it, and a failing page whose link echoed the key leaves no trace in any file."""
    import asyncio

    from asyncingest.sync import run_sync

    _, url, other = servers
    monkeypatch.setenv("API_TOKEN", SECRET)
    echo = Echoer()
    echo.fail_page = 2
    async with TestServer(echo.app(), host="127.0.0.1") as server:
        walk_url = str(server.make_url("")).rstrip("/")
        link = {"name": "e", "path": "/items-echo", "records": "items"}
        link["pagination"] = {"type": "next_url"}
        walk = {
            "name": "w",
            "path": "/walk",
            "records": "items",
            "pagination": {"type": "next_url"},
        }
        first = await asyncio.to_thread(run_sync, config(url, auth, tmp_path / "a", [link]))
        second = await asyncio.to_thread(run_sync, config(walk_url, auth, tmp_path / "b", [walk]))
    assert first.ok and other.raw and all(SECRET not in raw for raw in other.raw)
    assert second.exit_code == 1
    assert "page=2" in (tmp_path / "b" / "_dead_letter" / "w" / "dead-letters.jsonl").read_text()
    assert leaks(tmp_path, repr([first, second])) == []


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_an_echoed_query_key_is_not_in_the_logs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    log_format: str,
) -> None:
    """The CLI's log lines (debug level: every request and retry) and its summary, for a walk
    whose links echo the key and whose second page fails quoting it."""
    import asyncio

    from asyncingest.cli.main import main

    monkeypatch.setenv("API_TOKEN", SECRET)
    echo = Echoer()
    echo.fail_page = 2
    async with TestServer(echo.app(), host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        cfg = tmp_path / "p.json"
        endpoint = {"name": "w", "path": "/walk", "records": "items"}
        endpoint["pagination"] = {"type": "next_url"}
        raw = {
            "api": {"base_url": url, "auth": AUTHS[2], "retry": {"max_attempts": 2}},
            "endpoints": [endpoint],
        }
        cfg.write_text(json.dumps(raw))
        argv = ["run", str(cfg), "-o", str(tmp_path / "o"), "--log-level", "debug"]
        code = await asyncio.to_thread(main, [*argv, "--log-format", log_format])
    out, err = capfd.readouterr()
    assert code == 1
    assert "page=2" in err  # the failing request is logged ...
    assert SECRET not in out + err  # ... without the key


@pytest.mark.parametrize("path", ["/items", "/redirect", "/items-echo", "/redirect-echo"])
async def test_the_oauth_token_goes_to_the_api_origin_only(
    engine: Runner,
    servers: Any,
    path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The access token is a credential like the others: a next link or a redirect to another
    host (even one the API put the token into) reaches it without the token; the client
    secret reaches nobody but the token endpoint."""
    from asyncingest.mockapi import MockAPI, MockSettings, OAuthSettings

    home, url, other = servers
    monkeypatch.setenv("OAUTH_ID", "asyncingest-mock")
    monkeypatch.setenv("OAUTH_SECRET", SECRET)
    async with MockAPI(MockSettings.small(oauth=OAuthSettings(client_secret=SECRET))) as tokens:
        auth = {
            "type": "oauth2_client_credentials",
            "token_url": f"{tokens.url}/oauth/token",
            "client_id_env": "OAUTH_ID",
            "client_secret_env": "OAUTH_SECRET",
        }
        endpoint = {
            "name": "e",
            "path": path,
            "records": "items",
            "pagination": {"type": "next_url"},
        }
        events: list[Any] = []
        result = await engine(config(url, auth, tmp_path, [endpoint]), subscribers=[events.append])
        assert tokens.issuer is not None
        issued = tokens.issuer.issued
    assert result.ok and len(issued) == 1
    assert [creds(e) for e in home.seen] == [issued]
    assert other.seen and all(creds(e) == [] for e in other.seen)
    assert all(issued[0] not in raw and SECRET not in raw for raw in other.raw)
    assert leaks(tmp_path, repr(events) + repr(result)) == []  # the client secret
    assert all(issued[0].encode() not in data for data in every_file_under(tmp_path).values())
    assert issued[0] not in repr(events) + repr(result)
