"""What the CLI says to whoever runs it, besides progress: messages, errors, the end-of-run
summary and the resume command.

Three voices, picked once from the command line:

* text (default): rich text for people; the summary is a table;
* ``--quiet``: errors, and one final summary line (with the resume command when stopped);
* ``--log-format json``: every line on stderr is a JSON object shaped like the log lines
  (``operate.logsub.json_line``: ts, level, logger, event, message, fields); the summary is one
  ``run_summary`` object.

A path or a command a user may paste (the resume command, the output folder) is written on
one line whatever the terminal's width (``soft_wrap``): rich would otherwise break it.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from ..core.result import RunResult
from .logsub import LogFormat, json_line
from .progress import compaction_lines, schema_lines, status_lines, summary_table
from .progress_model import ProgressModel

__all__ = ["Reporter"]

_STYLE = {"error": "bold red", "warning": "yellow"}


class Reporter:
    """The CLI's voice: ``say`` a message, ``error``, ``summary`` at the end of a run."""

    def __init__(self, console: Console, fmt: LogFormat = "text", quiet: bool = False) -> None:
        self.console = console
        self.json = fmt == "json"
        self.quiet = quiet

    def say(self, event: str, text: str, level: str = "info", **fields: Any) -> None:
        """A message; only errors are said under ``--quiet``."""
        if self.quiet and level != "error":
            return
        if self.json:
            self._json(level, event, text, fields)
            return
        style = _STYLE.get(level)
        prefix = f"[{style}]{level}:[/] " if level == "error" and style else ""
        if prefix:
            self.console.print(prefix, end="", highlight=False)
        self.console.print(
            text, style=style if not prefix else None, highlight=False, markup=False, soft_wrap=True
        )

    def error(self, event: str, text: str, **fields: Any) -> None:
        """Say ``text`` at error level (see :meth:`say`)."""
        self.say(event, text, "error", **fields)

    def _json(self, level: str, event: str, text: str, fields: dict[str, Any]) -> None:
        sys.stderr.write(json_line(level, event, text, fields, logger="asyncingest.cli") + "\n")
        sys.stderr.flush()

    # -- the end of a run ------------------------------------------------------------------------

    def stopped_at_once(self, resume: str) -> None:
        """The run was cancelled before it could return a result (a second Ctrl-C)."""
        text = f"stopped at once; to resume: {resume}"
        if self.json:
            self._json("warning", "run_summary", text, {"exit_code": 3, "resume": resume})
        else:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def summary(
        self,
        result: RunResult,
        model: ProgressModel | None = None,
        resume: str | None = None,
        code: int | None = None,
    ) -> None:
        """The end-of-run summary: a table (text), one line (quiet), one object (json)."""
        code = result.exit_code if code is None else code
        output = Path(result.output).resolve()
        report = Path(result.output) / "_asyncingest" / "runs" / f"{result.run_id}.json"
        dead = Path(result.output) / "_dead_letter"
        failed = any(not e.ok for e in result.endpoints)
        line = one_line(result, code, output, resume)
        if self.json:
            fields: dict[str, Any] = {
                "run_id": result.run_id,
                "exit_code": code,
                "ok": result.ok,
                "stopped": result.stopped,
                "note": result.note,
                "duration_s": round(result.duration, 3),
                "records": result.records_written,
                "requests": result.requests,
                "output": str(output),
                "report": str(report) if report.exists() else None,
                "dead_letters": str(dead) if failed else None,
                "resume": resume,
                "endpoints": [_endpoint_fields(result, asdict(e)) for e in result.endpoints],
                "compacted": [asdict(c) for c in result.compacted],
                "increment": asdict(result.increment) if result.increment is not None else None,
            }
            self._json("info" if code == 0 else "warning", "run_summary", line, fields)
            return
        if self.quiet:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)
            return
        print_ = self.console.print
        print_(summary_table(result, model))
        statuses = status_lines(result)
        if statuses:
            print_("responses by status (retried where retryable):", highlight=False)
            for status in statuses:
                print_(f"  {status}", highlight=False, markup=False)
        for note in [*schema_lines(result), *compaction_lines(result), *increment_lines(result)]:
            print_(note, highlight=False, markup=False, soft_wrap=True)
        for e in result.endpoints:
            if not e.ok:
                print_(
                    f"[red]{e.name}[/]: {e.failed_requests} failed requests, "
                    f"{e.records_rejected} rejected records",
                    highlight=False,
                )
                for reason in e.first_errors:
                    print_(f"    {reason}", highlight=False, markup=False, soft_wrap=True)
        if failed:
            print_(f"dead letters: {dead}", highlight=False, markup=False, soft_wrap=True)
        print_(f"output: {output}", highlight=False, markup=False, soft_wrap=True)
        if report.exists():
            print_(f"run report: {report}", highlight=False, markup=False, soft_wrap=True)
        if resume is not None:
            why = f" ({result.note})" if result.note else ""
            print_(
                f"stopped{why}; to resume: {resume}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


def one_line(result: RunResult, code: int, output: Path, resume: str | None) -> str:
    """``run R finished in 3.1s: 1,234 records, 56 requests, 0 failed, 0 rejected -> OUT
    (exit 0)``, with the resume command when the run stopped."""
    failed = sum(e.failed_requests for e in result.endpoints)
    rejected = sum(e.records_rejected for e in result.endpoints)
    how = "finished" if code == 0 else "finished with failures"
    if result.stopped or result.cancelled:
        how = "stopped" + (f" ({result.note})" if result.note else "")
    elif result.note:
        how += f" ({result.note})"
    if result.increment is not None:
        how += f" (increment {result.increment.number})"
    line = (
        f"run {result.run_id} {how} in {result.duration:.1f}s: {result.records_written:,} "
        f"records, {result.requests:,} requests, {failed:,} failed requests, {rejected:,} "
        f"rejected records -> {output} (exit {code})"
    )
    return line + (f"; to resume: {resume}" if resume is not None else "")


def increment_lines(result: RunResult) -> list[str]:
    """``increment 3 (complete), cursor windows:`` and one line per endpoint
    (``contacts: 2024-01-01T00:00:00Z -> 2024-01-02T09:30:00Z, 120 rows``)."""
    inc = result.increment
    if inc is None:
        return []
    state = "complete" if inc.complete else "not complete: the same command resumes it"
    return [f"increment {inc.number} ({state}), cursor windows:"] + [f"  {w}" for w in inc.windows]


def _endpoint_fields(result: RunResult, e: dict[str, Any]) -> dict[str, Any]:
    # files: what the folder holds after compaction; files_committed: this run's commits.
    e["files_committed"] = len(e["files"])
    e["files"] = result.files_after(e["name"])
    e["statuses"] = {str(k): v for k, v in e["statuses"].items()}
    requests = e["requests"]
    e["limiter_wait_per_request_s"] = round(e["limiter_wait"] / requests, 4) if requests else 0.0
    return e
