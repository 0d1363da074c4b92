"""Named faults (after Scrapy's mock server): which request gets one, and how each is sent.

Choice (:class:`FaultPlan`): a URL's *attempt* is how many times that exact URL (path plus
sorted query) was requested before. ``forced_faults`` gives the fault for each attempt outright;
otherwise a stable hash of ``(seed, url, attempt)`` picks a fault with probability
``fault_rate`` while ``attempt < max_faults_per_url``, so every URL succeeds once retried enough
and the same seed misbehaves the same way in every run.

The kinds (:func:`send_fault`):

=================== ============================================================================
status_500          500 with a JSON error body
status_503          503 with a JSON error body
status_429          429, ``Retry-After: <fault_retry_after>`` (a limit the referee did not set)
reset_mid_body      chunked response; headers and half the body, then the connection is reset (RST)
truncated_body      ``Content-Length`` of the full body, half of it sent, then the connection closed
malformed_json      the real status, ``application/json``, and the first half of the body (invalid)
wrong_shape         valid JSON of the wrong type: ``{"error": "oops"}`` where a list is expected,
                    ``[{"error": "oops"}]`` where an object is
reset_before_answer the connection closed as the request arrives, before any status line (a
                    server's keep-alive idle timeout; aiohttp would silently re-send a GET)
slow_body           the full body in 10 slices spread evenly over ``slow_body_seconds``
=================== ============================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
from collections.abc import Mapping
from typing import NamedTuple

from aiohttp import web

from .settings import FaultKind, MockSettings

JSON = "application/json"


class Reply(NamedTuple):
    """What an endpoint answers, before any fault changes it."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None


def url_key(path: str, query_string: str) -> str:
    """The identity of a URL for attempt counting: the path plus its raw ``name=value`` pairs
    in sorted order (so parameter order does not matter; no decoding, to stay cheap)."""
    if not query_string:
        return path
    return path + "?" + "&".join(sorted(query_string.split("&")))


class FaultPlan:
    """Decides, per request, which fault (if any) to serve. Keeps per-URL attempt counts."""

    def __init__(self, settings: MockSettings) -> None:
        self.seed = settings.seed
        self.rate = settings.fault_rate if settings.fault_kinds else 0.0
        self.kinds = settings.fault_kinds
        self.max_per_url = settings.max_faults_per_url
        self._by_url: dict[str, tuple[FaultKind, ...]] = {}
        self._by_path: dict[str, tuple[FaultKind, ...]] = {}
        prefixes: list[tuple[str, tuple[FaultKind, ...]]] = []
        for key, seq in settings.forced_faults.items():
            path, sep, query = key.partition("?")
            if sep:
                self._by_url[url_key(path, query)] = seq
            else:
                self._by_path[path.rstrip("/") or "/"] = seq
                prefixes.append((path if path.endswith("/") else path + "/", seq))
        self._prefixes = sorted(prefixes, key=lambda p: -len(p[0]))
        self.random_active = self.rate > 0 and self.max_per_url > 0
        self.active = self.random_active or bool(settings.forced_faults)
        self._attempts: dict[str, int] = {}

    def _forced(self, path: str, key: str) -> tuple[FaultKind, ...] | None:
        if self._by_url and key in self._by_url:
            return self._by_url[key]
        seq = self._by_path.get(path)
        if seq is not None:
            return seq
        for prefix, seq in self._prefixes:
            if path.startswith(prefix):
                return seq
        return None

    def choose(self, path: str, query_string: str) -> FaultKind | None:
        """The fault for this arrival (and count the attempt), or None to answer normally."""
        key = url_key(path, query_string)
        forced = self._forced(path, key)
        if forced is None and not self.random_active:
            return None
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        if forced is not None:
            return forced[attempt] if attempt < len(forced) else None
        if attempt >= self.max_per_url:
            return None
        text = f"{self.seed}|{key}|{attempt}".encode()
        digest = hashlib.blake2b(text, digest_size=12).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= self.rate:
            return None
        return self.kinds[int.from_bytes(digest[8:], "big") % len(self.kinds)]

    def attempts(self, path: str, query_string: str = "") -> int:
        """How many times this URL was requested (only tracked while faults may apply)."""
        return self._attempts.get(url_key(path, query_string), 0)

    def reset(self) -> None:
        """Forget how often each URL was requested: every URL starts again at attempt 0."""
        self._attempts.clear()

    def __repr__(self) -> str:
        forced = len(self._by_url) + len(self._by_path)
        return (
            f"FaultPlan(rate={self.rate}, kinds={list(self.kinds)}, "
            f"max_per_url={self.max_per_url}, forced={forced}, urls={len(self._attempts)})"
        )


def _error(status: int, kind: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = b'{"error":"injected fault","fault":"%s"}' % kind.encode()
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


async def send_fault(
    kind: FaultKind,
    request: web.BaseRequest,
    reply: Reply,
    slow_body_seconds: float,
    retry_after: float = 1.0,
) -> web.StreamResponse:
    """Answer ``request`` with fault ``kind`` instead of ``reply`` (whose body it may reuse);
    ``status_429`` says ``Retry-After: <retry_after>`` (``f"{retry_after:g}"``)."""
    if kind == "status_500":
        return _error(500, kind)
    if kind == "status_503":
        return _error(503, kind)
    if kind == "status_429":
        return _error(429, kind, {"Retry-After": f"{retry_after:g}"})
    if kind == "reset_before_answer":
        if request.transport is not None:
            request.transport.close()
        raise ConnectionResetError("reset_before_answer")  # aiohttp sends nothing more
    body = reply.body
    if kind == "malformed_json":
        return web.Response(
            status=reply.status, body=body[: max(1, len(body) // 2)], content_type=JSON
        )
    if kind == "wrong_shape":
        wrong = b'[{"error":"oops"}]' if body[:1] == b"{" else b'{"error":"oops"}'
        return web.Response(status=reply.status, body=wrong, content_type=JSON)
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    response.content_type = JSON
    if kind == "reset_mid_body":
        response.enable_chunked_encoding()
    else:
        response.content_length = len(body)
    try:
        await response.prepare(request)
        if kind == "slow_body":
            step = max(1, -(-len(body) // 10))
            slices = [body[i : i + step] for i in range(0, len(body), step)]
            gap = slow_body_seconds / max(1, len(slices) - 1)
            for i, piece in enumerate(slices):
                if i:
                    await asyncio.sleep(gap)
                await response.write(piece)
            return response
        await response.write(body[: len(body) // 2])
    except ConnectionError:  # the client left first; nothing more to break
        return response
    transport = request.transport
    if transport is not None:
        if kind == "reset_mid_body":
            sock = transport.get_extra_info("socket")
            if sock is not None:  # linger 0: close() sends RST instead of FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    return response
