"""The mock API's CRM records that change over time: edits, archives and new records on the
test's mock clock, the ``updatedAfter``/``updatedSince``/``updatedBefore`` filters (boundaries,
time zones, stable keyset paging while records change) and the ``/changes`` sync tokens.

Most tests call the routes directly (pure functions, no server); one goes through HTTP.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import orjson
import pytest

from asyncingest.mockapi import Dataset, MockAPI, MockSettings
from asyncingest.mockapi.routes import BadRequest, Call, Routes

CONTACTS = "/crm/v3/objects/contacts"
ENGAGEMENTS = "/crm/v3/objects/engagements"
T0 = datetime(2024, 3, 2, 12, 0, tzinfo=UTC)


def ask(routes: Routes, path: str, **query: Any) -> tuple[int, Any]:
    q = {k: str(v) for k, v in query.items()}
    try:
        reply = routes.fixed[path].endpoint(Call(q, None, b"", "http://mock"))
    except BadRequest as exc:  # what the server answers 400
        return 400, str(exc)
    return reply.status, orjson.loads(reply.body)


def walk(routes: Routes, path: str, between: Any = None, **query: Any) -> list[dict[str, Any]]:
    """Every page of a CRM list by its ``after`` cursor; ``between(page_number)`` runs between
    pages (to change the data while a client pages)."""
    got: list[dict[str, Any]] = []
    after: str | None = None
    n = 0
    while True:
        status, body = ask(routes, path, **query, **({"after": after} if after else {}))
        assert status == 200, body
        got.extend(body["results"])
        if "paging" not in body:
            return got
        after = body["paging"]["next"]["after"]
        n += 1
        if between is not None:
            between(n)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@pytest.fixture
def data() -> Dataset:
    return Dataset.build(MockSettings.small(n_contacts=40, n_engagements=20))


# -- the dataset's changes ----------------------------------------------------------------------


def test_every_crm_record_has_an_update_time_before_the_mock_clock_starts(data: Dataset) -> None:
    for rows in (data.contacts, data.engagements):
        assert all(r["archived"] is False for r in rows)
        assert max(r["updatedAt"] for r in rows) < iso(data.clock.now)


def test_an_edit_is_seeded_stamped_with_the_clock_and_copies_on_write(data: Dataset) -> None:
    before = list(data.contacts)
    ids = data.edit(0.1, now=T0, seed=3)
    assert len(ids) == 4  # 10% of 40
    again = Dataset.build(MockSettings.small(n_contacts=40, n_engagements=20))
    assert again.edit(0.1, now=T0, seed=3) == ids and again.contacts == data.contacts
    changed = {r["id"]: r for r in data.contacts if r["id"] in ids}
    for old in before:
        if old["id"] in changed:
            new = changed[old["id"]]
            assert new["updatedAt"] == "2024-03-02T12:00:00.000Z"
            assert new["properties"]["lastname"] != old["properties"]["lastname"]
            assert old["updatedAt"] < new["updatedAt"]  # the old version was not touched
    assert [r for r in data.contacts if r["id"] not in ids] == [
        r for r in before if r["id"] not in ids
    ]
    # A second round on the same seed picks again (the round counts), at least one record.
    assert data.edit(0.001, seed=3) != [] and data.clock.now == T0


def test_the_clock_never_goes_back(data: Dataset) -> None:
    data.clock.set(T0)
    with pytest.raises(ValueError):
        data.edit(0.1, now=T0 - timedelta(seconds=1))
    with pytest.raises(ValueError):
        data.clock.advance(-1)


def test_archive_and_create(data: Dataset) -> None:
    victim = data.contacts[5]["id"]
    data.archive([victim], now=T0)
    assert data.crm("contacts").get(victim)["archived"] is True
    new = data.create(2, now=T0 + timedelta(hours=1))
    assert new == [str(10_001 + 40 * 3), str(10_001 + 41 * 3)]
    assert data.contacts[-1]["createdAt"] == "2024-03-02T13:00:00.000Z"
    (eng,) = data.create(1, table="engagements")
    assert data.engagements[-1]["id"] == eng and eng in data.associations
    with pytest.raises(KeyError):
        data.archive(["no-such-id"])


# -- the lists ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CONTACTS, ENGAGEMENTS])
def test_the_unfiltered_list_leaves_archived_records_out(data: Dataset, path: str) -> None:
    table = "contacts" if path == CONTACTS else "engagements"
    rows = getattr(data, table)
    gone = {rows[0]["id"], rows[7]["id"], rows[-1]["id"]}
    data.archive(sorted(gone), table=table, now=T0)
    routes = Routes(data)
    assert walk(routes, path, limit=3) == [r for r in rows if r["id"] not in gone]
    assert walk(routes, path, limit=2, archived="true") == [r for r in rows if r["id"] in gone]
    assert walk(routes, path, limit=3, archived="false") == walk(routes, path, limit=3)


def test_updated_after_is_strict_and_updated_since_inclusive(data: Dataset) -> None:
    ids = data.edit(0.1, now=T0)
    later = data.edit(0.05, now=T0 + timedelta(milliseconds=1))
    routes = Routes(data)
    at_t0 = "2024-03-02T12:00:00Z"
    strictly = {r["id"] for r in walk(routes, CONTACTS, limit=2, updatedAfter=at_t0)}
    assert strictly == set(later)
    inclusive = {r["id"] for r in walk(routes, CONTACTS, limit=2, updatedSince=at_t0)}
    assert inclusive == set(ids) | set(later)
    # The same instant written with an offset, as epoch ms, or with a '+' that arrived as a space.
    for same in ("2024-03-02T14:00:00+02:00", "2024-03-02T14:00:00 02:00", "1709380800000"):
        got = {r["id"] for r in walk(routes, CONTACTS, limit=2, updatedSince=same)}
        assert got == inclusive, same
    # updatedBefore is strict: [since, before) windows tile time without overlap.
    before = {
        r["id"]
        for r in walk(
            routes, CONTACTS, updatedSince=at_t0, updatedBefore="2024-03-02T12:00:00.001Z"
        )
    }
    assert before == set(ids) - set(later)
    assert ask(routes, CONTACTS, updatedAfter="yesterday")[0] == 400
    assert ask(routes, CONTACTS, updatedAfter=at_t0, after="12")[0] == 400


def test_filtered_lists_are_in_update_order_and_include_deletes(data: Dataset) -> None:
    data.clock.set(T0)
    for k in range(5):
        data.edit(0.05, seed=k)
        data.clock.advance(60)
    gone = data.contacts[3]["id"]
    data.archive([gone])
    routes = Routes(data)
    got = walk(routes, CONTACTS, limit=3, updatedSince="2024-03-02T12:00:00Z")
    keys = [(r["updatedAt"], int(r["id"])) for r in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    expected = sorted(
        (r for r in data.contacts if r["updatedAt"] >= "2024-03-02T12:00:00.000Z"),
        key=lambda r: (r["updatedAt"], int(r["id"])),
    )
    assert got == expected and got[-1]["id"] == gone and got[-1]["archived"] is True
    live = walk(routes, CONTACTS, updatedSince="2024-03-02T12:00:00Z", archived="false")
    assert gone not in {r["id"] for r in live}


def test_the_next_link_repeats_the_filters(data: Dataset) -> None:
    data.edit(0.5, now=T0)
    _, body = ask(Routes(data), CONTACTS, limit=2, updatedAfter="2024-01-01T00:00:00Z")
    link = body["paging"]["next"]["link"]
    assert urlsplit(link).path == CONTACTS
    assert dict(parse_qsl(urlsplit(link).query)) == {
        "updatedAfter": "2024-01-01T00:00:00Z",
        "after": body["paging"]["next"]["after"],
        "limit": "2",
    }


@pytest.mark.parametrize("seed", range(8))
def test_paging_a_filter_while_records_change_never_skips_a_change(seed: int) -> None:
    """Edits, archives and new records land between the pages of a "since" walk. Every record
    whose newest version is in the window when the walk ends was served (at that version or,
    for one edited again mid-walk, at the version it had when its page was served and then
    again at the newer one), and no version comes twice. Changes are made at least a
    millisecond after the page before them (one made in the very millisecond of the cursor, with
    a smaller id, lands behind it: what a client's ``lag`` re-reads next time)."""
    data = Dataset.build(MockSettings.small(n_contacts=60, seed=seed))
    rng = random.Random(seed)
    data.edit(0.2, now=T0, seed=seed)
    since = iso(T0)

    def meanwhile(_: int) -> None:
        data.clock.advance(rng.choice([0.001, 1]))
        action = rng.choice(["edit", "archive", "create"])
        if action == "edit":
            data.edit(0.05, seed=rng.randrange(100))
        elif action == "archive":
            data.archive([rng.choice(data.contacts)["id"]])
        else:
            data.create(1, seed=rng.randrange(100))

    got = walk(Routes(data), CONTACTS, between=meanwhile, limit=4, updatedSince=since)
    served = {(r["id"], r["updatedAt"]) for r in got}
    final = [r for r in data.contacts if r["updatedAt"] >= iso(T0)]
    missing = [r["id"] for r in final if (r["id"], r["updatedAt"]) not in served]
    assert not missing
    stamps = [(r["updatedAt"], int(r["id"])) for r in got]
    assert len(set(stamps)) == len(stamps)  # no version twice


# -- the changes feed ---------------------------------------------------------------------------


def changes(routes: Routes, table: str, since: str | None, limit: int = 7) -> tuple[list[Any], str]:
    path = f"/crm/v3/objects/{table}/changes"
    got: list[Any] = []
    token = since
    while True:
        status, body = ask(routes, path, limit=limit, **({"since": token} if token else {}))
        assert status == 200, body
        got.extend(body["results"])
        if not body["hasMore"]:
            assert "paging" not in body
            return got, body["nextSyncToken"]
        assert body["paging"]["next"]["after"] == body["nextSyncToken"]
        token = body["nextSyncToken"]


@pytest.mark.parametrize("table", ["contacts", "engagements"])
def test_a_sync_token_gives_exactly_what_changed_after_it(data: Dataset, table: str) -> None:
    routes = Routes(data)
    first, token = changes(routes, table, None)
    assert first == getattr(data, table) and token == data.sync_token(table)
    assert changes(routes, table, token) == ([], token)  # nothing new: the same token
    ids = data.edit(0.2, table=table, now=T0)
    gone = data.archive([ids[0]], table=table)
    new = data.create(2, table=table)
    got, token2 = changes(routes, table, token, limit=3)
    # Each record once, at its newest version, in change order (the archived one came last).
    assert [r["id"] for r in got] == ids[1:] + gone + new
    assert got == [data.crm(table).get(r["id"]) for r in got]
    assert changes(routes, table, token2) == ([], token2)


def test_a_bad_or_foreign_sync_token_is_a_400(data: Dataset) -> None:
    routes = Routes(data)
    path = "/crm/v3/objects/contacts/changes"
    assert ask(routes, path, since="!!!")[0] == 400
    assert ask(routes, path, since=data.sync_token("engagements"))[0] == 400


# -- over HTTP ----------------------------------------------------------------------------------


async def test_the_admin_edit_route_changes_the_data_a_client_then_sees() -> None:
    async with MockAPI(MockSettings.small()) as api, aiohttp.ClientSession() as client:
        async with client.post(
            f"{api.url}/_edit", json={"fraction": 0.2, "advance": 3600, "seed": 1}
        ) as r:
            assert r.status == 200
            answer = await r.json()
        assert answer["now"] == "2024-03-01T01:00:00.000Z" and len(answer["ids"]) == 5
        url = f"{api.url}{CONTACTS}?updatedAfter=2024-03-01T00:59:59Z&limit=100"
        async with client.get(url) as r:
            body = await r.json()
        assert sorted(c["id"] for c in body["results"]) == sorted(answer["ids"])
        async with client.post(f"{api.url}/_edit", json={"op": "archive", "ids": ["nope"]}) as r:
            assert r.status == 400
        async with client.post(f"{api.url}/_edit", json={"op": "create", "n": 2}) as r:
            assert len((await r.json())["ids"]) == 2
        assert api.stats.requests == 1  # the admin route is not counted
