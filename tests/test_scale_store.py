"""Scale-out output to an object store (docs/scale-out.md, "Object stores"): S3 served by moto's
server on a free loopback port, credentials given to the test's processes in the environment.

The store operations are checked on their own; then workers (subprocesses, RabbitMQ on
127.0.0.1:5672, skipped when it is absent unless CI=true) run a job into ``s3://``: a worker
killed between the commit and the publish leaves nothing visible, the redelivered shard costs
no request and writes no second object, and what a reader sees equals a local-folder run by
primary key."""

from __future__ import annotations

import asyncio
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import asyncingest
from asyncingest.errors import ConfigError
from asyncingest.scale.broker import QueueNames
from asyncingest.scale.commit import RunFolder
from asyncingest.scale.store import ArrowStore, check_output, open_store, redact_output
from asyncingest.scale.submit import submit

from .conftest import MockAPIFactory, assert_same_records, by_key, cli, read_records
from .test_scale import BROKER, job, names, start_worker, write_ids
from .test_scale import _no_worker_left as _no_worker_left  # the autouse fixture, here too
from .test_scale import check_output as check_records

__all__ = ["names"]

moto_server = pytest.importorskip("moto.server", reason="moto[server] (the test extra)")

SECRET = f"moto-s3cret-{uuid.uuid4().hex}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for this module."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket; the credentials and the endpoint in this test's environment only (the
    worker subprocesses inherit them), the secret one no log line may show."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import boto3

    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name


