"""Hostile servers and hostile input: what an attacker (or a broken API) sends, and what holds.

Every test runs the real engine against :mod:`tests.hostile_server` on loopback and asserts on
what the server saw (arrivals per window, raw paths, credentials) or on the run's result and
dead letters. Time limits are small, so nothing waits long.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import TestServer

import asyncingest
from asyncingest import ConfigError, RunResult, config_from_dict
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.sync import run_sync

from .conftest import F1_ENDPOINTS, most_in_any_window, pipeline, read_records
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


MODES = ["async", "sync"]


async def run_in(mode: str, config: Any) -> RunResult:
    """The async engine, or the thread-pool one (in a thread: the server is on this loop)."""
    if mode == "sync":
        return await asyncio.to_thread(run_sync, config)
    return await asyncingest.run(config)


def dead_letters(out: Path, endpoint: str) -> list[dict[str, Any]]:
    path = out / "_dead_letter" / endpoint / "dead-letters.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


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
        "rate_limits": [{"requests": 10, "per_seconds": 0.05}],
        "retry": {**FAST_RETRY, "max_attempts": 10},
        "concurrency": {"requests_per_endpoint": 4},
    }
    result = await asyncingest.run(cfg(base, tmp_path / "o", [endpoint], api=api))
    assert result.ok
    attempts = result.endpoint("r").requests
    assert len(server.arrivals) == attempts
    assert most_in_any_window([a.at for a in server.arrivals], 0.05) <= 10


@pytest.mark.parametrize("mode", MODES)
async def test_every_redirect_hop_holds_its_own_slot(
    hostile: tuple[HostileServer, str], tmp_path: Path, mode: str
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
    api = {"rate_limits": [{"requests": 6, "per_seconds": 0.05}]}
    result = await run_in(mode, cfg(base, tmp_path / "o", [endpoint], api=api))
    assert result.ok
    assert len(server.arrivals) == 48  # each job: the 302 and the page it points at
    assert most_in_any_window([a.at for a in server.arrivals], 0.05) <= 6


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


@pytest.mark.parametrize("mode", MODES)
async def test_a_redirect_loop_is_its_own_failure_not_a_made_up_status(
    hostile: tuple[HostileServer, str], tmp_path: Path, mode: str
) -> None:
    _, base = hostile
    endpoint = {"name": "loop", "path": "redirect-loop", "params": {"q": "1"}}
    result = await run_in(mode, cfg(base, tmp_path, [endpoint]))
    assert result.exit_code == 1
    [dead] = dead_letters(tmp_path, "loop")
    assert "too many redirects" in dead["reason"]
    assert "/h/redirect-loop" in dead["reason"] and dead["attempts"] == 1
    assert "310" not in dead["reason"] and dead["status"] == 302


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

AWKWARD_IDS = [
    "plain42",
    "a/b",
    "q?x=1",
    "h#frag",
    "%2F",
    "%2e%2e",
    "sp ace",
    "new\nline",
    "ünï€",
    "..x",
]
DOT_IDS = ["..", "."]


@pytest.mark.parametrize("template", ["ids/{id}", "ids/{id}?fmt=json"])
@pytest.mark.parametrize("mode", MODES)
async def test_each_id_is_sent_as_exactly_one_encoded_segment(
    hostile: tuple[HostileServer, str], tmp_path: Path, template: str, mode: str
) -> None:
    """``/ ? # %2F``, spaces, newlines, non-ASCII: one percent-encoded segment each, as sent
    on the wire (the server's raw path), never re-normalised; ``..`` and ``.`` (which a
    server or the client itself resolves to the parent path) are refused and dead-lettered,
    and the run goes on."""
    server, base = hostile
    ids = ids_csv(tmp_path, [*AWKWARD_IDS, *DOT_IDS])
    source = {"path": str(ids), "column": "id"}
    endpoint = {"name": "ids", "path": template, "records": "items", "from_file": source}
    result = await run_in(mode, cfg(base, tmp_path / "o", [endpoint]))
    assert result.exit_code == 1
    query = "?fmt=json" if "?" in template else ""
    assert sorted(a.raw_path for a in server.arrivals) == sorted(
        f"/h/ids/{quote(i, safe='')}{query}" for i in AWKWARD_IDS
    )
    refused = dead_letters(tmp_path / "o", "ids")
    assert sorted(d["variables"]["id"] for d in refused) == sorted(DOT_IDS)
    assert all(d["kind"] == "job" and "refused" in d["reason"] for d in refused)
    assert result.endpoint("ids").failures == {"unsafe path value": 2}


@pytest.mark.parametrize("mode", MODES)
async def test_a_dot_segment_id_from_a_parent_record_is_refused(
    hostile: tuple[HostileServer, str], tmp_path: Path, mode: str
) -> None:
    server, base = hostile
    parent = {"name": "parent", "path": "dot-records", "records": "items"}
    child = {
        "name": "child",
        "path": "ids/{id}",
        "records": "items",
        "for_each": {"endpoint": "parent", "bind": ["id"]},
    }
    result = await run_in(mode, cfg(base, tmp_path, [parent, child]))
    assert result.exit_code == 1
    assert sorted(a.raw_path for a in server.arrivals) == ["/h/dot-records", "/h/ids/fine"]
    refused = dead_letters(tmp_path, "child")
    assert sorted(d["variables"]["id"] for d in refused) == [".", ".."]


# -- regression: what already holds, so it keeps holding --------------------------------------


async def test_a_2gb_content_length_is_refused_before_reading(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    _, base = hostile
    result = await asyncingest.run(cfg(base, tmp_path, [{"name": "h", "path": "huge-length"}]))
    assert result.exit_code == 1
    [dead] = dead_letters(tmp_path, "h")
    assert "Content-Length 2000000000 exceeds max_body_bytes" in dead["reason"]
    assert dead["attempts"] == 1


async def test_an_endless_chunked_body_stops_at_max_body_bytes(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    _, base = hostile
    api = {"http": {"max_body_bytes": 256 * 1024}}
    result = await asyncingest.run(cfg(base, tmp_path, [{"name": "e", "path": "endless"}], api=api))
    assert result.exit_code == 1
    [dead] = dead_letters(tmp_path, "e")
    assert "body exceeds max_body_bytes 262144" in dead["reason"]
    assert stopped_after(dead["reason"]) < 2 * 256 * 1024


async def test_a_trickling_body_ends_at_total_timeout(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    """Five bytes a second with a Content-Length of 1000: every gap is short, the whole is
    not; total_timeout ends it."""
    _, base = hostile
    api = {"http": {"total_timeout": 0.25, "read_timeout": 5}, "retry": {"max_attempts": 1}}
    result = await asyncingest.run(cfg(base, tmp_path, [{"name": "t", "path": "trickle"}], api=api))
    assert result.exit_code == 1
    [dead] = dead_letters(tmp_path, "t")
    assert "no complete response within 0.25s" in dead["reason"]


@pytest.mark.parametrize(
    ("route", "why"),
    [
        ("deep", "malformed JSON"),  # nested 100,000 levels
        ("html", "malformed JSON"),  # a maintenance page with status 200
        ("nan", "malformed JSON"),  # NaN and Infinity are not JSON
        ("bad-utf8", "malformed JSON"),
        ("shape", "unexpected body"),  # an object where a list of records belongs
    ],
)
async def test_unusable_bodies_are_retried_then_dead_lettered(
    hostile: tuple[HostileServer, str], tmp_path: Path, route: str, why: str
) -> None:
    server, base = hostile
    endpoint = {"name": "b", "path": route, "records": "items"}
    result = await asyncingest.run(cfg(base, tmp_path, [endpoint]))
    assert result.exit_code == 1 and len(server.arrivals) == FAST_RETRY["max_attempts"]
    [dead] = dead_letters(tmp_path, "b")
    assert (
        why in dead["reason"] and f"after {FAST_RETRY['max_attempts']} attempts" in dead["reason"]
    )


async def test_an_empty_200_and_a_204_are_pages_without_records(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    """With records at the body itself ("$"); where records are at a path ("items"), an
    empty body has no such path and is retried as a body of the wrong shape."""
    _, base = hostile
    endpoints = [
        {"name": "empty", "path": "empty"},
        {"name": "none", "path": "no-content"},
    ]
    result = await asyncingest.run(cfg(base, tmp_path, endpoints))
    assert result.ok and result.records_written == 0


async def test_a_negative_or_garbage_retry_after_is_read_as_no_wait(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    server, base = hostile
    endpoints = [
        {"name": "neg", "path": "retry-after/-30", "records": "items"},
        {"name": "junk", "path": "retry-after/soon%20ish", "records": "items"},
    ]
    api = {"adaptive_rate": False}  # else the garbage one pauses the budget 1 s by default
    result = await asyncingest.run(cfg(base, tmp_path, endpoints, api=api))
    assert result.ok and result.records_written == 2
    assert len(server.arrivals) == 4


async def test_429_forever_stops_within_max_time_and_retry_failed_recovers_later(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    server, base = hostile
    ids = ids_csv(tmp_path, [str(i) for i in range(5)])
    endpoint = {
        "name": "t",
        "path": "throttled",
        "params": {"n": "{id}"},
        "records": "items",
        "primary_key": ["id"],
        "from_file": {"path": str(ids), "column": "id"},
    }
    api = {"retry": {**FAST_RETRY, "max_attempts": 1000, "max_time": 0.3}}
    config = cfg(base, tmp_path / "o", [endpoint], api=api)
    first = await asyncingest.run(config)
    assert first.exit_code == 1
    dead = dead_letters(tmp_path / "o", "t")
    assert len(dead) == 5 and all("max_time 0.3s reached" in d["reason"] for d in dead)
    server.healed = True
    again = await asyncingest.Engine(config, retry_failed=True).run()
    assert again.ok
    assert sorted(r["id"] for r in read_records(tmp_path / "o", "t")) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", ["../x", "/", "a/b", "..", ".", "", "x\\y", "a/../b", "-x"])
def test_unsafe_endpoint_names_are_refused(tmp_path: Path, name: str) -> None:
    """The name is a folder under the output: nothing that climbs out of it or nests."""
    with pytest.raises(ConfigError, match="name"):
        cfg("http://127.0.0.1:9/", tmp_path, [{"name": name, "path": "x"}])


def read_positions(path: Path) -> list[tuple[int, int]]:
    """``(fd, offset)`` of every descriptor this process has open on ``path`` (Linux)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != str(path):
                continue
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        pos = next(line for line in info.splitlines() if line.startswith("pos:"))
        out.append((int(fd), int(pos.split()[1])))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="reads /proc/self/fdinfo")
