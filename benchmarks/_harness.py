"""The benchmark harness: the mock API in its own process, each client in its own process.

Why separate processes: on a small machine the server and the client compete for the same
cores, and a server in the client's process would bill its CPU to the client. Here the
server runs in one child process and every client variant in a fresh child of its own, so
each variant's CPU seconds (``time.process_time``, all its threads) and peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) are its own, and the server's CPU is reported
beside them (a server near 100% of a core means the server, not the client, set the pace).

``python -m benchmarks._harness serve`` is the server child: it reads :class:`MockSettings`
as JSON on stdin, starts :class:`MockAPI` on a free loopback port, prints ``READY <url>``
and serves until terminated.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import select
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "RESULT "


def child_env() -> dict[str, str]:
    """The environment for child processes: this checkout first on ``sys.path``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --------------------------------------------------------------------------- the server


class MockServer:
    """The bundled mock API in a child process, for the life of a ``with`` block.

    >>> with MockServer(MockSettings.small(latency_ms=50)) as server:  # doctest: +SKIP
    ...     server.url, server.stats()["requests"], server.cpu_seconds()
    """

    def __init__(self, settings: Any, *, ready_timeout: float = 120.0) -> None:
        self.settings = settings  # a MockSettings; Any keeps this module import-light
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Self:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._harness", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
            cwd=REPO,
        )
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self.settings.model_dump_json().encode())
        proc.stdin.close()
        ready, _, _ = select.select([proc.stdout], [], [], self.ready_timeout)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("READY "):
            self._stop()
            raise RuntimeError(f"mock server did not start (said {line!r})")
        self.url = line.removeprefix("READY ")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def pid(self) -> int:
        assert self._proc is not None, "MockServer is not running"
        return self._proc.pid

    def stats(self, log: int = 0) -> dict[str, Any]:
        """``GET /_stats``: requests, violations, max_in_window, and the last ``log`` arrivals."""
        with urllib.request.urlopen(f"{self.url}/_stats?log={log}", timeout=30) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def cpu_seconds(self) -> float:
        """CPU the server process has used so far (user + system); 0.0 where unknown."""
        return process_cpu_seconds(self.pid)


async def _serve_forever(settings_json: str) -> None:
    from asyncingest.mockapi import MockAPI, MockSettings

    settings = MockSettings.model_validate_json(settings_json)
    async with MockAPI(settings) as api:
        print(f"READY {api.url}", flush=True)
        await asyncio.get_running_loop().create_future()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process, from ``/proc`` (Linux); 0.0 elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the clients


@dataclass(frozen=True)
class Measured:
    """What one client process reported, plus the server CPU it cost."""

    wall: float
    """Seconds of the measured work (imports and interpreter start-up excluded)."""
    cpu: float
    """Client CPU seconds during the work, every thread included."""
    peak_rss_mb: float
    """Peak RSS of the client process over its whole life."""
    base_rss_mb: float
    """RSS after imports, just before the work started."""
    requests: int
    records: int
    server_cpu: float = 0.0
    other_load: float = 0.0
    """Cores' worth of CPU that neither this client nor the server used while the client
    ran: other processes on the machine (a busy neighbour slows every figure down)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_per_1000(self) -> float:
        """Client CPU seconds per 1,000 requests."""
        return 1000 * self.cpu / self.requests if self.requests else 0.0

    @property
    def server_load(self) -> float:
        """Server CPU as a share of one core while this client ran."""
        return self.server_cpu / self.wall if self.wall > 0 else 0.0


class ClientFailed(RuntimeError):
    """A client process exited non-zero or reported nothing."""


def run_client(
    spec: dict[str, Any], server: MockServer | None = None, timeout: float = 3600
) -> Measured:
    """Run one client variant (see ``_clients.py`` for the kinds) in a fresh process."""
    server_before = server.cpu_seconds() if server is not None else 0.0
    busy_before, children_before = machine_busy_seconds(), _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks._clients"],
        input=json.dumps(spec).encode(),
        capture_output=True,
        env=child_env(),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    server_cpu = server.cpu_seconds() - server_before if server is not None else 0.0
    client_cpu = _children_cpu() - children_before
    other = machine_busy_seconds() - busy_before - client_cpu - server_cpu
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.decode(errors="replace")[-3000:]
        raise ClientFailed(f"{spec['kind']} client exited {proc.returncode}:\n{tail}")
    data = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return Measured(server_cpu=server_cpu, other_load=max(0.0, other / elapsed), **data)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``); 0.0 where unknown."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- inputs


def write_ids_csv(path: Path, n: int, start: int = 1) -> Path:
    """A CSV with a ``user_id`` column of ``n`` distinct digit ids."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write("user_id\n")
        step = 100_000
        for lo in range(start, start + n, step):
            hi = min(lo + step, start + n)
            fh.write("".join(f"{i}\n" for i in range(lo, hi)))
    return path


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    """nproc, CPU model, RAM, OS, Python and the date, for RESULTS.md."""
    cpu = platform.processor() or "unknown"
    ram = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    import aiohttp
    import pyarrow

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": f"aiohttp {aiohttp.__version__}, pyarrow {pyarrow.__version__}",
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["serve"]:
        sys.exit("usage: python -m benchmarks._harness serve  (MockSettings JSON on stdin)")
    asyncio.run(_serve_forever(sys.stdin.read()))
