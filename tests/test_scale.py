"""Scale-out on RabbitMQ (docs/scale-out.md; issue 13 tests 2, 3, 5, 7, 8): workers in subprocesses
against the mock API of this process, one unique queue per test. Skipped when RabbitMQ is not
on 127.0.0.1:5672, unless CI=true (then they fail)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from asyncingest import config_from_dict
from asyncingest.errors import ConfigError
from asyncingest.mockapi import MockAPI, MockSettings
from asyncingest.scale.broker import QueueNames
from asyncingest.scale.commit import RunFolder
from asyncingest.scale.shards import queue_run_id
from asyncingest.scale.submit import submit

from .conftest import (
    F1_ENDPOINTS,
    ROOT,
    MockAPIFactory,
    assert_same_records,
    cli,
    read_records,
    service_required,
)

BROKER = "amqp://guest:guest@127.0.0.1:5672/"
pytestmark = pytest.mark.slow


def _broker_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
async def names() -> AsyncIterator[QueueNames]:
    """A queue pair of its own for one test, deleted afterwards."""
    if not _broker_up():
        if service_required():
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 and CI=true")
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    import aio_pika

    q = QueueNames(f"test.scale.{uuid.uuid4().hex[:10]}")
    yield q
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()
        for name in (q.shards, q.dead, q.run_record("r1")):
            await channel.queue_delete(name)


def job(url: str, out: Path, ids: Path, *, crawl: bool = True) -> Any:
    users = {
        "name": "users",
        "path": "/partner/users/{user_id}",
        "primary_key": "user_id",
        "single_record": True,
        "from_file": {"path": str(ids), "column": "user_id"},
        "concurrency": 4,
    }
    f1 = [e for e in F1_ENDPOINTS if e["name"] in ("meetings", "sessions", "laps")]
    return config_from_dict(
        {
            "api": {
                "base_url": url,
                "retry": {"max_attempts": 8, "backoff_base": 0.01, "backoff_max": 0.05},
                "adaptive_rate": False,
            },
            "output": {"directory": str(out), "row_group_rows": 20, "max_rows_per_file": 50},
            "endpoints": [users, *(f1 if crawl else [])],
        }
    )


def write_ids(tmp_path: Path, n: int) -> list[str]:
    ids = [str(5000 + 7 * i) for i in range(n)]
    (tmp_path / "ids.csv").write_text("user_id\n" + "\n".join(ids) + "\n")
    return ids


def check_output(api: MockAPI, out: Path, ids: list[str], *, crawl: bool = True) -> None:
    """Every record exactly once by primary key (``by_key`` refuses duplicates)."""
    d = api.dataset
    users = [d.user(u) for u in ids]
    assert_same_records(read_records(out, "users"), users, ["user_id"])  # type: ignore[arg-type]
    if crawl:
        assert_same_records(read_records(out, "meetings"), d.meetings, ["meeting_key"])
        assert_same_records(read_records(out, "sessions"), d.sessions, ["session_key"])
        keys = ["session_key", "driver_number", "lap_number"]
        assert_same_records(read_records(out, "laps"), d.laps, keys)


class WorkerProc:
    """A ``worker`` subprocess whose output lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, needle: str, seconds: float = 60) -> None:
        for _ in range(int(seconds * 20)):
            if any(needle in line for line in self.lines) or self.proc.returncode is not None:
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        await self.wait_for("consuming")  # SIGTERM before that ends Python's start-up
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(self.proc.wait(), 60)
        await self._reader
        return rc

    async def exited(self) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), 60)
        await self._reader
        return rc


async def start_worker(
    names: QueueNames | None, crash_at: str | None = None, *args: str
) -> WorkerProc:
    """A worker of the shard queue ``names``, or (``names`` None) one given ``--config``."""
    env = {**os.environ}
    env.pop("ASYNCINGEST_CRASH_AT", None)
    if crash_at:
        env["ASYNCINGEST_CRASH_AT"] = crash_at
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncingest",
        "worker",
        "--broker",
        BROKER,
        *(("--queue", names.shards) if names is not None else ()),
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    worker = WorkerProc(proc)
    _STARTED.append(worker)
    return worker


_STARTED: list[WorkerProc] = []


