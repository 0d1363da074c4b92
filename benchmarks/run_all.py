"""Run the benchmark cases of issue 5 and write ``benchmarks/RESULTS.md``.

    python benchmarks/run_all.py            # the issue's sizes (several minutes)
    python benchmarks/run_all.py --quick    # small sizes, about a minute
    python benchmarks/run_all.py --cases 2,3 --profile /tmp/prof

Each case starts its own mock API in a separate process and runs every client variant in a
fresh process of its own; figures print side by side as each case finishes, then the targets.
Benchmarks are not tests: nothing here fails on a missed target (the exit code is 0 unless a
case could not run at all).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import REPO, machine
from benchmarks._report import CaseReport, targets_markdown, targets_text
from benchmarks.cases import CASES, SIZES, Options, run_case

DEFAULT_RESULTS = REPO / "benchmarks" / "RESULTS.md"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/run_all.py", description=__doc__.splitlines()[0]
    )
    p.add_argument("--quick", action="store_true", help="small sizes (same as --size quick)")
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="default: full")
    p.add_argument("--cases", default=",".join(map(str, CASES)), help="e.g. 1,2 (default: all)")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the engine under pyinstrument in cases 2 and 3; reports go to DIR",
    )
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="Markdown report path")
    p.add_argument("--no-results", action="store_true", help="do not write the Markdown report")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    size = SIZES[args.size or ("quick" if args.quick else "full")]
    cases = [int(c) for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        _parser().error(f"unknown cases {unknown}; choose from {sorted(CASES)}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    opts = Options(size=size, loop=args.loop, profile_dir=args.profile)
    command = shlex.join(["python", "benchmarks/run_all.py", *(argv or sys.argv[1:])])
    info = machine()
    print(f"asyncingest benchmarks, size {size.name}: {command}")
    print(", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    started = time.perf_counter()
    reports: list[CaseReport] = []
    failed: list[str] = []
    for number in cases:
        print(flush=True)
        try:
            report = run_case(number, opts)
        except Exception:
            failed.append(f"case {number}:\n{traceback.format_exc()}")
            print(f"== Case {number} could not run:\n{failed[-1]}", flush=True)
            continue
        reports.append(report)
        print(report.text(), flush=True)
    total = time.perf_counter() - started
    targets = [t for r in reports for t in r.targets]
    print(f"\n== Targets ({size.name} size, {total:.0f} s in all)")
    print(targets_text(targets))
    if not args.no_results:
        kept = _kept(args.results)
        args.results.write_text(_markdown(reports, info, command, size.name, total, failed) + kept)
        print(f"\nwrote {args.results}")
    return 1 if failed else 0


# What follows this line in RESULTS.md is written by other benchmarks (bench_cpu_stage.py,
# bench_instructions.py) or by hand, and a rerun of this script keeps it.
KEEP_MARKER = "<!-- run_all.py keeps everything below this line -->"


def _kept(results: Path) -> str:
    """The part of an existing results file below ``KEEP_MARKER`` (with the marker), or ""."""
    try:
        text = results.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    at = text.find(KEEP_MARKER)
    return "\n" + text[at:] if at >= 0 else ""


def _markdown(
    reports: list[CaseReport],
    info: dict[str, str],
    command: str,
    size: str,
    total: float,
    failed: list[str],
) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run_all.py`; rerun it to replace this part (what follows the "
        "marker near the end is kept). Figures are from one run on the machine below; compare "
        "ratios, not absolute numbers, across machines.",
        "",
        f"- command: `{command}` (size {size}, {total:.0f} s)",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, {info['os']}",
        f"- python: {info['python']}; {info['libraries']}",
        "",
        "## Targets",
        "",
        targets_markdown([t for r in reports for t in r.targets]),
        "",
    ]
    for report in reports:
        lines += [report.markdown(), ""]
    if failed:
        lines += ["## Cases that could not run", "", "```", *failed, "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
