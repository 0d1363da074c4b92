"""The prober of ``bench_service.py``, a child process of its own (standard library only, so it
starts fast): ``GET /health`` over one keep-alive connection, one request at a time, a pause
between two, for a given time; prints ``RESULT {"latencies": [ms, ...], "errors": n}``.

    python -m benchmarks._health_probe http://127.0.0.1:PORT SECONDS GAP_SECONDS
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from urllib.parse import urlsplit

RESULT_PREFIX = "RESULT "  # as benchmarks._harness reads it


def probe(url: str, seconds: float, gap: float) -> dict[str, object]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()  # reconnects on the next request
        if ok:
            latencies.append((time.perf_counter() - t0) * 1e3)
        else:
            errors += 1
        time.sleep(gap)
    conn.close()
    return {"latencies": latencies, "errors": errors}


if __name__ == "__main__":
    url, seconds, gap = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    print(RESULT_PREFIX + json.dumps(probe(url, seconds, gap)), flush=True)