async def test_five_million_ids_are_streamed_not_loaded(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    """The first request reaches the server while the input file is still being read (the
    reader's offset, from /proc, is short of the end), and the jobs made from it are bounded
    by the queue, not by the file; then the run stops gracefully."""
    server, base = hostile
    n = 5_000_000
    path = tmp_path / "ids.csv"
    with path.open("wb") as fh:
        fh.write(b"id\n")
        for start in range(0, n, 500_000):
            fh.write(b"".join(b"%d\n" % i for i in range(start, min(n, start + 500_000))))
    size = path.stat().st_size
    source = {"path": str(path), "column": "id"}
    endpoint = {"name": "ids", "path": "ids/{id}", "records": "items", "from_file": source}
    pipeline = asyncingest.Pipeline(cfg(base, tmp_path / "o", [endpoint]))
    seen: dict[str, Any] = {}
    stopping: list[asyncio.Task[asyncingest.RunResult]] = []

    def on_arrival(count: int) -> None:
        ids = pipeline.snapshot().endpoint("ids")
        if count == 1:
            seen["positions"] = read_positions(path)
        seen["jobs"] = max(seen.get("jobs", 0), ids.jobs)
        seen["queued"] = max(seen.get("queued", 0), ids.queued)
        if count == 500:
            stopping.append(asyncio.create_task(pipeline.stop()))

    server.on_arrival = on_arrival
    async with pipeline:
        pass
    result = pipeline.result
    assert result.stopped and (await stopping[0]) == result
    positions = seen["positions"]
    assert positions and all(pos < size for _, pos in positions), (positions, size)
    ids = pipeline.snapshot().endpoint("ids")
    assert seen["queued"] <= ids.queue_size
    # Jobs made so far: what was answered, plus one queue and one worker set, never the file.
    assert seen["jobs"] <= len(server.arrivals) + ids.queue_size + ids.workers


async def test_a_retry_after_beyond_max_retry_after_gives_up_naming_it(
    hostile: tuple[HostileServer, str], tmp_path: Path
) -> None:
    """As the README says: a longer Retry-After gives up instead of sleeping (or retrying
    before the server said), and the dead letter says why; --retry-failed asks again."""
    server, base = hostile
    endpoint = {"name": "ra", "path": "retry-after/600", "records": "items"}
    api = {"retry": {**FAST_RETRY, "max_retry_after": 0.2, "max_time": 1000}}
    config = cfg(base, tmp_path, [endpoint], api=api)
    result = await asyncingest.run(config)
    assert result.exit_code == 1 and len(server.arrivals) == 1
    [dead] = dead_letters(tmp_path, "ra")
    assert "Retry-After 600s exceeds max_retry_after 0.2s" in dead["reason"]
    assert (await asyncingest.Engine(config, retry_failed=True).run()).ok


async def test_a_redirect_loop_echoing_the_key_reports_it_redacted(
    hostile: tuple[HostileServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base = hostile
    monkeypatch.setenv("HOSTILE_KEY", "k-0123456789-secret")
    api = {"auth": {"type": "query", "name": "api_key", "env": "HOSTILE_KEY"}}
    endpoint = {"name": "loop", "path": "redirect-loop", "params": {"q": "1"}}
    result = await asyncingest.run(cfg(base, tmp_path, [endpoint], api=api))
    assert result.exit_code == 1
    [dead] = dead_letters(tmp_path, "loop")
    assert "more than 5 redirects, the last to" in dead["reason"]
    assert files_holding(tmp_path, b"0123456789") == []


async def test_resets_with_latency_never_break_the_referees_window(tmp_path: Path) -> None:
    """The issue's case, scaled down, against the bundled mock's referee: connections reset
    before the answer, latency up to 50 ms, a strict window. Every arrival is an attempt the
    limiter granted, and no window of arrivals holds more than the limit."""
    settings = MockSettings.small(
        fault_rate=0.2,
        fault_kinds=("reset_before_answer",),
        rate_limits=((15, 0.25),),
        latency_jitter_ms=50,
    )
    async with MockAPI(settings) as api:
        limits = [{"requests": 15, "per_seconds": 0.25}]
        result = await asyncingest.run(
            pipeline(api.url, F1_ENDPOINTS, tmp_path, rate_limits=limits)
        )
        stats = api.stats
    assert result.ok
    assert stats.faults["reset_before_answer"] > 5  # resets really happened
    assert stats.requests == result.requests  # no arrival without a slot
    assert stats.violations == 0 and stats.max_in_window == [15]
