"""The bundled mock API: seeded data, every pagination shape, the server-side referee, named
faults, auth and the admin routes. Loopback only; nothing sleeps beyond configured latency."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from asyncingest.mockapi import (
    FAULT_KINDS,
    Dataset,
    FaultPlan,
    MockAPI,
    MockSettings,
    SlidingWindowReferee,
    serve,
)

from .conftest import MockAPIFactory, dataset_digest

SMALL = MockSettings.small()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def api() -> AsyncIterator[MockAPI]:
    async with MockAPI(SMALL) as running:
        yield running


async def get(client: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with client.get(url, **kw) as r:
        return r.status, orjson.loads(await r.read())


# -- the dataset ---------------------------------------------------------------------------


def test_same_seed_builds_an_equal_dataset() -> None:
    assert Dataset.build(SMALL) == Dataset.build(MockSettings.small())


def test_another_seed_builds_different_data() -> None:
    other = Dataset.build(MockSettings.small(seed=8))
    assert other != Dataset.build(SMALL)
    assert other.laps != Dataset.build(SMALL).laps


def test_behaviour_settings_do_not_change_the_data() -> None:
    noisy = MockSettings.small(fault_rate=0.5, latency_ms=5, rate_limits=((1, 1.0),), token="t")
    assert Dataset.build(noisy) == Dataset.build(SMALL)


@pytest.mark.slow
def test_dataset_is_identical_in_another_process() -> None:
    code = (
        "from asyncingest.mockapi import MockSettings;"
        "from tests.conftest import dataset_digest;"
        "print(dataset_digest(MockSettings.small()))"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(__file__).parents[1],
    ).stdout.strip()
    assert out == dataset_digest(SMALL)


def test_record_counts_follow_the_scale_knobs() -> None:
    s = SMALL
    counts = Dataset.build(s).counts()
    n_sessions = s.n_meetings * s.sessions_per_meeting
    assert counts["meetings"] == s.n_meetings
    assert counts["sessions"] == n_sessions
    assert counts["drivers"] == n_sessions * s.n_drivers
    assert counts["laps"] == n_sessions * s.n_drivers * s.laps_per_driver
    assert counts["weather"] == n_sessions * s.weather_per_session
    assert counts["race_control"] == n_sessions * s.race_control_per_session
    assert counts["team_radio"] == n_sessions * s.team_radio_per_session
    assert (counts["contacts"], counts["engagements"]) == (s.n_contacts, s.n_engagements)
    assert (counts["companies"], counts["users"]) == (s.n_companies, s.n_users)


def test_demo_preset_is_a_few_thousand_records() -> None:
    counts = Dataset.build(MockSettings.demo()).counts()
    assert 3_000 <= sum(counts.values()) <= 10_000
    assert all(n > 0 for n in counts.values()), counts


def test_stints_cover_every_lap_and_pit_out_laps_follow_stops() -> None:
    d = Dataset.build(SMALL)
    for session in d.sessions:
        key = session["session_key"]
        stops = {(p["driver_number"], p["lap_number"]) for p in d.for_session("pit", key)}
        for lap in d.for_session("laps", key):
            pit_out = (lap["driver_number"], lap["lap_number"] - 1) in stops
            assert lap["is_pit_out_lap"] == pit_out
        for driver in d.for_session("drivers", key):
            stints = [
                s
                for s in d.for_session("stints", key)
                if s["driver_number"] == driver["driver_number"]
            ]
            laps = [n for s in stints for n in range(s["lap_start"], s["lap_end"] + 1)]
            assert laps == list(range(1, SMALL.laps_per_driver + 1))


def test_users_are_stable_per_id_and_digits_only() -> None:
    d = Dataset.build(SMALL)
    assert d.user("123") == Dataset.build(MockSettings.small()).user("123")
    assert d.user("123") != d.user("124")
    assert d.user("12a") is None and d.user("") is None
    assert all(d.user(u) is not None for u in d.user_ids)
    assert len(set(d.user_ids)) == SMALL.n_users


def test_unknown_user_rate_makes_some_ids_404_but_never_listed_ones() -> None:
    d = Dataset.build(MockSettings.small(unknown_user_rate=0.5, n_users=50))
    missing = sum(d.user(str(i)) is None for i in range(1000))
    assert 350 < missing < 650
    assert all(d.user(u) is not None for u in d.user_ids)


# -- endpoints and pagination --------------------------------------------------------------


async def test_meetings_are_a_top_level_list_filtered_by_year(
    api: MockAPI, client: aiohttp.ClientSession
) -> None:
    assert await get(client, f"{api.url}/v1/meetings?year=2024") == (200, api.dataset.meetings)
    assert await get(client, f"{api.url}/v1/meetings?year=1999") == (200, [])


async def test_sessions_filter_by_meeting(api: MockAPI, client: aiohttp.ClientSession) -> None:
    key = api.dataset.meetings[1]["meeting_key"]
    status, body = await get(client, f"{api.url}/v1/sessions?meeting_key={key}")
    assert status == 200
    assert body == [s for s in api.dataset.sessions if s["meeting_key"] == key]
    assert len(body) == SMALL.sessions_per_meeting


@pytest.mark.parametrize("table", ["drivers", "weather", "pit", "stints"])
async def test_per_session_lists(api: MockAPI, client: aiohttp.ClientSession, table: str) -> None:
    d = api.dataset
    got = []
    for session in d.sessions:
        _, body = await get(client, f"{api.url}/v1/{table}?session_key={session['session_key']}")
        got.extend(body)
    assert got == getattr(d, table)
    assert (await get(client, f"{api.url}/v1/{table}"))[1] == getattr(d, table)


async def test_laps_walk_by_offset_and_limit(api: MockAPI, client: aiohttp.ClientSession) -> None:
    for session in api.dataset.sessions:
        key, got, offset = session["session_key"], [], 0
        while True:
            _, page = await get(
                client, f"{api.url}/v1/laps?session_key={key}&offset={offset}&limit=5"
            )
            got.extend(page["results"])
            offset += 5
            if offset >= page["total"]:
                break
        assert got == api.dataset.for_session("laps", key)


async def test_laps_limit_is_clamped_to_100(api: MockAPI, client: aiohttp.ClientSession) -> None:
    _, page = await get(client, f"{api.url}/v1/laps?limit=1000")
    assert page["total"] == len(api.dataset.laps) > 100
    assert page["results"] == api.dataset.laps[:100]


async def test_race_control_walks_by_page_number(
    api: MockAPI, client: aiohttp.ClientSession
) -> None:
    key = api.dataset.sessions[0]["session_key"]
    got, page = [], 1
    while True:
        _, body = await get(
            client, f"{api.url}/v1/race_control?session_key={key}&page={page}&page_size=3"
        )
        assert body["meta"]["page"] == page
        got.extend(body["data"]["items"])
        if page >= body["meta"]["total_pages"]:
            break
        page += 1
    assert page == 3  # 7 items, 3 a page
    assert got == api.dataset.for_session("race_control", key)


async def test_team_radio_follows_next_urls_in_the_body(
    api: MockAPI, client: aiohttp.ClientSession
) -> None:
    key = api.dataset.sessions[0]["session_key"]
    url: str | None = f"{api.url}/v1/team_radio?session_key={key}&limit=2"
    got, pages = [], 0
    while url:
        _, body = await get(client, url)
        got.extend(body["items"])
        url, pages = body["next"], pages + 1
    assert pages == 3
    assert got == api.dataset.for_session("team_radio", key)


@pytest.mark.parametrize("kind", ["contacts", "engagements"])
async def test_crm_objects_walk_by_after_cursor(
    api: MockAPI, client: aiohttp.ClientSession, kind: str
) -> None:
    got, after, links = [], None, []
    while True:
        query = f"limit=4&after={after}" if after else "limit=4"
        _, body = await get(client, f"{api.url}/crm/v3/objects/{kind}?{query}")
        got.extend(body["results"])
        if "paging" not in body:
            break
        after = body["paging"]["next"]["after"]
        links.append(body["paging"]["next"]["link"])
    assert got == getattr(api.dataset, kind)
    assert links[0].startswith(f"{api.url}/crm/v3/objects/{kind}?")
    assert (await get(client, links[0]))[1]["results"] == got[4:8]


async def test_companies_follow_the_link_header(
    api: MockAPI, client: aiohttp.ClientSession
) -> None:
    url: str | None = f"{api.url}/crm/v3/objects/companies?limit=5"
    got: list[Any] = []
    while url:
        async with client.get(url) as r:
            got.extend(await r.json())
            url = str(r.links["next"]["url"]) if "next" in r.links else None
    assert got == api.dataset.companies


async def test_associations_per_engagement(api: MockAPI, client: aiohttp.ClientSession) -> None:
    d = api.dataset
    for e in d.engagements:
        path = f"/crm/v4/objects/engagements/{e['id']}/associations/contacts"
        status, body = await get(client, api.url + path)
        assert status == 200
        assert [r["toObjectId"] for r in body["results"]] == d.associations[e["id"]]
        assert all(r["associationTypes"][0]["typeId"] == 9 for r in body["results"])
    status, body = await get(
        client, f"{api.url}/crm/v4/objects/engagements/1/associations/contacts"
    )
    assert status == 404 and body["category"] == "OBJECT_NOT_FOUND"


async def test_partner_user_by_get_and_by_post(api: MockAPI, client: aiohttp.ClientSession) -> None:
    assert await get(client, f"{api.url}/partner/users/4242") == (200, api.dataset.user("4242"))
    async with client.post(f"{api.url}/partner/score", json={"user_id": 4242}) as r:
        assert (r.status, await r.json()) == (200, api.dataset.user("4242"))
    assert (await get(client, f"{api.url}/partner/users/abc"))[0] == 404
    async with client.post(f"{api.url}/partner/score", data=b"not json") as r:
        assert r.status == 400


async def test_bad_requests_are_answered_in_json(
    api: MockAPI, client: aiohttp.ClientSession
) -> None:
    assert (await get(client, f"{api.url}/v1/laps?offset=x"))[0] == 400
    assert (await get(client, f"{api.url}/crm/v3/objects/contacts?after=zz"))[0] == 400
    assert (await get(client, f"{api.url}/v1/race_control?page=0"))[0] == 400
    assert (await get(client, f"{api.url}/v1/nothing-here"))[0] == 404
    async with client.post(f"{api.url}/v1/meetings") as r:
        assert (r.status, r.headers["Allow"]) == (405, "GET")
    assert api.stats.by_path["<unmatched>"] == 1


# -- the referee ---------------------------------------------------------------------------


async def test_a_full_window_answers_429_with_retry_after(client: aiohttp.ClientSession) -> None:
    async with MockAPI(MockSettings.small(rate_limits=((3, 10.0),))) as api:
        statuses = []
        for _ in range(5):
            async with client.get(f"{api.url}/v1/meetings") as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert 1 <= int(r.headers["Retry-After"]) <= 10
                    assert (await r.json())["error"] == "rate limit exceeded"
        stats = api.stats
    assert statuses == [200, 200, 200, 429, 429]
    assert (stats.violations, stats.violations_by_window, stats.max_in_window) == (2, [2], [3])
    assert stats.throttled == stats.sent_429 == 2


async def test_count_only_mode_serves_violations_and_counts_them(
    client: aiohttp.ClientSession,
) -> None:
    settings = MockSettings.small(rate_limits=((3, 10.0), (100, 60.0)), enforce_rate_limit=False)
    async with MockAPI(settings) as api:
        statuses = [(await get(client, f"{api.url}/v1/meetings"))[0] for _ in range(5)]
        stats = api.stats
    assert statuses == [200] * 5
    assert (stats.violations_by_window, stats.max_in_window) == ([2, 0], [5, 5])


def test_window_is_half_open_and_rejected_arrivals_do_not_count() -> None:
    referee = SlidingWindowReferee([(2, 1.0)])
    assert referee.arrive(0.0) is None and referee.arrive(0.25) is None
    assert referee.arrive(0.5) == pytest.approx(0.5)  # room when 0.0 leaves at 1.0
    assert referee.arrive(0.9) == pytest.approx(0.1)  # the refused 0.5 did not count
    assert referee.arrive(1.0) is None  # (t - W, t]: 0.0 has left
    assert referee.violations == [2] and referee.max_in_window == [2]
    assert "violations=2" in repr(referee)


def test_the_longest_wait_over_all_full_windows_is_reported() -> None:
    referee = SlidingWindowReferee([(2, 1.0), (3, 10.0)])
    for t in (0.0, 0.1, 2.0):
        assert referee.arrive(t) is None
    assert referee.arrive(2.5) == pytest.approx(7.5)  # the 10 s window holds 0.0 until 10.0
    assert referee.violations == [0, 1]
    assert SlidingWindowReferee.retry_after_header(0.01) == "1"
    assert SlidingWindowReferee.retry_after_header(7.5) == "8"


async def test_the_log_records_arrivals_in_order(
    api: MockAPI, client: aiohttp.ClientSession
) -> None:
    await get(client, f"{api.url}/v1/meetings")
    async with client.post(f"{api.url}/partner/score", json={"user_id": "9"}):
        pass
    (first, second) = api.stats.log
    assert (first.method, first.path, first.status) == ("GET", "/v1/meetings", 200)
    assert (second.method, second.path, second.status) == ("POST", "/partner/score", 200)
    assert first.time <= second.time <= asyncio.get_running_loop().time()


# -- faults --------------------------------------------------------------------------------


def forced(kind: str, **kw: Any) -> MockSettings:
    return MockSettings.small(forced_faults={"/v1/meetings": (kind,)}, **kw)


@pytest.mark.parametrize("kind", ["status_500", "status_503", "status_429"])
async def test_status_faults(client: aiohttp.ClientSession, kind: str) -> None:
    async with MockAPI(forced(kind)) as api:
        status, body = await get(client, f"{api.url}/v1/meetings")
        assert body["fault"] == kind and status == int(kind[-3:])
        assert api.stats.faults == {kind: 1}
        async with client.get(f"{api.url}/v1/meetings") as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("settings", "header"),
    [
        (MockSettings(forced_faults={"/v1/meetings": ("status_429",)}), "1"),  # the default
        (forced("status_429"), "0.2"),  # small(): tests wait a fifth of a second per 429
        (forced("status_429", fault_retry_after=3), "3"),
    ],
)
async def test_status_429_fault_says_its_retry_after(
    client: aiohttp.ClientSession, settings: MockSettings, header: str
) -> None:
    async with MockAPI(settings) as api, client.get(f"{api.url}/v1/meetings") as r:
        assert (r.status, r.headers["Retry-After"]) == (429, header)


@pytest.mark.parametrize("kind", ["reset_mid_body", "truncated_body"])
async def test_broken_bodies_raise_payload_errors(client: aiohttp.ClientSession, kind: str) -> None:
    async with MockAPI(forced(kind)) as api:
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            async with client.get(f"{api.url}/v1/meetings") as r:
                assert r.status == 200
                await r.read()
        assert await get(client, f"{api.url}/v1/meetings") == (200, api.dataset.meetings)


async def test_malformed_json_fails_to_parse(client: aiohttp.ClientSession) -> None:
    async with MockAPI(forced("malformed_json")) as api, client.get(f"{api.url}/v1/meetings") as r:
        assert (r.status, r.content_type) == (200, "application/json")
        with pytest.raises(json.JSONDecodeError):
            await r.json()


@pytest.mark.parametrize(("path", "shape"), [("/v1/meetings", dict), ("/v1/laps", list)])
async def test_wrong_shape_is_valid_json_of_the_other_type(
    client: aiohttp.ClientSession, path: str, shape: type
) -> None:
    async with MockAPI(MockSettings.small(forced_faults={path: ("wrong_shape",)})) as api:
        status, body = await get(client, api.url + path)
    assert status == 200 and isinstance(body, shape)


async def test_slow_body_trips_a_read_timeout_then_arrives_whole(
    client: aiohttp.ClientSession,
) -> None:
    settings = MockSettings.small(
        forced_faults={"/v1/meetings": ("slow_body", "slow_body")}, slow_body_seconds=0.5
    )
    async with MockAPI(settings) as api:
        with pytest.raises(asyncio.TimeoutError):
            async with client.get(
                f"{api.url}/v1/meetings", timeout=aiohttp.ClientTimeout(sock_read=0.02)
            ) as r:
                await r.read()
        fast = settings.model_copy(update={"slow_body_seconds": 0.05})
    async with MockAPI(fast) as api:
        assert await get(client, f"{api.url}/v1/meetings") == (200, api.dataset.meetings)
        assert api.stats.faults == {"slow_body": 1}


async def test_forced_faults_follow_attempts_per_url_then_succeed(
    client: aiohttp.ClientSession,
) -> None:
    settings = MockSettings.small(forced_faults={"/v1/laps": ("status_503", "reset_mid_body")})
    async with MockAPI(settings) as api:
        for offset in (0, 10):  # each URL has its own attempts
            url = f"{api.url}/v1/laps?offset={offset}&limit=10"
            assert (await get(client, url))[0] == 503
            with pytest.raises(aiohttp.ClientPayloadError):
                async with client.get(url) as r:
                    await r.read()
            status, body = await get(client, f"{api.url}/v1/laps?limit=10&offset={offset}")
            assert status == 200 and body["results"] == api.dataset.laps[offset : offset + 10]
        assert api.stats.faults == {"status_503": 2, "reset_mid_body": 2}
        assert api.faults.attempts("/v1/laps", "offset=0&limit=10") == 3


async def test_forced_faults_by_prefix_and_by_exact_url(client: aiohttp.ClientSession) -> None:
    faults: dict[str, Any] = {
        "/partner/users": ("status_500",),
        "/v1/laps?offset=10&limit=5": ("status_503",),
    }
    async with MockAPI(MockSettings.small(forced_faults=faults)) as api:
        assert (await get(client, f"{api.url}/partner/users/1"))[0] == 500
        assert (await get(client, f"{api.url}/partner/users/2"))[0] == 500
        assert (await get(client, f"{api.url}/v1/laps?limit=5&offset=0"))[0] == 200
        assert (await get(client, f"{api.url}/v1/laps?limit=5&offset=10"))[0] == 503


def test_random_faults_are_seeded_and_stop_at_max_faults_per_url() -> None:
    def plan_for(seed: int) -> list[str | None]:
        plan = FaultPlan(MockSettings.small(seed=seed, fault_rate=0.3, fault_kinds=FAULT_KINDS))
        return [plan.choose(f"/partner/users/{i}", "") for i in range(400)]

    first = plan_for(1)
    assert first == plan_for(1) != plan_for(2)
    assert 60 < sum(k is not None for k in first) < 180
    assert set(first) == {None, *FAULT_KINDS}
    always = FaultPlan(MockSettings.small(fault_rate=1.0, max_faults_per_url=2))
    assert [always.choose("/v1/meetings", "year=2024") is not None for _ in range(4)] == [
        True,
        True,
        False,
        False,
    ]


async def test_random_faults_are_counted(client: aiohttp.ClientSession) -> None:
    settings = MockSettings.small(fault_rate=1.0, fault_kinds=("status_500",))
    async with MockAPI(settings) as api:
        statuses = [(await get(client, f"{api.url}/v1/meetings"))[0] for _ in range(3)]
        assert statuses == [500, 500, 200]
        assert api.stats.faults == {"status_500": 2} and api.stats.by_status[500] == 2


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({}, "", 401),
        ({"Authorization": "Bearer s3cret"}, "", 200),
        ({"X-API-Key": "s3cret"}, "", 200),
        ({}, "?api_key=s3cret", 200),
        ({"Authorization": "Bearer wrong"}, "", 401),
        ({"X-API-Key": "s3cre"}, "", 401),
    ],
)
async def test_a_token_requires_credentials(
    client: aiohttp.ClientSession, headers: dict[str, str], query: str, status: int
) -> None:
    async with MockAPI(MockSettings.small(token="s3cret")) as api:
        assert (await get(client, f"{api.url}/v1/meetings{query}", headers=headers))[0] == status
        assert api.stats.auth_seen == (1 if headers or query else 0)
        assert api.stats.unauthorized == (1 if status == 401 else 0)


async def test_credentials_are_counted_even_when_not_required(
    api: MockAPI, client: aiohttp.ClientSession
) -> None:
    await get(client, f"{api.url}/v1/meetings", headers={"X-API-Key": "k"})
    await get(client, f"{api.url}/v1/meetings")
    assert (api.stats.auth_seen, api.stats.requests) == (1, 2)


# -- admin, latency, lifecycle -------------------------------------------------------------


async def test_stats_route_reports_counters_and_is_not_counted(
    client: aiohttp.ClientSession,
) -> None:
    settings = MockSettings.small(
        token="t", rate_limits=((1, 60.0),), fault_rate=1.0, fault_kinds=("status_500",)
    )
    async with MockAPI(settings) as api:
        await get(client, f"{api.url}/v1/meetings?api_key=t")
        await get(client, f"{api.url}/v1/meetings?api_key=t")
        status, stats = await get(client, f"{api.url}/_stats?log=5")
    assert status == 200  # no token, no limit, no fault for admin routes
    assert stats["requests"] == 2 and stats["by_path"] == {"/v1/meetings": 2}
    assert stats["violations"] == 1 and stats["sent_429"] == 1 and stats["auth_seen"] == 2
    assert stats["windows"] == [{"limit": 1, "seconds": 60.0, "violations": 1, "max_in_window": 1}]
    assert stats["faults"] == {"status_500": 1}
    assert [e[1:] for e in stats["log"]] == [
        ["GET", "/v1/meetings", 500],
        ["GET", "/v1/meetings", 429],
    ]


async def test_reset_route_zeroes_counters_and_replays_faults(
    client: aiohttp.ClientSession,
) -> None:
    async with MockAPI(forced("status_503")) as api:
        data = api.dataset
        assert (await get(client, f"{api.url}/v1/meetings"))[0] == 503
        async with client.post(f"{api.url}/_reset") as r:
            assert r.status == 200
        assert (api.stats.requests, api.stats.faults, len(api.stats.log)) == (0, {}, 0)
        assert (await get(client, f"{api.url}/v1/meetings"))[0] == 503  # attempts forgotten
        assert api.dataset is data


async def test_latency_delays_every_answer(client: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    async with MockAPI(MockSettings.small(latency_ms=30, latency_jitter_ms=5)) as api:
        start = loop.time()
        await get(client, f"{api.url}/v1/meetings")
        assert loop.time() - start >= 0.029  # a lower bound only: sleeps never end early


async def test_serve_runs_until_cancelled(client: aiohttp.ClientSession) -> None:
    ready: asyncio.Future[MockAPI] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(SMALL, port=0, on_ready=ready.set_result))
    api = await ready
    assert api.url.startswith("http://127.0.0.1:") and "requests=0" in repr(api)
    assert (await get(client, f"{api.url}/v1/meetings"))[0] == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "stopped" in repr(api)


async def test_url_only_exists_while_running() -> None:
    api = MockAPI(SMALL)
    with pytest.raises(RuntimeError):
        _ = api.url
    async with api:
        assert api.url.startswith("http://127.0.0.1:")
    with pytest.raises(RuntimeError):
        _ = api.url


# -- the shared fixtures (tests/conftest.py) -----------------------------------------------------


async def test_the_mock_api_fixture_serves_the_small_data_set(mock_api: MockAPI) -> None:
    assert mock_api.settings == MockSettings.small()
    async with aiohttp.ClientSession() as client:
        status, body = await get(client, f"{mock_api.url}/v1/meetings?year=2024")
    assert status == 200 and body == mock_api.dataset.meetings


@pytest.mark.parametrize(
    ("mock_api", "seed", "token"),
    [({"token": "t"}, SMALL.seed, "t"), (MockSettings.small(seed=8), 8, None)],
    indirect=["mock_api"],
)
async def test_the_mock_api_fixture_takes_settings_by_indirect_parametrisation(
    mock_api: MockAPI, seed: int, token: str | None
) -> None:
    assert (mock_api.settings.seed, mock_api.settings.token) == (seed, token)


async def test_start_mock_api_starts_separate_servers(start_mock_api: MockAPIFactory) -> None:
    one, two = await start_mock_api(), await start_mock_api(fault_rate=0.5)
    assert one.url != two.url and two.settings.fault_rate == 0.5