@pytest.fixture(autouse=True)
async def _no_worker_left() -> AsyncIterator[None]:
    """A test that fails half way must not leave its workers consuming: kill what is left."""
    yield
    while _STARTED:
        worker = _STARTED.pop()
        if worker.proc.returncode is None:
            worker.proc.kill()
            await worker.proc.wait()
        worker._reader.cancel()


async def all_committed(out: Path, run_id: str, total: int, workers: list[WorkerProc]) -> None:
    folder = RunFolder(out, run_id)
    for _ in range(1200):
        if len(await asyncio.to_thread(folder.committed_ids)) >= total:
            return
        if all(w.proc.returncode is not None for w in workers):
            break
        await asyncio.sleep(0.05)
    logs = "\n---\n".join(w.text for w in workers)
    raise AssertionError(f"not all {total} shards committed; worker output:\n{logs}")


def committed_requests(out: Path, run_id: str) -> int:
    folder = RunFolder(out, run_id)
    return sum(int((folder.committed(s) or {})["requests"]) for s in folder.committed_ids())


async def test_bad_broker_urls_exit_2_or_4_without_a_password(tmp_path: Path) -> None:
    """A URL that is not amqp:// is a usage error (2); a broker that does not answer is the
    environment (4); neither prints a traceback or the password."""
    cfg = tmp_path / "job.json"
    cfg.write_text(
        orjson.dumps(
            {
                "api": {"base_url": "http://127.0.0.1:9"},
                "endpoints": [{"name": "meetings", "path": "/v1/meetings"}],
            }
        ).decode()
    )
    rc, out, err = await cli("submit", str(cfg), "--broker", "http://u:s3cretpw@host/")
    assert rc == 2, err
    assert "amqp://" in err and "s3cretpw" not in out + err and "Traceback" not in err
    commands = [("submit", str(cfg)), ("worker",), ("status", "r1")]
    answers = await asyncio.gather(
        *(cli(*args, "--broker", "amqp://u:s3cretpw@127.0.0.1:1/") for args in commands)
    )
    for args, (rc, out, err) in zip(commands, answers, strict=True):
        assert rc == 4, (args, err)
        assert "cannot connect to RabbitMQ" in err, err
        assert "s3cretpw" not in out + err and "Traceback" not in err, err


async def test_sigkill_a_worker_mid_shard_output_equals_one_run(
    tmp_path: Path, names: QueueNames, start_mock_api: MockAPIFactory
) -> None:
    """Test 2: one of two workers SIGKILLs itself in the middle of a shard; the other finishes:
    every record once, and exactly the shard in hand was delivered again. Then status counts
    the run done, and a resubmit of the same run id publishes nothing."""
    api = await start_mock_api()
    ids = write_ids(tmp_path, 120)
    out = tmp_path / "out"
    cfg = job(api.url, out, tmp_path / "ids.csv")
    done = await submit(cfg, BROKER, run_id="r1", output=out, shard_size=20, names=names)
    assert (done.shards, done.published) == (7, 7)  # 6 of users, the meetings walk
    doomed = await start_worker(names, crash_at="page:3")
    await doomed.wait_for("consuming")
    survivor = await start_worker(names)
    # ... and as the walk finishes, one shard of sessions, then one of laps
    await all_committed(out, "r1", 9, [doomed, survivor])
    assert await doomed.exited() == -signal.SIGKILL
    assert await survivor.stop() == 0, survivor.text
    check_output(api, out, ids)
    redelivered = [line for line in survivor.lines if "committed (delivery 2" in line]
    assert len(redelivered) == 1, survivor.text  # the one shard the killed worker held
    assert not list((out / "_asyncingest" / "scale" / "r1" / "staging").iterdir())

    rc, text, err = await cli("status", "r1", "--broker", BROKER, "--queue", names.shards, "--json")
    assert rc == 0, err
    status = orjson.loads(text)
    assert (status["total"], status["done"], status["failed"]) == (9, 9, 0), status
    import aio_pika

    connection = await aio_pika.connect(BROKER)
    async with connection:  # the record expires a week after its last use ...
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="x-expires"):
            await channel.declare_queue(names.run_record("r1"), durable=True)
        channel = await connection.channel()
        await channel.queue_delete(names.run_record("r1"))
    rc, text, err = await cli("status", "r1", "--broker", BROKER, "--queue", names.shards)
    assert rc == 2 and "--output" in err, err
    rc, text, err = await cli(  # ... and then the output's record answers
        "status", "r1", "--broker", BROKER, "--queue", names.shards, "--output", str(out), "--json"
    )
    assert rc == 0, err
    assert orjson.loads(text)["done"] == 9, text
    again = await submit(cfg, BROKER, run_id="r1", output=out, shard_size=20, names=names)
    assert (again.published, again.skipped) == (0, 7)
    with pytest.raises(ConfigError, match="--shard-size"):  # other shards under the same ids
        await submit(cfg, BROKER, run_id="r1", output=out, shard_size=10, names=names)
    (tmp_path / "ids.csv").write_text("user_id\n1\n")
    with pytest.raises(ConfigError, match=r"from_file .*size 608 -> 10 bytes"):
        await submit(cfg, BROKER, run_id="r1", output=out, shard_size=20, names=names)


