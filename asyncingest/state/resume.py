"""Starting from a checkpoint: refuse, start over, or resume; and what each job source skips.

``prepare`` decides before anything runs (``--fresh``, fingerprint check, a completed run,
``--retry-failed``); ``JobPlan`` answers, per endpoint, which jobs still need doing and where
a part-way walk continues; ``apply`` folds a writer barrier's answer into the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config.identity import fingerprint, identity, refusal
from ..config.models import PipelineConfig
from ..core.json import loads as json_loads
from ..core.request import Request
from ..errors import ConfigError, Problem, state_corrupt
from ..sink.deadletter import FOLDER as DEAD_LETTER_FOLDER
from ..sink.deadletter import count_left
from .checkpoint import (
    STATE_FOLDER,
    EndpointState,
    RunState,
    has_data,
    load_state,
    request_from_json,
    request_to_json,
    wipe,
    write_atomic,
)
from .progress import BarrierResult


@dataclass(frozen=True)
class Start:
    """How a run starts: the state to continue, whether it resumes, whether it was already complete,
    how many dead-lettered requests were put back.
    """

    state: RunState
    resumed: bool
    already_complete: bool = False
    requeued: int = 0  # dead-lettered requests put back (--retry-failed)


def prepare(cfg: PipelineConfig, output: Path, *, fresh: bool, retry_failed: bool) -> Start:
    """Decide how a run on ``output`` starts: fresh (``--fresh`` deletes the old output), a new
    state, or the saved one; refuses a changed config or data without state, and with
    ``retry_failed`` puts dead-lettered requests back.
    """
    folders = [e.name for e in cfg.endpoints]
    folders += [f for e in cfg.endpoints if (f := e.transform_folder)]
    fp = fingerprint(cfg)
    if fresh:
        wipe(output, folders, [f for e in cfg.endpoints if (f := e.current_folder)])
        return Start(RunState(fp, identity=identity(cfg)), resumed=False)
    old = load_state(output)
    if old is None:
        if has_data(output, folders):
            raise ConfigError(
                str(output),
                [
                    Problem(
                        "output",
                        "holds Parquet files but no asyncingest state, so a run "
                        "here could duplicate them; use --fresh to replace them, or another "
                        "--output",
                    )
                ],
            )
        if retry_failed:
            raise ConfigError(str(output), [Problem("--retry-failed", "no earlier run here")])
        return Start(RunState(fp, identity=identity(cfg)), resumed=False)
    if old.fingerprint != fp:
        raise ConfigError(str(output), refusal(old.fingerprint, old.identity, cfg))
    if old.identity is None:  # a state from before identities were stored: add it
        old.identity = identity(cfg)
    requeued = 0
    if retry_failed:
        requeued = requeue_failed(output, old)
        if requeued:
            old.status = "running"
            for es in old.endpoints.values():
                es.finished = False
            increment = old.current_increment
            if increment is not None:  # the last increment reopens: same window, same partition
                increment.status = "running"
    if old.status == "complete":
        return Start(old, resumed=True, already_complete=True)
    return Start(old, resumed=True, requeued=requeued)


def requeue_failed(output: Path, state: RunState) -> int:
    """Put dead-lettered requests back as part-way walks; keep the refused-record entries."""
    total = 0
    for name, es in state.endpoints.items():
        path = output / DEAD_LETTER_FOLDER / name / "dead-letters.jsonl"
        if not path.exists():
            continue
        keep: list[bytes] = []
        data = path.read_bytes()[: es.dead_letter_bytes]
        for i, line in enumerate(data.splitlines(keepends=True), 1):
            try:
                entry = json_loads(line)
            except orjson.JSONDecodeError as exc:
                raise state_corrupt(path, f"line {i} cannot be read ({exc})") from exc
            if entry.get("kind") == "request" and "job" in entry:
                es.partial[int(entry["job"])] = entry["request"]
                total += 1
            else:
                keep.append(line)
        kept = b"".join(keep)
        write_atomic(path, kept)
        es.dead_letter_bytes = len(kept)
    return total


class JobPlan:
    """What one endpoint still has to do, from its checkpoint state."""

    def __init__(self, es: EndpointState) -> None:
        self.es = es

    @property
    def empty(self) -> bool:
        """Nothing done and nothing part way (read live: a plan outlives checkpoints)."""
        return not self.es.partial and not self.es.done

    def resume_point(self, n: int) -> Request | bool | None:
        """``False``: job ``n`` is done; ``None``: start it; a Request: continue there."""
        part = self.es.partial.get(n)
        if part is not None:
            return request_from_json(part)
        if n in self.es.done:
            return False
        return None


def apply(
    state: RunState, name: str, prior_files: list[str], res: BarrierResult, complete: bool
) -> None:
    """Fold one endpoint's barrier answer into the state: committed files, done jobs, part-way
    walks, committed lengths; ``complete`` marks it finished.
    """
    es = state.endpoint(name)
    es.files = prior_files + [f for f in res.files if f not in prior_files]
    progress = res.progress
    for job, next_request in progress.partial.items():
        es.partial[job] = request_to_json(next_request)
    for start, end in progress.done.ranges():
        es.done.add_range(start, end)
    if es.partial and progress.done.ranges():
        for job in [j for j in es.partial if j in progress.done]:
            del es.partial[job]
    for child, (lines, nbytes) in res.journals.items():
        cs = state.endpoint(child)
        cs.journal_lines, cs.journal_bytes = lines, nbytes
    es.dead_letter_bytes = res.dead_letter_bytes
    if res.finished and complete:
        es.finished = True


def report_json(status: str, result: Any) -> bytes:
    """The run report (``_asyncingest/runs/<run-id>.json``) as JSON bytes."""
    from dataclasses import asdict

    return orjson.dumps(
        {"state": status, "result": asdict(result)},
        option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
        default=str,
    )


def write_run_report(output: Path, status: str, result: Any) -> Path:
    """``OUTPUT/_asyncingest/runs/<run-id>.json``: the run's figures and how it ended
    (``status``: the async engine's state, ``complete`` for a sync run). Both engines."""
    path = output / STATE_FOLDER / "runs" / f"{result.run_id}.json"
    write_atomic(path, report_json(status, result))
    return path


def dead_requests_by_endpoint(output: Path, state: RunState) -> dict[str, int]:
    """Failed requests each endpoint's committed dead letters hold (an incremental endpoint's
    mark does not move past an increment that added some)."""
    out = {}
    for name, es in state.endpoints.items():
        path = output / DEAD_LETTER_FOLDER / name / "dead-letters.jsonl"
        out[name] = count_left(path, es.dead_letter_bytes)[0]
    return out


def dead_letters_left(output: Path, state: RunState) -> tuple[int, int]:
    """``(failed requests, refused records)`` the output's committed dead letters hold."""
    requests = records = 0
    for name, es in state.endpoints.items():
        path = output / DEAD_LETTER_FOLDER / name / "dead-letters.jsonl"
        r, d = count_left(path, es.dead_letter_bytes)
        requests, records = requests + r, records + d
    return requests, records