def objects(bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix`` (boto3: not through the code under test)."""
    import boto3

    s3 = boto3.client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            out[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def test_credentials_in_the_output_uri_are_refused_without_repeating_them() -> None:
    for uri in (
        "s3://AKIA:topsecret@bucket/run",
        "s3://bucket/run?secret_key=topsecret&access_key=AKIA",
    ):
        with pytest.raises(ConfigError) as caught:
            check_output(uri)
        assert "topsecret" not in str(caught.value) and "environment" in str(caught.value)
    assert check_output("s3://bucket/run?endpoint_override=127.0.0.1:9000") is not None
    assert redact_output("s3://bucket/run?endpoint_override=h:1") == "s3://bucket/run"
    assert check_output("/plain/folder") == "/plain/folder"


def test_the_store_operations_on_s3(bucket: str, moto_endpoint: str) -> None:
    """What the commit protocol relies on: whole objects, create-once, idempotent moves."""
    host = moto_endpoint.removeprefix("http://")
    store = open_store(f"s3://{bucket}/run?endpoint_override={host}&scheme=http")
    assert isinstance(store, ArrowStore) and not store.local
    assert store.get("a/missing.json") is None and not store.exists("a/missing.json")
    assert store.create("c/one.json", b"1") is True
    assert store.create("c/one.json", b"2") is False
    assert store.get("c/one.json") == b"1"
    store.put("c/two.json", b"x")
    assert store.names("c", ".json") == ["one.json", "two.json"]
    assert set(store.ages("c")) == {"one.json", "two.json"}
    store.put("staging/s1.abc/users/part-00000.parquet", b"p")
    store.move("staging/s1.abc/users/part-00000.parquet", "users/part-r-s1-00000.parquet")
    store.move("staging/s1.abc/users/part-00000.parquet", "users/part-r-s1-00000.parquet")
    with pytest.raises(FileNotFoundError):
        store.move("staging/s9.x/users/part-00000.parquet", "users/part-r-s9-00000.parquet")
    store.delete_folders("staging", "s1.")
    keys = set(objects(bucket))
    assert "run/users/part-r-s1-00000.parquet" in keys
    assert not any(k.startswith("run/staging/s1.") and not k.endswith("/") for k in keys)
    assert objects(bucket, "run/users/")["run/users/part-r-s1-00000.parquet"] == b"p"


@pytest.mark.slow  # spawns worker processes
async def test_s3_output_exactly_once_and_equal_to_a_local_run(
    tmp_path: Path,
    names: QueueNames,
    bucket: str,
    start_mock_api: MockAPIFactory,
) -> None:
    """A worker dies right after committing a shard (before publishing it): nothing of that
    shard is visible; the next worker publishes it without a request and runs the rest. Every
    final object exists once, no staging is left, the records read back from S3 equal a
    single-process run into a local folder by primary key, and the secret key is in no log
    line, message or object."""
    api = await start_mock_api()
    ids = write_ids(tmp_path, 60)
    uri = f"s3://{bucket}/run"
    cfg = job(api.url, tmp_path / "unused", tmp_path / "ids.csv")  # output: the URI below
    done = await submit(cfg, BROKER, run_id="r1", output=uri, shard_size=20, names=names)
    assert done.shards == 4 and done.output == uri  # 3 of users, the meetings walk

    first = await start_worker(names, crash_at="scale-committed:1")
    assert await first.exited() == -signal.SIGKILL, first.text
    folder = RunFolder(uri, "r1")
    (shard,) = folder.committed_ids()
    assert not [k for k in objects(bucket, "run/") if "/part-r1-" in k]  # nothing published
    before = api.stats.requests

    second = await start_worker(names)
    expected = 4 + 1 + 1  # and, found by the walk, one shard of sessions, then one of laps
    for _ in range(1200):
        if len(await asyncio.to_thread(folder.committed_ids)) >= expected:
            break
        await asyncio.sleep(0.05)
    await second.wait_for(f"{shard} of run r1 was committed already")
    assert await second.stop() == 0, second.text
    assert f"{shard} of run r1 was committed already (delivery 2, 0 requests" in second.text
    assert len(folder.committed_ids()) == expected, second.text
    manifest = folder.committed(shard) or {}
    assert api.stats.requests - before == sum(
        int((folder.committed(s) or {})["requests"]) for s in folder.committed_ids() if s != shard
    )  # the redelivered shard made none

    stored = objects(bucket, "run/")
    finals = sorted(k for k in stored if "/part-r1-" in k)
    assert len(finals) == len(set(finals))
    listed = sorted(f"run/{f['to']}" for s in folder.committed_ids() for f in _files(folder, s))
    parts = [k for k in listed if k.endswith(".parquet")]
    assert finals == parts, (finals, parts)  # every committed part once, nothing else
    assert all(k.endswith("-00000.parquet") for k in finals)  # one object per endpoint, shard
    assert not [k for k in stored if "/staging/" in k and not k.endswith("/")]
    assert manifest["files"] and all(f["to"] in {k[4:] for k in stored} for f in manifest["files"])

    got = {e: _read_s3(bucket, e) for e in ("users", "meetings", "sessions", "laps")}
    local_cfg = job(api.url, tmp_path / "local", tmp_path / "ids.csv")
    assert (await asyncingest.run(local_cfg)).ok
    keys = {
        "users": ["user_id"],
        "meetings": ["meeting_key"],
        "sessions": ["session_key"],
        "laps": ["session_key", "driver_number", "lap_number"],
    }
    for endpoint, pk in keys.items():
        local = read_records(tmp_path / "local", endpoint)
        assert by_key(got[endpoint], pk).keys() == by_key(local, pk).keys(), endpoint
        assert_same_records(got[endpoint], local, pk)
    check_records(api, tmp_path / "local", ids)

    rc, text, err = await cli("status", "r1", "--broker", BROKER, "--queue", names.shards, "--json")
    assert rc == 0, err
    status = orjson.loads(text)
    assert (status["done"], status["total"], status["failed"]) == (expected, expected, 0)
    logs = first.text + second.text + text + err
    assert SECRET not in logs
    assert not [k for k, body in stored.items() if SECRET.encode() in body]


def _files(folder: RunFolder, shard: str) -> list[dict[str, Any]]:
    return list((folder.committed(shard) or {}).get("files", ()))


def _read_s3(bucket: str, endpoint: str) -> list[dict[str, Any]]:
    import pyarrow.dataset as ds
    import pyarrow.fs as pf

    fs, base = pf.FileSystem.from_uri(f"s3://{bucket}/run/{endpoint}")
    return ds.dataset(base, filesystem=fs, format="parquet").to_table().to_pylist()  # type: ignore[no-any-return]


def test_a_single_process_run_refuses_an_object_store_output(tmp_path: Path) -> None:
    """``run`` writes to a folder: an ``s3://`` output is refused (exit 2 on the CLI), never a
    folder named ``s3:`` in the working directory."""
    cfg = job("http://127.0.0.1:9", tmp_path / "unused", tmp_path / "ids.csv", crawl=False)
    cfg = cfg.model_copy(
        update={"output": cfg.output.model_copy(update={"directory": "s3://bucket/run?x=1"})}
    )
    with pytest.raises(ConfigError, match="scale-out commands"):
        asyncingest.run_sync(cfg)
    assert not Path("s3:").exists()
