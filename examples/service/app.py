"""An aiohttp service that runs asyncingest pipelines on request and reports their progress.

    POST /ingest               {"job": "f1", "output": "name"} -> 202 {"id": ...}
    GET  /ingest               every pipeline of this process: id, job, output, phase
    GET  /ingest/{id}          the pipeline's snapshot (phase, per-endpoint figures, windows)
    POST /ingest/{id}/stop     graceful stop; answers once stopped, with the result
    GET  /health               {"status": "ok", "running": n, "pipelines": m}

Every pipeline of the app shares one :class:`asyncingest.Budget`, so together they stay inside
the API's rate windows. The pipelines run in an event loop of their own on a second thread
(``pipelines_thread=True``, the default: a crawl at full speed does not hold up the requests
the service answers, see README.md), or with ``pipelines_thread=False`` in the service's own
loop. On shutdown each running pipeline is stopped gracefully and, after ``stop_timeout``
seconds, cancelled (see :meth:`IngestService.close`). Run it with
``python -m examples.service.app --base-url http://127.0.0.1:8000`` (README.md beside this file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

import asyncingest

logger = logging.getLogger("examples.service")
T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
#: The jobs the service can run, by name: bundled configs, pointed at ``base_url`` by make_app.
JOBS: Mapping[str, Path] = {
    "f1": REPO / "config" / "f1_crawl.yaml",
    "demo": Path(asyncingest.__file__).parent / "demo" / "demo.yaml",
}
#: An output name is one folder under the service's output directory: no separators, no "..".
OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_BODY = 4096


class BadRequest(Exception):
    """The request body is not what ``POST /ingest`` takes (answered 400)."""


@dataclass(frozen=True)
class Ingestion:
    """One pipeline the service started: its id (the run id), job name and output folder.
    Its methods touch the pipeline, so they run in the pipelines' loop (see PipelineLoop)."""

    id: str
    job: str
    output: Path
    pipeline: asyncingest.Pipeline

    def summary(self) -> dict[str, Any]:
        """What ``GET /ingest`` lists: id, job, output and phase."""
        phase = self.pipeline.snapshot().phase
        return {"id": self.id, "job": self.job, "output": str(self.output), "phase": phase}

    def status(self) -> dict[str, Any]:
        """The status document: the snapshot, plus the result or the error once it has ended."""
        snap = self.pipeline.snapshot()
        doc: dict[str, Any] = {"id": self.id, "job": self.job, "output": str(self.output)}
        doc |= snap.as_dict()
        doc["result"] = doc["error"] = None
        if snap.done:
            try:
                doc["result"] = result_dict(self.pipeline.result)
            except Exception as exc:  # the run's own error: a failed run reports it here
                doc["error"] = f"{type(exc).__name__}: {exc}"
        return doc


def result_dict(result: asyncingest.RunResult) -> dict[str, Any]:
    """A :class:`~asyncingest.RunResult` as JSON-ready data, with its derived figures."""
    doc = dataclasses.asdict(result)
    doc |= {
        "ok": result.ok,
        "exit_code": result.exit_code,
        "requests": result.requests,
        "records_written": result.records_written,
    }
    return doc


class PipelineLoop:
    """Where the pipelines run: the service's own event loop, or (``thread=True``) an event loop
    of their own on a second thread (:class:`asyncingest.PipelineThread`). A pipeline, and the
    budget they share, belong to one loop; everything that touches them goes through
    :meth:`run`."""

    def __init__(self, *, thread: bool) -> None:
        self._thread = asyncingest.PipelineThread() if thread else None

    async def run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``await fn()`` in the pipelines' loop. Shielded: cancelling the caller (a client
        hanging up) does not cancel it; cancelling a pipeline's start or stop would cancel the
        run."""
        if self._thread is None:
            return await asyncio.shield(fn())
        return await self._thread.run(fn)

    async def close(self) -> None:
        """End the pipelines' thread, if any (after the pipelines have ended)."""
        if self._thread is not None:
            await self._thread.close()


