"""``auth: {type: oauth2_client_credentials}``: one token request for every request in flight, a
refresh before expiry, one refresh and one retry on a 401, and bad client credentials a clear
config error in which neither the secret nor a token ever shows.

End-to-end tests run against the mock API's token endpoint (``MockSettings.oauth``), on both
engines (the ``engine`` fixture); the token lifecycle itself is tested in fake time."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import asyncingest
from asyncingest import ConfigError, FakeClock, config_from_dict
from asyncingest.cli.main import main
from asyncingest.config.models import OAuth2Config
from asyncingest.core.retry import Failure, FailureKind, RetryPolicy
from asyncingest.http.oauth import (
    OAuthCredentials,
    TokenEndpointDown,
    TokenKeeper,
    read_token_answer,
)
from asyncingest.mockapi import MockAPI, MockSettings, OAuthSettings
from asyncingest.sync.oauth import SyncTokenKeeper

from .conftest import F1_ENDPOINTS, FAST_RETRY, Runner

CLIENT_ID = "asyncingest-mock"
SECRET = "s3cr3t-Client-Secret-9f2e"
ENV = {"OAUTH_TEST_ID": CLIENT_ID, "OAUTH_TEST_SECRET": SECRET}


@pytest.fixture(autouse=True)
def client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def oauth_api(**oauth: Any) -> MockSettings:
    return MockSettings.small(oauth=OAuthSettings(client_secret=SECRET, **oauth))


def auth(token_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "oauth2_client_credentials",
        "token_url": token_url,
        "client_id_env": "OAUTH_TEST_ID",
        "client_secret_env": "OAUTH_TEST_SECRET",
        **extra,
    }


def f1(api: MockAPI, out: Path, **settings: Any) -> asyncingest.PipelineConfig:
    return config_from_dict(
        {
            "api": {
                "base_url": api.url,
                "auth": auth(f"{api.url}/oauth/token"),
                "retry": FAST_RETRY,
                **settings,
            },
            "output": {"directory": str(out)},
            "endpoints": F1_ENDPOINTS,
        }
    )


def nothing_secret(text: str, api: MockAPI) -> None:
    assert api.issuer is not None and api.issuer.issued
    assert SECRET not in text
    for token in api.issuer.issued:
        assert token not in text


def files_text(root: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file()
    )


# -- end to end, both engines ---------------------------------------------------------------


@pytest.mark.parametrize("mock_api", [oauth_api()], indirect=True)
async def test_every_request_in_flight_shares_one_token_request(
    engine: Runner, mock_api: MockAPI, tmp_path: Path
) -> None:
    events: list[Any] = []
    cfg = f1(mock_api, tmp_path, concurrency={"requests_per_endpoint": 16})
    result = await engine(cfg, subscribers=[events.append])
    assert result.ok
    assert mock_api.issuer is not None
    assert mock_api.issuer.stats.requests == 1 and mock_api.stats.unauthorized == 0
    assert mock_api.stats.requests == result.requests
    # Neither the client secret nor the token in events, the result or any file written.
    nothing_secret(repr(events) + repr(result) + files_text(tmp_path), mock_api)


@pytest.mark.parametrize("mock_api", [oauth_api(expires_in=1.5)], indirect=True)
@pytest.mark.slow  # tokens of 1.5 s, outlived in real time
async def test_a_token_expiring_mid_run_is_replaced_before_it_expires(
    engine: Runner, mock_api: MockAPI, tmp_path: Path
) -> None:
    """Tokens live 1.5 s, the run about 2.5 s (20 requests/s): replaced at half life, no 401."""
    cfg = f1(mock_api, tmp_path, rate_limits=[{"requests": 20, "per_seconds": 1}])
    result = await engine(cfg)
    assert result.ok
    assert mock_api.issuer is not None and mock_api.issuer.stats.issued >= 2
    assert mock_api.stats.unauthorized == 0


@pytest.mark.parametrize("mock_api", [oauth_api()], indirect=True)
async def test_a_revoked_token_is_refreshed_once_and_the_requests_retried(
    engine: Runner, mock_api: MockAPI, tmp_path: Path
) -> None:
    """The server revokes the token mid-run: the requests in flight get 401, share one
    refresh, and are sent again; nothing fails."""
    revoked = threading.Event()

    def revoke_after_ten(event: Any) -> None:
        finished = type(event).__name__ == "RequestFinished"
        if finished and not revoked.is_set() and mock_api.stats.requests >= 10:
            revoked.set()
            mock_api.revoke_tokens()

    cfg = f1(mock_api, tmp_path, concurrency={"requests_per_endpoint": 8})
    result = await engine(cfg, subscribers=[revoke_after_ten])
    assert revoked.is_set()
    assert result.ok  # nothing failed
    assert mock_api.issuer is not None
    assert mock_api.issuer.stats.issued == 2  # the first, and one refresh for all the 401s
    assert mock_api.stats.unauthorized >= 1
    # Each 401 was one more request to the server, retried inside the same attempt.
    assert mock_api.stats.requests == result.requests + mock_api.stats.unauthorized


async def test_a_second_401_fails_the_request_with_the_reason(
    engine: Runner, tmp_path: Path
) -> None:
    """An API that refuses every token: one refresh, one retry, then a dead letter saying so;
    no storm of token requests."""
    hits = 0

    async def refuse(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.json_response({"error": "invalid audience"}, status=401)

    app = web.Application()
    app.router.add_get("/items", refuse)
    async with MockAPI(oauth_api()) as tokens, TestServer(app, host="127.0.0.1") as server:
        cfg = config_from_dict(
            {
                "api": {
                    "base_url": str(server.make_url("")),
                    "auth": auth(f"{tokens.url}/oauth/token"),
                },
                "output": {"directory": str(tmp_path)},
                "endpoints": [{"name": "items", "path": "/items"}],
            }
        )
        result = await engine(cfg)
        assert tokens.issuer is not None and tokens.issuer.stats.issued == 2
    assert result.exit_code == 1 and hits == 2
    dead = (tmp_path / "_dead_letter" / "items" / "dead-letters.jsonl").read_text()
    assert "HTTP 401" in dead and "freshly issued access token" in dead


@pytest.mark.parametrize("mock_api", [oauth_api(fail_first=2)], indirect=True)
async def test_token_endpoint_failures_are_retried(
    engine: Runner, mock_api: MockAPI, tmp_path: Path
) -> None:
    result = await engine(f1(mock_api, tmp_path))
    assert result.ok
    assert mock_api.issuer is not None
    assert mock_api.issuer.stats.requests == 3 and mock_api.issuer.stats.issued == 1


@pytest.mark.parametrize("mock_api", [oauth_api(fail_first=100)], indirect=True)
async def test_a_token_endpoint_that_stays_down_stops_the_run_exit_4(
    mock_api: MockAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = f1(mock_api, tmp_path, retry={"max_attempts": 3, "backoff_base": 0.01})
    with pytest.raises(TokenEndpointDown, match="did not issue a token") as caught:
        await asyncingest.run(cfg)
    assert caught.value.path == f"{mock_api.url}/oauth/token"
    assert mock_api.issuer is not None and mock_api.issuer.stats.requests == 3
    assert mock_api.stats.requests == 0  # no API request without a token
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json", by_alias=True)))
    code = await asyncio.to_thread(main, ["run", str(path), "--quiet"])
    assert code == 4 and "did not issue a token" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("mock_api", [oauth_api()], indirect=True)
async def test_a_wrong_client_secret_is_a_config_error_that_shows_no_secret(
    mock_api: MockAPI,
    tmp_path: Path,
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = "wr0ng-Secret-7c1d"
    monkeypatch.setenv("OAUTH_TEST_SECRET", wrong)
    cfg = f1(mock_api, tmp_path / "out")
    with pytest.raises(ConfigError) as caught:
        await asyncingest.run(cfg)
    message = str(caught.value)
    assert "refused the client credentials" in message
    assert "OAUTH_TEST_ID and OAUTH_TEST_SECRET" in message and wrong not in message

    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json", by_alias=True)))
    args = ["run", str(path), "--fresh", "--log-level", "debug"]
    if mode == "sync":
        args += ["--mode", "sync"]
    for fmt in ("text", "json"):
        code = await asyncio.to_thread(main, [*args, "--log-format", fmt])
        captured = capsys.readouterr()
        everything = captured.out + captured.err + files_text(tmp_path)
        assert code == 2, everything
        assert "OAUTH_TEST_SECRET" in everything and "Traceback" not in everything
        assert wrong not in everything and SECRET not in everything
    assert mock_api.stats.requests == 0


async def test_a_missing_client_variable_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OAUTH_TEST_SECRET")
    cfg = config_from_dict(
        {
            "api": {"base_url": "http://127.0.0.1:9", "auth": auth("http://127.0.0.1:9/t")},
            "output": {"directory": str(tmp_path)},
            "endpoints": [{"name": "a", "path": "/a"}],
        }
    )
    with pytest.raises(ConfigError, match="OAUTH_TEST_SECRET is not set"):
        await asyncingest.run(cfg)


@pytest.mark.parametrize("mock_api", [oauth_api()], indirect=True)
async def test_plan_samples_with_the_token(mock_api: MockAPI) -> None:
    from asyncingest.operate.sample import plan

    est = await plan(f1(mock_api, Path("unused")))
    assert all(row.failed_walks == 0 for row in est.endpoints)
    assert mock_api.issuer is not None and mock_api.issuer.stats.requests == 1


@pytest.mark.parametrize("client_auth", ["basic", "body"])
@pytest.mark.parametrize("mock_api", [oauth_api()], indirect=True)
async def test_scope_audience_and_both_client_authentications_are_sent(
    mock_api: MockAPI, tmp_path: Path, client_auth: str
) -> None:
    cfg = config_from_dict(
        {
            "api": {
                "base_url": mock_api.url,
                "auth": auth(
                    f"{mock_api.url}/oauth/token",
                    scope="read:f1",
                    audience="https://f1.example",
                    client_auth=client_auth,
                ),
            },
            "output": {"directory": str(tmp_path)},
            "endpoints": F1_ENDPOINTS[:1],
        }
    )
    assert (await asyncingest.run(cfg)).ok
    assert mock_api.issuer is not None
    form = mock_api.issuer.stats.last_form
    assert form["scope"] == "read:f1" and form["audience"] == "https://f1.example"
    assert ("client_id" in form) == (client_auth == "body")


# -- the token lifecycle, in fake time ------------------------------------------------------

CONFIG = OAuth2Config(
    type="oauth2_client_credentials",
    token_url="https://login.example/token",  # type: ignore[arg-type]
    client_id_env="ID",
    client_secret_env="SECRET",
    refresh_margin=10,
)
POLICY = RetryPolicy(max_attempts=3, backoff_base=1, jitter=False)


class FakeTokenEndpoint:
    """Answers token requests after ``delay`` fake seconds: ``answers`` in turn, then tokens."""

    def __init__(self, clock: FakeClock, delay: float = 0.5) -> None:
        self.clock = clock
        self.delay = delay
        self.calls = 0
        self.answers: list[tuple[int, bytes, float | None] | Failure] = []

    async def __call__(self) -> tuple[int, bytes, float | None] | Failure:
        self.calls += 1
        await self.clock.sleep(self.delay)
        if self.answers:
            return self.answers.pop(0)
        body = {"access_token": f"tok-{self.calls}", "token_type": "bearer", "expires_in": 100}
        return 200, json.dumps(body).encode(), None


def keeper(clock: FakeClock) -> tuple[TokenKeeper, FakeTokenEndpoint]:
    endpoint = FakeTokenEndpoint(clock)
    credentials = OAuthCredentials(CONFIG, "id", SECRET)
    return TokenKeeper(credentials, endpoint, clock, POLICY), endpoint


async def test_concurrent_first_uses_make_one_token_request() -> None:
    clock = FakeClock()
    tokens, endpoint = keeper(clock)
    async with clock.auto_advance():
        got = await asyncio.gather(*(tokens.fresh() for _ in range(100)))
    assert set(got) == {"tok-1"} and endpoint.calls == 1


async def test_the_token_is_replaced_in_the_margin_without_anyone_waiting() -> None:
    clock = FakeClock()
    tokens, endpoint = keeper(clock)
    async with clock.auto_advance():
        assert await tokens.fresh() == "tok-1"
    issued = clock.time()
    await clock.advance(89)  # expires at +100, replaced from +90
    assert tokens.current() == "tok-1" and endpoint.calls == 1
    await clock.advance(2)
    # In the margin: the old token, still valid, and one refresh started for everyone.
    assert [tokens.current() for _ in range(10)] == ["tok-1"] * 10
    await clock.advance(1)
    assert endpoint.calls == 2 and tokens.current() == "tok-2"
    assert clock.time() < issued + 100  # replaced before it expired


async def test_an_expired_token_is_never_returned() -> None:
    clock = FakeClock()
    tokens, endpoint = keeper(clock)
    async with clock.auto_advance():
        await tokens.fresh()
    await clock.advance(100)
    assert tokens.current() is None
    async with clock.auto_advance():
        assert await tokens.fresh() == "tok-2"
    assert endpoint.calls == 2


async def test_a_401_drops_the_token_once_for_all_the_requests_refused_with_it() -> None:
    clock = FakeClock()
    tokens, endpoint = keeper(clock)
    async with clock.auto_advance():
        await tokens.fresh()
        for _ in range(5):  # five requests refused with tok-1
            tokens.refused("tok-1")
        assert await asyncio.gather(*(tokens.fresh() for _ in range(5))) == ["tok-2"] * 5
        tokens.refused("tok-1")  # a late 401 for the old token: already replaced
        assert tokens.current() == "tok-2" and endpoint.calls == 2
        tokens.refused_again("tok-2")  # refused right after it was issued
        tokens.refused("tok-2")
        assert tokens.current() == "tok-2" and endpoint.calls == 2


async def test_retryable_token_failures_back_off_then_give_up() -> None:
    clock = FakeClock()
    tokens, endpoint = keeper(clock)
    endpoint.answers = [
        (503, b"busy", 2.0),
        Failure(FailureKind.CONNECTION, "refused"),
        (500, b"", None),
    ]
    async with clock.auto_advance():
        with pytest.raises(TokenEndpointDown, match="gave up after 3 attempts"):
            await tokens.fresh()
    assert endpoint.calls == 3


async def test_a_background_refresh_that_fails_surfaces_on_the_next_request() -> None:
    clock = FakeClock()
    tokens, endpoint = keeper(clock)
    async with clock.auto_advance():
        await tokens.fresh()
    endpoint.answers = [(401, b'{"error": "invalid_client"}', None)]
    await clock.advance(91)
    assert tokens.current() == "tok-1"  # starts the refresh
    await clock.advance(1)
    with pytest.raises(ConfigError, match="refused the client credentials"):
        tokens.current()


def test_the_token_endpoints_answers_are_read_with_secrets_hidden() -> None:
    credentials = OAuthCredentials(CONFIG, "id", SECRET)
    body = f'{{"error": "invalid_client", "error_description": "bad secret {SECRET}"}}'.encode()
    with pytest.raises(ConfigError) as caught:
        read_token_answer(credentials, 401, body, 0.0)
    text = caught.value.render()
    assert "api.auth.client_secret_env" in text and "ID and SECRET" in text
    assert SECRET not in text and "***" in text
    with pytest.raises(ConfigError, match=r"api.auth.scope"):
        read_token_answer(credentials, 400, b'{"error": "invalid_scope"}', 0.0)
    with pytest.raises(ConfigError, match=r"api.auth.token_url.*HTTP 404"):
        read_token_answer(credentials, 404, b"not here", 0.0)
    with pytest.raises(ConfigError, match="redirect"):
        read_token_answer(credentials, 302, b"", 0.0)
    with pytest.raises(ConfigError, match="without an access_token"):
        read_token_answer(credentials, 200, b"{}", 0.0)
    retry = read_token_answer(credentials, 429, b"", 0.0, 3.0)
    assert isinstance(retry, Failure) and retry.retry_after == 3.0
    token = read_token_answer(credentials, 200, b'{"access_token": "t-1", "expires_in": 8}', 50.0)
    assert not isinstance(token, Failure)
    assert (token.refresh_at, token.expires_at) == (54.0, 58.0)  # margin: at most half the life
    assert "t-1" not in repr(token) and credentials.redact("Bearer t-1") == "Bearer ***"
    assert SECRET not in repr(credentials) and "t-1" not in repr(credentials)


def test_threads_share_one_token_request() -> None:
    calls = 0
    gate = threading.Event()

    def fetch() -> tuple[int, bytes, str | None]:
        nonlocal calls
        calls += 1
        gate.wait(5)
        return 200, b'{"access_token": "sync-1", "expires_in": 100}', None

    now = [0.0]
    tokens = SyncTokenKeeper(
        OAuthCredentials(CONFIG, "id", SECRET), fetch, POLICY, now=lambda: now[0]
    )
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(tokens.token())) for _ in range(20)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert got == ["sync-1"] * 20 and calls == 1
    now[0] = 95.0  # in the margin: this thread refreshes
    assert tokens.token() == "sync-1" and calls == 2