async def test_children_become_shards_published_once_through_kills(
    tmp_path: Path, names: QueueNames, start_mock_api: MockAPIFactory
) -> None:
    """Test 6: meetings -> sessions -> laps, one binding per child shard. A worker dies after
    publishing a parent's children but before recording that (they are published again by the
    rerun: duplicates), another after recording them but before the commit (the rerun does not
    publish them again); a last worker finishes. Every shard is committed once, every record is
    there once, and every lap page was fetched once."""
    api = await start_mock_api()
    out = tmp_path / "out"
    (tmp_path / "ids.csv").write_text("user_id\n")
    cfg = job(api.url, out, tmp_path / "ids.csv")
    done = await submit(cfg, BROKER, run_id="r1", output=out, shard_size=1, names=names)
    assert (done.shards, done.published) == (1, 1)  # the walk; users has no ids
    for point in ("scale-children-published:1", "scale-children-recorded:1"):
        crashed = await start_worker(names, crash_at=point)
        assert await crashed.exited() == -signal.SIGKILL, crashed.text
    last = await start_worker(names)
    expected = {"meetings-walk", "meetings-walk~sessions-00000", "meetings-walk~sessions-00001"}
    await all_committed(out, "r1", 1 + 2 + 4, [last])
    assert await last.stop() == 0, last.text
    folder = RunFolder(out, "r1")
    ids = folder.committed_ids()
    assert len(ids) == 7 and expected <= ids, ids
    assert sum(1 for i in ids if "~laps-" in i) == 4
    check_output(api, out, [], crawl=True)
    laps = [(folder.committed(i) or {})["requests"] for i in ids if "~laps-" in i]
    assert api.stats.by_path["/v1/laps"] == sum(laps)  # each lap page once


async def test_sigterm_finishes_the_shard_in_hand_and_takes_no_more(
    tmp_path: Path, names: QueueNames, start_mock_api: MockAPIFactory
) -> None:
    """SIGTERM while a shard runs: the worker commits and acks it, takes no other, exits 0."""
    import aio_pika

    api = await start_mock_api(MockSettings.small(latency_ms=40))
    write_ids(tmp_path, 60)
    out = tmp_path / "out"
    cfg = job(api.url, out, tmp_path / "ids.csv", crawl=False)
    await submit(cfg, BROKER, run_id="r1", output=out, shard_size=20, names=names)
    worker = await start_worker(names)
    inflight = out / "_asyncingest" / "scale" / "r1" / "inflight"
    for _ in range(1200):
        if inflight.is_dir() and any(inflight.iterdir()):
            break
        await asyncio.sleep(0.01)
    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.exited() == 0, worker.text
    assert RunFolder(out, "r1").committed_ids() == {"users-00000"}, worker.text
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.shards, passive=True)
        assert queue.declaration_result.message_count == 2


@pytest.mark.parametrize("point", ["scale-committed", "scale-published"])
async def test_crash_between_commit_and_ack_costs_no_request(
    tmp_path: Path, names: QueueNames, start_mock_api: MockAPIFactory, point: str
) -> None:
    """Test 3: killed after the commit record (and after publishing), before the ack: the
    redelivered shard is published and acked with zero HTTP requests."""
    api = await start_mock_api()
    ids = write_ids(tmp_path, 30)
    out = tmp_path / "out"
    cfg = job(api.url, out, tmp_path / "ids.csv", crawl=False)
    await submit(cfg, BROKER, run_id="r1", output=out, shard_size=50, names=names)
    first = await start_worker(names, crash_at=f"{point}:1")
    assert await first.exited() == -signal.SIGKILL, first.text
    assert RunFolder(out, "r1").committed("users-00000") is not None
    before = api.stats.requests
    assert before == 30
    second = await start_worker(names)
    await second.wait_for("was committed already")
    assert await second.stop() == 0
    assert "users-00000 of run r1 was committed already (delivery 2, 0 requests" in second.text
    assert api.stats.requests == before  # not one request on redelivery
    check_output(api, out, ids, crawl=False)


