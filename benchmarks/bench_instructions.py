"""Case 2 in instructions: what each client variant executes per request, under callgrind.

Wall time and CPU time on a shared 2-core machine move by 10-20% from run to run, and the
bare loop's best run decides the case 2 ratio as much as the engine does. Instructions do
not move: ``valgrind --tool=callgrind`` counts them, the same for the same code and inputs
whatever else the machine is doing. This runs each variant of case 2 (the bare aiohttp
loop, asyncingest, asyncingest with the null downloader) against the bundled mock API once
with ``--ids`` ids and once with one id, in a fresh process each, and reports
``(instructions(N) - instructions(1)) / (N - 1)``: the per-request cost with start-up and
imports taken out.

Under callgrind the client runs ~50x slower than the server, so every response is ready
whenever the client looks: this measures the per-request work, not the cost of waking up
for responses that arrive one at a time (which wall-time case 2 includes).

    python benchmarks/bench_instructions.py [--ids 1500] [--variants bare,engine,null]

Needs valgrind (``apt install valgrind``); takes a few minutes (two variants at a time).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import REPO, MockServer, child_env, write_ids_csv
from benchmarks._workloads import FULL, fanout_config
from benchmarks.cases import Options, _bare, _engine

CONCURRENCY = FULL.overhead_concurrency


def spec_for(kind: str, url: str, ids: Path, out: Path) -> dict[str, Any]:
    """The client spec case 2 runs for ``kind`` (``bare``, ``engine`` or ``null``)."""
    opts = Options(size=FULL)
    if kind == "bare":
        return _bare(url, ids, out, CONCURRENCY, opts)
    return _engine(fanout_config(url, ids, out, CONCURRENCY, FULL), out, opts) | {"kind": kind}


def instructions(spec: dict[str, Any], out_file: Path) -> int:
    """Instructions one client process executed (``python -m benchmarks._clients``)."""
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out_file}",
            sys.executable,
            "-m",
            "benchmarks._clients",
        ],
        input=json.dumps(spec).encode(),
        capture_output=True,
        env=child_env(),
        cwd=REPO,
        check=False,
    )
    found = re.search(rb"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{spec['kind']} under callgrind failed:\n{proc.stderr[-2000:]!r}")
    return int(found.group(1))


def per_request(kind: str, url: str, n: int, tmp: Path) -> float:
    one = write_ids_csv(tmp / f"{kind}-1.csv", 1)
    many = write_ids_csv(tmp / f"{kind}-{n}.csv", n)
    base = instructions(spec_for(kind, url, one, tmp / f"out-{kind}-1"), tmp / f"{kind}-1.cg")
    full = instructions(spec_for(kind, url, many, tmp / f"out-{kind}-n"), tmp / f"{kind}-n.cg")
    return (full - base) / (n - 1)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=1500, help="requests per measured run")
    p.add_argument("--variants", default="bare,engine,null")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind not found (apt install valgrind)", file=sys.stderr)
        return 2
    from asyncingest.mockapi import MockSettings

    kinds = [k.strip() for k in args.variants.split(",") if k.strip()]
    with (
        tempfile.TemporaryDirectory() as tmp,
        MockServer(MockSettings.small(latency_ms=0)) as server,
        ThreadPoolExecutor(2) as pool,
    ):
        futures = {k: pool.submit(per_request, k, server.url, args.ids, Path(tmp)) for k in kinds}
        counts = {k: f.result() for k, f in futures.items()}
    print(
        f"instructions per request, {args.ids:,} GET /partner/users/{{id}}, no latency, "
        f"{CONCURRENCY} workers (callgrind; start-up subtracted)"
    )
    bare = counts.get("bare")
    for kind, count in counts.items():
        ratio = f"  bare/this = {bare / count:.2f}x" if bare else ""
        print(f"  {kind:8s} {count / 1000:8.1f} k{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