class IngestService:
    """The pipelines of one app and what they share: the job configs, the output directory, the
    rate budget and the loop they run in. The HTTP handlers below are thin wrappers around it.
    Its own state (``ingestions``, ``running``) belongs to the service's loop."""

    def __init__(
        self,
        jobs: Mapping[str, asyncingest.PipelineConfig],
        output_dir: Path,
        budget: asyncingest.Budget | None,
        *,
        stop_timeout: float,
        pipelines_thread: bool,
    ) -> None:
        self.jobs = dict(jobs)
        self.output_dir = output_dir
        self.budget = budget  # None: each pipeline keeps its own limiter (for comparison only)
        self.stop_timeout = stop_timeout
        self.pipelines_thread = pipelines_thread
        self.ingestions: dict[str, Ingestion] = {}
        self.running: dict[str, Ingestion] = {}  # kept as they end, so /health stays O(1)
        self._ended_early: set[str] = set()  # ended before start() registered them
        self._loop: PipelineLoop | None = None
        self._watchers: set[asyncio.Task[None]] = set()  # in the pipelines' loop

    @property
    def pipelines(self) -> PipelineLoop:
        if self._loop is None:  # made on first use, so make_app needs no running loop
            self._loop = PipelineLoop(thread=self.pipelines_thread)
        return self._loop

    async def start(self, job: str, output: str | None) -> Ingestion:
        """Start ``job`` writing to ``output_dir/output`` (a new folder ``JOB-<random>`` when
        ``output`` is None); returns once it is under way. An output that a stopped or cancelled
        pipeline used resumes; one a running pipeline holds raises :class:`OutputLocked`."""
        folder = self.output_dir / (output or f"{job}-{uuid.uuid4().hex[:8]}")
        service_loop = asyncio.get_running_loop()

        async def start_in_pipelines_loop() -> Ingestion:
            pipeline = asyncingest.Pipeline(self.jobs[job], budget=self.budget, output=folder)
            await pipeline.start()
            ingestion = Ingestion(pipeline.run_id, job, folder, pipeline)
            watcher = asyncio.create_task(self._watch(ingestion, service_loop))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
            return ingestion

        ingestion = await self.pipelines.run(start_in_pipelines_loop)
        self.ingestions[ingestion.id] = ingestion
        if ingestion.id in self._ended_early:
            self._ended_early.discard(ingestion.id)
        else:
            self.running[ingestion.id] = ingestion
        logger.info("started %s (%s) -> %s", ingestion.id, job, folder)
        return ingestion

    async def _watch(self, ingestion: Ingestion, service_loop: asyncio.AbstractEventLoop) -> None:
        """Waits for the pipeline's end to log it and tell the service (in its own loop)."""
        try:
            result = await ingestion.pipeline.wait()
            how = "stopped" if result.stopped else "finished"
            logger.info(
                "%s %s: %d records, %d requests",
                *(ingestion.id, how, result.records_written, result.requests),
            )
        except Exception as exc:  # the status reports it too
            logger.warning("%s failed: %s", ingestion.id, exc)
        finally:
            service_loop.call_soon_threadsafe(self._ended, ingestion.id)

    def _ended(self, id: str) -> None:
        if self.running.pop(id, None) is None:
            self._ended_early.add(id)

    async def snapshot(self, ingestion: Ingestion) -> asyncingest.Snapshot:
        async def snapshot() -> asyncingest.Snapshot:
            return ingestion.pipeline.snapshot()

        return await self.pipelines.run(snapshot)

    async def status(self, ingestion: Ingestion) -> dict[str, Any]:
        async def status() -> dict[str, Any]:
            return ingestion.status()

        return await self.pipelines.run(status)

    async def summaries(self) -> list[dict[str, Any]]:
        ingestions = list(self.ingestions.values())

        async def summaries() -> list[dict[str, Any]]:
            return [i.summary() for i in ingestions]

        return await self.pipelines.run(summaries)

    async def stop(self, ingestion: Ingestion) -> asyncingest.RunResult:
        """Graceful stop; returns once every file and the state are committed."""
        return await self.pipelines.run(ingestion.pipeline.stop)

    async def wait(self, ingestion: Ingestion) -> asyncingest.RunResult:
        return await self.pipelines.run(ingestion.pipeline.wait)

    async def close(self) -> None:
        """On shutdown: stop every running pipeline gracefully (no new work, requests in flight
        finish, files and state committed: the same output resumes), and cancel whatever has
        not stopped after ``stop_timeout`` seconds (at once; a cancel keeps what the last
        checkpoint holds and the same output resumes too, asking again for what it dropped)."""
        if self._loop is None:
            return
        running = list(self.running.values())

        async def close_all() -> None:
            await asyncio.gather(*(self._close(i) for i in running))
            await asyncio.gather(*self._watchers)

        await self._loop.run(close_all)
        await self._loop.close()

    async def _close(self, ingestion: Ingestion) -> None:
        pipeline = ingestion.pipeline
        stopping = asyncio.ensure_future(pipeline.stop())
        done, _ = await asyncio.wait((stopping,), timeout=self.stop_timeout)
        if not done:
            logger.warning("%s did not stop in %gs: cancelling", ingestion.id, self.stop_timeout)
            await pipeline.cancel()
        try:
            await stopping
        except (asyncio.CancelledError, Exception) as exc:  # reported, not raised: close all
            logger.warning("%s ended with %s", ingestion.id, type(exc).__name__)


SERVICE = web.AppKey("service", IngestService)

# -- HTTP -------------------------------------------------------------------------------------


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as JSON: aiohttp's own (404 route, 405 method) and anything unexpected."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason)
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return error(500, "internal error")