async def test_kill_everything_half_way_then_restart(
    tmp_path: Path, names: QueueNames, start_mock_api: MockAPIFactory
) -> None:
    """Test 5: both workers die mid-shard and the queue is lost; submitting the same run id
    publishes only the shards not committed; new workers finish. The output equals an
    uninterrupted run's; the extra requests are at most the shards in flight x shard size."""
    import aio_pika

    api = await start_mock_api()
    size = 10
    ids = write_ids(tmp_path, 100)
    out = tmp_path / "out"
    cfg = job(api.url, out, tmp_path / "ids.csv", crawl=False)
    await submit(cfg, BROKER, run_id="r1", output=out, shard_size=size, names=names)
    workers = [await start_worker(names, crash_at="page:35") for _ in range(2)]
    for w in workers:
        assert await w.exited() == -signal.SIGKILL, w.text
    committed = RunFolder(out, "r1").committed_ids()
    assert 0 < len(committed) < 10
    connection = await aio_pika.connect(BROKER)
    async with connection:  # the broker lost the queue too
        channel = await connection.channel()
        await channel.queue_delete(names.shards)
    again = await submit(cfg, BROKER, run_id="r1", output=out, shard_size=size, names=names)
    assert (again.published, again.skipped) == (10 - len(committed), len(committed))
    workers = [await start_worker(names) for _ in range(2)]
    await all_committed(out, "r1", 10, workers)
    for w in workers:
        assert await w.stop() == 0, w.text
    check_output(api, out, ids, crawl=False)
    extra = api.stats.requests - committed_requests(out, "r1")
    assert 0 <= extra <= 2 * size, extra


async def test_a_shard_that_keeps_failing_is_dead_lettered_with_the_reason(
    tmp_path: Path, names: QueueNames, start_mock_api: MockAPIFactory
) -> None:
    """Test 7 (shards): a message that is no shard is dead-lettered at once; a shard whose
    config cannot run is requeued until the delivery limit (5), then dead-lettered with the
    reason and a failure record; every other shard completes."""
    import aio_pika

    api = await start_mock_api()
    ids = write_ids(tmp_path, 30)
    out = tmp_path / "out"
    cfg = job(api.url, out, tmp_path / "ids.csv", crawl=False)
    await submit(cfg, BROKER, run_id="r1", output=out, shard_size=10, names=names)
    shard = RunFolder(out, "r1").read_record() or {}
    assert shard["shards"] == ["users-00000", "users-00001", "users-00002"]
    broken = {
        "run_id": "r1",
        "shard_id": "broken-00000",
        "endpoint": "users",
        "kind": "walk",
        "output": str(out),
        "config": {"api": {"base_url": api.url}, "endpoints": []},
    }
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for body in (b"not json at all", orjson.dumps(broken)):
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=names.shards,
            )
        worker = await start_worker(names)
        await all_committed(out, "r1", 3, [worker])
        await worker.wait_for("broken-00000 dead-lettered")
        assert await worker.stop() == 0
        dead = await channel.declare_queue(names.dead, passive=True)
        reasons = {}
        for _ in range(2):
            message = await dead.get(no_ack=True, timeout=5)
            reasons[message.body[:8]] = str(message.headers["x-asyncingest-reason"])
    assert reasons[b"not json"].startswith("not a shard message")
    assert "ValidationError" in reasons[orjson.dumps(broken)[:8]]
    failure = RunFolder(out, "r1").failure("broken-00000") or {}
    assert failure["deliveries"] == 5 and "ValidationError" in failure["reason"]
    check_output(api, out, ids, crawl=False)


# -- from_queue: a queue the user already has (seed 004) -----------------------------------------


@pytest.fixture
async def user_queue(names: QueueNames) -> AsyncIterator[str]:
    """A plain durable (classic) queue of the user's, deleted afterwards with its .dead."""
    import aio_pika

    name = f"{names.shards}.matches"
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True)
    yield name
    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()
        for q in (name, f"{name}.dead", QueueNames(name).run_record(queue_run_id(name))):
            await channel.queue_delete(q)


