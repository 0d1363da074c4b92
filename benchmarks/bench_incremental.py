"""Benchmark incremental runs (issue #14): a daily CRM-shaped increment with 1% of the records
changed, against a full refetch of the same data, side by side in one run.

    python benchmarks/bench_incremental.py [--contacts 25000] [--engagements 2500]
        [--latency-ms 20] [--days 3] [--quick]

The bundled mock API runs in its own process (``MockServer`` of ``_harness.py``: the CRM data
set at the size given, ``--latency-ms`` per request, no faults, no server-side limit). The job
is ``config/crm_incremental.yaml`` (contacts and engagements by ``updatedAfter``, a current table
each, one association look-up per engagement of the increment) with its base URL and output
folder overridden and its rate windows removed, so wall time measures the work, not the
170/10 s window; the requests are what the window charges (the time under it is requests / 17
per second, printed too). The full refetch is the same config without ``incremental`` and
``merge``, run with ``fresh`` into its own folder (what a daily job does today).

One warm-up increment fetches everything (increment 1). Then, per simulated day: 1% of the
contacts and of the engagements are edited (``POST /_edit``) in 24 hourly batches on the mock's
clock (so the increment's 300 s lag re-reads the last batch, not the whole day);
the increment runs, then the full refetch. Requests are counted by the server
(``GET /_stats``), wall time around ``asyncingest.run``. ``--quick``: a tiny size, one day (the
tests run it). Benchmarks report; they do not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402  (after the path set-up above)

import asyncingest  # noqa: E402
from asyncingest.config.loading import config_from_dict  # noqa: E402
from asyncingest.mockapi import MockSettings  # noqa: E402
from benchmarks._harness import MockServer, machine  # noqa: E402

CONFIG = ROOT / "config" / "crm_incremental.yaml"
WINDOW_PER_SECOND = 17.0  # HubSpot's 170 per 10 s
EDITS_PER_DAY = 24  # a day's 1% comes in hourly batches: the lag re-reads the last one only


def _raw(url: str, out: Path, incremental: bool) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    raw["api"]["base_url"] = url
    raw["api"].pop("auth", None)  # the mock runs without a token here
    raw["api"]["rate_limits"] = []
    raw["api"]["concurrency"] = {"endpoints": 3, "requests_per_endpoint": 20}
    raw["output"]["directory"] = str(out)
    if not incremental:
        for e in raw["endpoints"]:
            e.pop("incremental", None)
            e.pop("merge", None)
    return raw


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/_edit", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


async def _timed(server: MockServer, cfg: Any, **kwargs: Any) -> tuple[float, int, Any]:
    before = server.stats()["requests"]
    t0 = time.perf_counter()
    result = await asyncingest.run(cfg, **kwargs)
    seconds = time.perf_counter() - t0
    assert result.exit_code == 0, result
    return seconds, server.stats()["requests"] - before, result


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = MockSettings.small(
        n_contacts=args.contacts,
        n_engagements=args.engagements,
        latency_ms=args.latency_ms,
        fault_rate=0.0,
    )
    rows: list[dict[str, Any]] = []
    folder = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    try:
        with MockServer(settings) as server:
            inc_cfg = config_from_dict(_raw(server.url, folder / "inc", True))
            full_cfg = config_from_dict(_raw(server.url, folder / "full", False))
            seconds, requests, result = await _timed(server, inc_cfg)
            rows.append(_row("increment 1 (first: everything)", seconds, requests, result))
            for day in range(1, args.days + 1):
                changed = 0
                for step in range(EDITS_PER_DAY):  # spread over the day, as real edits are
                    for table in ("contacts", "engagements"):
                        body: dict[str, Any] = {
                            "op": "edit",
                            "table": table,
                            "fraction": 0.01 / EDITS_PER_DAY,
                            "seed": day * 100 + step,
                        }
                        if table == "contacts":
                            body["advance"] = 86_400 / EDITS_PER_DAY
                        changed += len(_post(server.url, body)["ids"])
                seconds, requests, result = await _timed(server, inc_cfg)
                rows.append(
                    _row(f"day {day}: increment ({changed} changed)", seconds, requests, result)
                )
                seconds, requests, result = await _timed(server, full_cfg, fresh=True)
                rows.append(_row(f"day {day}: full refetch", seconds, requests, result))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def _row(what: str, seconds: float, requests: int, result: Any) -> dict[str, Any]:
    return {
        "run": what,
        "requests": requests,
        "records": result.records_written,
        "seconds": seconds,
        "window_seconds": requests / WINDOW_PER_SECOND,
    }


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"CRM-shaped data set: {args.contacts:,} contacts, {args.engagements:,} engagements "
        f"(one association look-up each), {args.latency_ms:g} ms latency, no rate window; "
        f"1% of each table edited per day ({EDITS_PER_DAY} batches)",
        "",
        "| run | requests | records | wall s | s under 170/10 s |",
        "|:---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['requests']:,} | {r['records']:,} | {r['seconds']:.2f} | "
            f"{r['window_seconds']:,.0f} |"
        )
    incs = [r for r in rows if "increment (" in r["run"]]
    fulls = [r for r in rows if "full refetch" in r["run"]]
    if incs and fulls:
        req = sum(r["requests"] for r in incs) / sum(r["requests"] for r in fulls)
        sec = sum(r["seconds"] for r in incs) / sum(r["seconds"] for r in fulls)
        lines += [
            "",
            f"- an increment costs {req:.1%} of a full refetch's requests and {sec:.1%} of its "
            "wall time (sums over the days)",
        ]
    m = machine()
    lines.append(
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM; {m['python']}; "
        f"{m['libraries']}; {m['date']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table (markdown)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contacts", type=int, default=25_000)
    p.add_argument("--engagements", type=int, default=2_500)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a tiny size, one day")
    args = p.parse_args(argv)
    if args.quick:
        args.contacts, args.engagements, args.days, args.latency_ms = 300, 40, 1, 0.0
    asyncingest.tune_gc()
    rows = asyncio.run(bench(args))
    print(report(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
