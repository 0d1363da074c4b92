"""Hostile servers and hostile input: what an attacker (or a broken API) sends, and what holds.

Every test runs the real engine against :mod:`tests.hostile_server` on loopback and asserts on
what the server saw (arrivals per window, raw paths, credentials) or on the run's result and
dead letters. Time limits are small, so nothing waits long.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import TestServer

import asyncingest
from asyncingest import RunResult, config_from_dict

from .hostile_server import HostileServer

FAST_RETRY = {"max_attempts": 3, "backoff_base": 0.01, "backoff_max": 0.02, "max_time": 5}


@pytest.fixture
async def hostile() -> AsyncIterator[tuple[HostileServer, str]]:
    server = HostileServer()
    async with TestServer(server.app(), host="127.0.0.1") as ts:
        yield server, str(ts.make_url("/h/"))


def cfg(
    base: str,
    out: Path,
    endpoints: list[dict[str, Any]],
    *,
    api: dict[str, Any] | None = None,
) -> Any:
    return config_from_dict(
        {
            "api": {"base_url": base, "retry": FAST_RETRY, **(api or {})},
            "output": {"directory": str(out)},
            "endpoints": endpoints,
        }
    )


def dead_letters(out: Path, endpoint: str) -> list[dict[str, Any]]:
    path = out / "_dead_letter" / endpoint / "dead-letters.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def most_in_any_window(times: list[float], seconds: float) -> int:
    """The largest number of ``times`` in any window (t - seconds, t]."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - seconds:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def ids_csv(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in ids))
    return path


# -- the limit is the law: every request that reaches the server holds its own slot -----------