async def read_body(request: web.Request, jobs: Mapping[str, object]) -> tuple[str, str | None]:
    """``{"job": name, "output": name}``, both optional; the job defaults to the first one."""
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest(f"body larger than {MAX_BODY} bytes")
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise BadRequest("body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object, e.g. {"job": "f1", "output": "laps-2024"}')
    unknown = sorted(set(body) - {"job", "output"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; expected job, output")
    job = body.get("job", next(iter(jobs)))
    if job not in jobs:
        raise BadRequest(f"job: expected one of {', '.join(jobs)}, got {job!r}")
    output = body.get("output")
    if output is not None and not (isinstance(output, str) and OUTPUT_NAME.fullmatch(output)):
        raise BadRequest(f"output: expected a folder name ({OUTPUT_NAME.pattern}), got {output!r}")
    return job, output


async def start_ingest(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        job, output = await read_body(request, service.jobs)
    except BadRequest as exc:
        return error(400, str(exc))
    try:
        ingestion = await service.start(job, output)
    except asyncingest.OutputLocked as exc:
        return error(409, str(exc))
    except asyncingest.AsyncIngestError as exc:  # a damaged checkpoint, a full disk, ...
        return error(500, str(exc))
    location = f"/ingest/{ingestion.id}"
    return web.json_response(
        {"id": ingestion.id, "job": job, "output": str(ingestion.output), "status": location},
        status=202,
        headers={"Location": location},
    )


def find(request: web.Request) -> Ingestion:
    ingestion = request.app[SERVICE].ingestions.get(request.match_info["id"])
    if ingestion is None:
        raise web.HTTPNotFound(reason=f"no ingestion {request.match_info['id']!r}")
    return ingestion


async def list_ingests(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SERVICE].summaries())


async def ingest_status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SERVICE].status(find(request)))


async def stop_ingest(request: web.Request) -> web.Response:
    service, ingestion = request.app[SERVICE], find(request)
    # A run that failed before or while stopping raises its error here: the status says it.
    with contextlib.suppress(Exception):
        await service.stop(ingestion)
    return web.json_response(await service.status(ingestion))


async def health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response(
        {"status": "ok", "running": len(service.running), "pipelines": len(service.ingestions)}
    )


def make_app(
    base_url: str,
    output_dir: str | Path,
    *,
    jobs: Mapping[str, str | Path] = JOBS,
    rate_limits: Sequence[tuple[int, float]] | None = None,
    share_budget: bool = True,
    pipelines_thread: bool = True,
    stop_timeout: float = 10.0,
) -> web.Application:
    """The service, its pipelines reading the API at ``base_url`` and writing under
    ``output_dir``.

    ``jobs``: name -> config file (the first is the default job); each is pointed at
    ``base_url``. ``rate_limits``: the API's windows as ``(requests, seconds)``, for every job
    and the shared budget (default: the first job's ``api.rate_limits``). ``share_budget=False``
    gives each pipeline its own limiter: together they may then exceed the API's windows (kept
    to show what the shared budget prevents). ``pipelines_thread``: run the pipelines in an
    event loop of their own on a second thread (default), or in the service's loop (False).
    ``stop_timeout``: see :meth:`IngestService.close`. A bad config raises
    :class:`asyncingest.ConfigError` here, not on the first request.
    """
    overrides = [f"api.base_url={base_url}"]
    if rate_limits is not None:
        windows = [{"requests": n, "per_seconds": s} for n, s in rate_limits]
        overrides.append(f"api.rate_limits={json.dumps(windows)}")
    configs = {name: asyncingest.load_config(path, overrides) for name, path in jobs.items()}
    if not configs:
        raise ValueError("make_app needs at least one job")
    windows_of_first = next(iter(configs.values())).api.rate_limits
    if rate_limits is None:  # every job keeps to the same windows as the budget
        configs = {
            name: cfg.model_copy(
                update={"api": cfg.api.model_copy(update={"rate_limits": windows_of_first})}
            )
            for name, cfg in configs.items()
        }
    budget = asyncingest.Budget(windows_of_first) if share_budget else None
    service = IngestService(
        configs,
        Path(output_dir),
        budget,
        stop_timeout=stop_timeout,
        pipelines_thread=pipelines_thread,
    )

    app = web.Application(middlewares=[json_errors])
    app[SERVICE] = service
    app.router.add_post("/ingest", start_ingest)
    app.router.add_get("/ingest", list_ingests)
    app.router.add_get("/ingest/{id}", ingest_status)
    app.router.add_post("/ingest/{id}/stop", stop_ingest)
    app.router.add_get("/health", health)

    async def close_pipelines(app: web.Application) -> None:
        await app[SERVICE].close()

    app.on_cleanup.append(close_pipelines)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.service.app", description=__doc__)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the API to read")
    parser.add_argument("--output-dir", default="output/service", help="outputs go under here")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--stop-timeout", type=float, default=10.0)
    parser.add_argument(
        "--in-loop",
        action="store_true",
        help="run the pipelines in the service's own event loop (default: in a loop of their "
        "own on a second thread, which keeps /health fast while they ingest at full speed)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = make_app(
        args.base_url,
        args.output_dir,
        stop_timeout=args.stop_timeout,
        pipelines_thread=not args.in_loop,
    )
    # The host's decision, taken here for this process: a full collection of everything the
    # imports made held the loop ~40 ms at a time while ingesting (benchmarks/RESULTS.md).
    asyncingest.tune_gc()
    if not args.in_loop:
        # The service's loop waits for the GIL in every pass while the pipelines' thread runs:
        # at most 1 ms instead of Python's 5 (benchmarks/RESULTS.md, issue 12, helper speed).
        sys.setswitchinterval(0.001)
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
