"""CPU per request of the CLI (``python -m asyncingest run``) for two checkouts, alternating.

    git worktree add --detach /tmp/before <commit>
    python benchmarks/ab_cli_cpu.py --before /tmp/before --after . --rounds 5 --ids 20000

One mock API (its own process, no latency, no faults, no rate limit) serves every run. Each run
is the CLI of one checkout in a fresh process on a per-id config (one request per id, 20 in
flight), with its progress display on (plain lines: stdout is not a terminal) and logs at the
default level, in the order before/after, after/before, ... so load from other work on the
machine falls on both alike. The CPU is the child's user + system time (``getrusage`` of
children). Each round runs every checkout on ``--ids`` ids and on ``--base-ids`` ids: CPU per
request is the difference over the difference in ids, so start-up and imports drop out. Prints
every run, then the median per checkout and the ratio. Nothing is kept.

``--instructions`` counts instructions under ``valgrind --tool=callgrind`` instead of CPU
seconds (the same for the same code and inputs whatever else the machine does; one round is
enough; slow, so use a few thousand ids).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncingest.mockapi import MockSettings
from benchmarks import _harness

CONFIG = """\
api:
  base_url: {url}
  retry: {{max_attempts: 4}}
  concurrency: {{requests_per_endpoint: 20}}
output:
  directory: {out}
  max_rows_per_file: 500000
endpoints:
  - name: users
    path: /partner/users/{{user_id}}
    from_file: {{path: {ids}, column: user_id}}
    single_record: true
    primary_key: user_id
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(tree: Path, config: Path, out: Path, callgrind: bool = False) -> tuple[float, float]:
    """One CLI run of ``tree``'s asyncingest: (CPU seconds, or instructions under callgrind,
    wall seconds)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cpu0, t0 = children_cpu(), time.perf_counter()
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.cg"]
    proc = subprocess.run(
        [
            *(valgrind if callgrind else []),
            sys.executable,
            "-m",
            "asyncingest",
            "run",
            str(config),
            "--output",
            str(out),
            "--fresh",
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        check=False,
    )
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: exit {proc.returncode}\n{proc.stderr.decode()[-2000:]}")
    if callgrind:
        found = re.search(rb"Collected : (\d+)", proc.stderr)
        assert found is not None, proc.stderr[-2000:]
        return float(found.group(1)), wall
    return cpu, wall


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/ab_cli_cpu.py", description=__doc__)
    p.add_argument("--before", type=Path, required=True, help="checkout measured first")
    p.add_argument("--after", type=Path, required=True, help="checkout compared with it")
    p.add_argument("--rounds", type=int, default=5, help="runs of each (default 5)")
    p.add_argument("--ids", type=int, default=20_000, help="ids, one request each")
    p.add_argument("--base-ids", type=int, default=1_000, help="ids of the start-up run")
    p.add_argument("--instructions", action="store_true", help="count under callgrind")
    args = p.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    per_request: dict[str, list[float]] = {k: [] for k in trees}
    extra = args.ids - args.base_ids
    unit = "k instructions/request" if args.instructions else "us CPU/request"
    what = "instructions" if args.instructions else "CPU"
    settings = MockSettings.small(latency_ms=0.0, fault_rate=0.0)
    with tempfile.TemporaryDirectory(prefix="ab-cli-") as tmp, _harness.MockServer(settings) as s:
        root = Path(tmp)
        configs = []
        for n in (args.ids, args.base_ids):
            ids = _harness.write_ids_csv(root / f"ids-{n}.csv", n)
            configs.append(root / f"job-{n}.yaml")
            configs[-1].write_text(CONFIG.format(url=s.url, out=root / "out", ids=ids))
        print(f"{args.ids:,} ids, one request each; before {trees['before']}")
        print(f"after {trees['after']}")
        for i in range(args.rounds):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for name in order:
                cg = args.instructions
                cpu, wall = run_cli(trees[name], configs[0], root / f"out-{name}", cg)
                base, _ = run_cli(trees[name], configs[1], root / f"out-{name}-base", cg)
                # us of CPU per request, or thousands of instructions per request
                per_request[name].append((cpu - base) / extra * (1e-3 if cg else 1e6))
                measured = (
                    f"{cpu / 1e9:6.2f} G instructions ({base / 1e9:.2f} G for "
                    if cg
                    else f"{cpu:6.2f} s CPU ({base:.2f} s for "
                )
                print(
                    f"  round {i + 1} {name:6}: {measured}{args.base_ids:,} ids), "
                    f"{wall:6.2f} s wall, {per_request[name][-1]:6.1f} {unit}",
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in per_request.items()}
    for name in trees:
        print(f"{name:6}: median {med[name]:.1f} {unit}")
    print(f"after/before {what} per request: {med['after'] / med['before']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