async def test_a_connection_reset_is_not_resent_behind_the_limiters_back(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    """aiohttp re-sends a GET once when a reused keep-alive connection is closed; that second
    arrival would carry no slot. Here every second arrival is reset: the server must see
    exactly the attempts the limiter granted, and never more than the limit per window."""
    server, base = hostile
    ids = ids_csv(tmp_path, [str(i) for i in range(30)])
    endpoint = {
        "name": "r",
        "path": "reset-every-2nd",
        "params": {"id": "{id}"},
        "records": "items",
        "from_file": {"path": str(ids), "column": "id"},
    }
    api = {
        "rate_limits": [{"requests": 10, "per_seconds": 0.25}],
        "retry": {**FAST_RETRY, "max_attempts": 10},
        "concurrency": {"requests_per_endpoint": 4},
    }
    result = await asyncingest.run(cfg(base, tmp_path / "o", [endpoint], api=api))
    assert result.ok
    attempts = result.endpoint("r").requests
    assert len(server.arrivals) == attempts
    assert most_in_any_window([a.at for a in server.arrivals], 0.25) <= 10


async def test_every_redirect_hop_holds_its_own_slot(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    server, base = hostile
    ids = ids_csv(tmp_path, [str(i) for i in range(24)])
    endpoint = {
        "name": "r",
        "path": "redirect",
        "params": {"id": "{id}"},
        "records": "items",
        "from_file": {"path": str(ids), "column": "id"},
    }
    api = {"rate_limits": [{"requests": 6, "per_seconds": 0.25}]}
    result = await asyncingest.run(cfg(base, tmp_path / "o", [endpoint], api=api))
    assert result.ok
    assert len(server.arrivals) == 48  # each job: the 302 and the page it points at
    assert most_in_any_window([a.at for a in server.arrivals], 0.25) <= 6


async def test_redirects_under_a_concurrency_cap_do_not_deadlock(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    """A hop gives back its slot before asking for the next one: with every worker
    redirected at once and a slot each, nobody waits for a slot someone else holds."""
    server, base = hostile
    ids = ids_csv(tmp_path, [str(i) for i in range(12)])
    endpoint = {
        "name": "r",
        "path": "redirect",
        "params": {"id": "{id}"},
        "records": "items",
        "from_file": {"path": str(ids), "column": "id"},
        "concurrency": 3,
    }
    api = {"concurrency": {"adaptive": True, "requests_per_endpoint": 3}}
    result = await asyncingest.run(cfg(base, tmp_path / "o", [endpoint], api=api))
    assert result.ok and len(server.arrivals) == 24


async def test_a_redirect_loop_is_its_own_failure_not_a_made_up_status(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    _, base = hostile
    endpoint = {"name": "loop", "path": "redirect-loop", "params": {"q": "1"}}
    result = await asyncingest.run(cfg(base, tmp_path, [endpoint]))
    assert result.exit_code == 1
    [dead] = dead_letters(tmp_path, "loop")
    assert "too many redirects" in dead["reason"]
    assert "/h/redirect-loop" in dead["reason"] and dead["attempts"] == 1
    assert "310" not in dead["reason"] and dead["status"] == 302


def run_ok(result: RunResult) -> bool:
    return result.ok


# -- bodies: the cap counts what is kept, after decompression ----------------------------------


def stopped_after(reason: str) -> int:
    match = re.search(r"stopped after (\d+) bytes", reason)
    assert match, reason
    return int(match.group(1))


@pytest.mark.parametrize("route", ["gzip-bomb", "gzip-bomb-chunked"])
async def test_a_gzip_bomb_stops_at_max_body_bytes_decompressed(
    hostile: tuple[HostileServer, str], tmp_path: Path, route: str
) -> None:
    """64 KB of gzip inflate to 64 MB: the cap is counted on the decompressed bytes as they
    stream, so the body is refused after about max_body_bytes, never inflated whole."""
    _, base = hostile
    cap = 256 * 1024
    api = {"http": {"max_body_bytes": cap}}
    result = await asyncingest.run(cfg(base, tmp_path, [{"name": "b", "path": route}], api=api))
    assert result.exit_code == 1
    [dead] = dead_letters(tmp_path, "b")
    assert dead["reason"].startswith("body too large (body exceeds max_body_bytes")
    assert dead["attempts"] == 1  # the same request would inflate the same bomb
    assert cap < stopped_after(dead["reason"]) < cap + 1024 * 1024  # << 64 MB


# -- ids in paths: one percent-encoded segment each, dot segments refused ---------------------

AWKWARD_IDS = ["plain42", "a/b", "q?x=1", "h#frag", "%2F", "sp ace", "new\nline", "ünï€", "..x"]
DOT_IDS = ["..", "."]


@pytest.mark.parametrize("template", ["ids/{id}", "ids/{id}?fmt=json"])
async def test_each_id_is_sent_as_exactly_one_encoded_segment(
    hostile: tuple[HostileServer, str], tmp_path: Path, template: str
) -> None:
    """``/ ? # %2F``, spaces, newlines, non-ASCII: one percent-encoded segment each, as sent
    on the wire (the server's raw path), never re-normalised; ``..`` and ``.`` (which a
    server or the client itself resolves to the parent path) are refused and dead-lettered,
    and the run goes on."""
    server, base = hostile
    ids = ids_csv(tmp_path, [*AWKWARD_IDS, *DOT_IDS])
    source = {"path": str(ids), "column": "id"}
    endpoint = {"name": "ids", "path": template, "records": "items", "from_file": source}
    result = await asyncingest.run(cfg(base, tmp_path / "o", [endpoint]))
    assert result.exit_code == 1
    query = "?fmt=json" if "?" in template else ""
    assert sorted(a.raw_path for a in server.arrivals) == sorted(
        f"/h/ids/{quote(i, safe='')}{query}" for i in AWKWARD_IDS
    )
    refused = dead_letters(tmp_path / "o", "ids")
    assert sorted(d["variables"]["id"] for d in refused) == sorted(DOT_IDS)
    assert all(d["kind"] == "job" and "refused" in d["reason"] for d in refused)
    assert result.endpoint("ids").failures == {"unsafe path value": 2}


async def test_a_dot_segment_id_from_a_parent_record_is_refused(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    server, base = hostile
    parent = {"name": "parent", "path": "dot-records", "records": "items"}
    child = {
        "name": "child",
        "path": "ids/{id}",
        "records": "items",
        "for_each": {"endpoint": "parent", "bind": ["id"]},
    }
    result = await asyncingest.run(cfg(base, tmp_path, [parent, child]))
    assert result.exit_code == 1
    assert sorted(a.raw_path for a in server.arrivals) == ["/h/dot-records", "/h/ids/fine"]
    refused = dead_letters(tmp_path, "child")
    assert sorted(d["variables"]["id"] for d in refused) == [".", ".."]