async def publish(queue: str, bodies: list[dict[str, Any]], ids: bool = True) -> None:
    import aio_pika

    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for i, body in enumerate(bodies):
            await channel.default_exchange.publish(
                aio_pika.Message(
                    orjson.dumps(body),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=f"m{i}" if ids and i % 2 == 0 else None,  # others: a body hash
                ),
                routing_key=queue,
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def committed(out: Path, queue: str, n: int, workers: list[Any]) -> None:
    folder = RunFolder(out, queue_run_id(queue))
    for _ in range(1200):
        if len(await asyncio.to_thread(folder.committed_ids)) >= n:
            return
        if all(w.proc.returncode is not None for w in workers):
            break
        await asyncio.sleep(0.05)
    logs = "\n---\n".join(w.text for w in workers)
    raise AssertionError(f"not all {n} messages committed; worker output:\n{logs}")


async def test_seed_004_queue_to_process_pool_to_parquet_with_metrics(
    tmp_path: Path, user_queue: str, start_mock_api: MockAPIFactory
) -> None:
    """Test 8: session ids published on a plain queue -> 2 workers x 2 pool processes (one
    pool per worker, shared by the two messages it runs at once and by every later one) -> raw
    laps and lap statistics in Parquet, each record once; each worker's Prometheus metrics
    count the messages, durations and errors."""
    api = await start_mock_api()
    laps = dict(next(e for e in F1_ENDPOINTS if e["name"] == "laps"))
    del laps["for_each"]
    laps["from_queue"] = {"queue": user_queue, "field": "session_key"}
    laps["transform"] = {
        "function": "asyncingest.examples.telemetry:lap_stats",
        "initializer": "asyncingest.examples.telemetry:init",
        "batch_size": 1000,
    }
    out = tmp_path / "out"
    cfg = tmp_path / "telemetry.json"
    raw = {
        "api": {"base_url": api.url, "concurrency": {"cpu_workers": 2}},
        "output": {"directory": str(out)},
        "endpoints": [laps],
    }
    cfg.write_bytes(orjson.dumps(raw))
    sessions = [s["session_key"] for s in api.dataset.sessions]
    await publish(user_queue, [{"session_key": k} for k in sessions])
    ports = [free_port(), free_port()]
    workers = [
        await start_worker(
            None,
            None,
            "--config",
            str(cfg),
            "--shards-at-once",
            "2",
            "--metrics-port",
            str(port),
        )
        for port in ports
    ]
    await committed(out, user_queue, len(sessions), workers)
    key = 'queue_messages_processed_total{outcome="committed"}'
    async with aiohttp.ClientSession() as http:
        for _ in range(200):  # a message is counted once acked, just after its commit
            scraped = []
            for port in ports:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    scraped.append(parse_metrics(await r.text()))
            if sum(m[key] for m in scraped) >= len(sessions):
                break
            await asyncio.sleep(0.05)
    rc, text, err = await cli("status", queue_run_id(user_queue), "--broker", BROKER, "--json")
    assert rc == 0, err
    status = orjson.loads(text)
    assert status["source"] == "from_queue" and status["queue"] == user_queue, status
    assert (status["done"], status["failed"], status["total"]) == (len(sessions), 0, len(sessions))
    for w in workers:
        assert await w.stop() == 0, w.text
        assert w.text.count("transform pool of 2 process(es) started") == 1, w.text
    keys = ["session_key", "driver_number", "lap_number"]
    assert_same_records(read_records(out, "laps"), api.dataset.laps, keys)
    stats = read_records(out, "laps_out")
    drivers = {(r["session_key"], r["driver_number"]) for r in api.dataset.laps}
    assert sorted((r["session_key"], r["driver_number"]) for r in stats) == sorted(drivers)
    assert sum(m[key] for m in scraped) == len(sessions), scraped
    assert sum(m["queue_processing_duration_seconds_count"] for m in scraped) == len(sessions)
    for m in scraped:
        assert m['worker_errors_total{kind="dead_lettered"}'] == 0
        assert m['worker_errors_total{kind="requeued"}'] == 0


async def test_a_poison_id_is_dead_lettered_after_the_delivery_limit(
    tmp_path: Path, user_queue: str, start_mock_api: MockAPIFactory
) -> None:
    """Test 7 (from_queue): an id whose every request answers 500 is requeued until the delivery
    limit, then dead-lettered with the reason; every other id is committed, the poison's
    output never is."""
    api = await start_mock_api(
        MockSettings.small(forced_faults={"/partner/users/5007": ("status_500",) * 100})
    )
    users = {
        "name": "users",
        "path": "/partner/users/{user_id}",
        "primary_key": "user_id",
        "single_record": True,
        "from_queue": {"queue": user_queue, "field": "user_id"},
    }
    out = tmp_path / "out"
    cfg = tmp_path / "users.json"
    raw = {
        "api": {
            "base_url": api.url,
            "retry": {"max_attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02},
            "circuit_breaker": None,
        },
        "output": {"directory": str(out)},
        "endpoints": [users],
    }
    cfg.write_bytes(orjson.dumps(raw))
    ids = [str(5000 + 7 * i) for i in range(6)]  # 5007 is the poison
    await publish(user_queue, [{"user_id": u} for u in ids])
    worker = await start_worker(None, None, "--config", str(cfg), "--delivery-limit", "3")
    await committed(out, user_queue, 5, [worker])
    await worker.wait_for("dead-lettered after 3 deliveries")
    assert await worker.stop() == 0, worker.text
    import aio_pika

    connection = await aio_pika.connect(BROKER)
    async with connection:
        channel = await connection.channel()
        dead = await channel.declare_queue(f"{user_queue}.dead", passive=True)
        message = await dead.get(no_ack=True, timeout=5)
    assert orjson.loads(message.body) == {"user_id": "5007"}
    assert "500" in str(message.headers["x-asyncingest-reason"]), message.headers
    good = [api.dataset.user(u) for u in ids if u != "5007"]
    assert_same_records(read_records(out, "users"), good, ["user_id"])  # type: ignore[arg-type]
    assert api.stats.by_path["/partner/users/{user_id}"] == 5 + 3 * 2  # 3 deliveries x 2 tries


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _redis_up() -> bool:
    try:
        import redis  # noqa: F401  -- the optional extra asyncingest[scale]

        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except (ImportError, OSError):
        return False
    return True


WINDOW = (20, 0.5)


@pytest.mark.parametrize("shared", [True, False], ids=["redis-budget", "own-windows"])
async def test_workers_share_one_budget_through_redis(
    tmp_path: Path, names: QueueNames, start_mock_api: MockAPIFactory, shared: bool
) -> None:
    """Test 1's bound across workers: 2 workers x 2 shards at once send through one Redis budget,
    so the server never counts more than the window; each shard on its own windows (the
    control) breaks it, which shows the test can fail."""
    if not _redis_up():
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI=true: the Redis at 127.0.0.1:6379 (and redis-py) are required")
        pytest.skip("no Redis at 127.0.0.1:6379")
    api = await start_mock_api(
        MockSettings.small(rate_limits=(WINDOW,), enforce_rate_limit=False, latency_ms=5)
    )
    # The control's shards last 1 s each at least (40 ids at 20 per 0.5 s), so two of them
    # always overlap by a window: with 20-id shards (one burst each) a loaded machine started
    # each shard's pipeline after the previous had finished, and the control saw no violation.
    write_ids(tmp_path, 160)
    out = tmp_path / "out"
    raw = job(api.url, out, tmp_path / "ids.csv", crawl=False).model_dump(mode="json")
    raw["api"]["rate_limits"] = [{"requests": WINDOW[0], "per_seconds": WINDOW[1]}]
    run_id = f"budget-{uuid.uuid4().hex[:8]}"
    cfg = config_from_dict(raw)
    shard = 20 if shared else 40
    done = await submit(cfg, BROKER, run_id=run_id, output=out, shard_size=shard, names=names)
    budget = ("--budget", "redis://127.0.0.1:6379/0") if shared else ()
    workers = [await start_worker(names, None, "--shards-at-once", "2", *budget) for _ in range(2)]
    try:
        await all_committed(out, run_id, done.shards, workers)
    finally:
        for w in workers:
            await w.stop()
        import aio_pika

        connection = await aio_pika.connect(BROKER)
        async with connection:
            await (await connection.channel()).queue_delete(names.run_record(run_id))
    stats = api.stats
    if shared:
        assert stats.violations == 0 and stats.max_in_window[0] <= WINDOW[0], stats
        assert stats.max_in_window[0] == WINDOW[0]  # and the budget was used up to its limit
    else:
        assert stats.violations > 0 and stats.max_in_window[0] > WINDOW[0], stats


ISSUE_WINDOWS = ((100, 1.0), (170, 10.0))
ISSUE_SECONDS = 60.0


async def test_three_workers_share_the_issue_budget_for_a_minute(
    tmp_path: Path, names: QueueNames, start_mock_api: MockAPIFactory
) -> None:
    """Test 1 at the issue's scale: 3 workers (2 shards at once each) share 100/1 s + 170/10 s
    through Redis against the referee for a minute. The server never counts more than a limit
    in any window, and the first 60 s from the first arrival carry at least 95% of what the
    tighter limit allows (6 x 170). The job (1,100 ids) needs a seventh long window to finish,
    so the workers are busy for the whole minute; the test runs about 65 s."""
    if not _redis_up():
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI=true: the Redis at 127.0.0.1:6379 (and redis-py) are required")
        pytest.skip("no Redis at 127.0.0.1:6379")
    api = await start_mock_api(MockSettings.small(rate_limits=ISSUE_WINDOWS, latency_ms=2))
    write_ids(tmp_path, 1_100)
    out = tmp_path / "out"
    raw = job(api.url, out, tmp_path / "ids.csv", crawl=False).model_dump(mode="json")
    raw["api"]["rate_limits"] = [{"requests": n, "per_seconds": w} for n, w in ISSUE_WINDOWS]
    run_id = f"issue-t1-{uuid.uuid4().hex[:8]}"
    budget = ("--budget", "redis://127.0.0.1:6379/0")
    workers = [await start_worker(names, None, "--shards-at-once", "2", *budget) for _ in range(3)]
    for w in workers:
        await w.wait_for("consuming")
    done = await submit(
        config_from_dict(raw), BROKER, run_id=run_id, output=out, shard_size=20, names=names
    )
    try:
        for _ in range(1200):  # into the first long window
            if api.stats.requests >= 150:
                break
            await asyncio.sleep(0.05)
        rc, text, err = await cli(
            "status", run_id, "--broker", BROKER, "--queue", names.shards, "--json", *budget
        )
        await all_committed(out, run_id, done.shards, workers)
    finally:
        for w in workers:
            await w.stop()
        import aio_pika

        connection = await aio_pika.connect(BROKER)
        async with connection:
            await (await connection.channel()).queue_delete(names.run_record(run_id))
    assert rc == 0, err
    use = orjson.loads(text)["budget"]  # read from Redis while the workers sent
    assert use["error"] is None, use
    assert [(w["limit"], w["seconds"]) for w in use["windows"]] == list(ISSUE_WINDOWS)
    assert 0 < use["windows"][1]["used"] <= 170, use
    stats = api.stats
    arrivals = sorted(e.time for e in stats.log if e.path.startswith("/partner/users"))
    t0 = arrivals[0]
    first_minute = sum(t < t0 + ISSUE_SECONDS for t in arrivals)
    allowed = ISSUE_SECONDS / ISSUE_WINDOWS[1][1] * ISSUE_WINDOWS[1][0]
    peaks = [_most_in_any_window(arrivals, w) for _, w in ISSUE_WINDOWS]
    print(
        f"{len(arrivals)} arrivals over {arrivals[-1] - t0:.1f} s; first {ISSUE_SECONDS:g} s: "
        f"{first_minute} of {allowed:g} allowed ({first_minute / allowed:.1%}); most in any "
        f"window {peaks} (limits {[n for n, _ in ISSUE_WINDOWS]}); violations "
        f"{stats.violations}, 429s {stats.sent_429}"
    )
    assert len(arrivals) == 1_100
    assert (stats.violations, stats.sent_429) == (0, 0), stats
    assert all(p <= n for p, (n, _) in zip(peaks, ISSUE_WINDOWS, strict=True)), peaks
    assert first_minute >= 0.95 * allowed, (first_minute, allowed)


def _most_in_any_window(times: list[float], seconds: float) -> int:
    from bisect import bisect_right

    return max(
        (bisect_right(times, t) - bisect_right(times, t - seconds) for t in times), default=0
    )
