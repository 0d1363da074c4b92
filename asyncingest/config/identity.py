"""What decides the records of a run, so a resume can refuse a config that would mix two jobs.

A run's *identity* is the part of the config (and of its input files) that decides which
records it produces and where: the base URL, the endpoints (minus their rate limits and
concurrency), the output compression, and each input file's size and modification time. The
checkpoint stores it with its hash (the fingerprint), so a refused resume names the fields
that changed (``api.base_url: http://a -> http://b``) instead of two hashes. Rate limits,
concurrency, retries, timeouts and credentials are not part of it: they may change.
Secrets are never in it (they come from the environment; a password in the URL is masked).
Endpoint fields at their default are left out, so a setting a later asyncingest adds (at
its default) does not refuse an output an earlier one started.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import orjson
from yarl import URL

from ..errors import Problem
from .models import PipelineConfig

__all__ = ["fingerprint", "identity", "refusal"]

_MAX_VALUE = 80  # characters of a value shown in a change


def identity(cfg: PipelineConfig, *, masked: bool = True) -> dict[str, Any]:
    """The material the fingerprint hashes (JSON-able). ``masked``: with a password in the
    base URL masked, as the state stores it; the fingerprint hashes it unmasked, as it
    always has (so states written before this was stored still match)."""
    url = str(cfg.api.base_url)
    parts: dict[str, Any] = {
        "base_url": _masked(url) if masked else url,
        "endpoints": [
            e.model_dump(
                mode="json",
                # The window's tuning may change between increments: it decides where the
                # next increment starts, not what a resumed one fetches (its window is saved).
                exclude={
                    "rate_limits": True,
                    "concurrency": True,
                    "incremental": {"lag", "initial", "end", "future_tolerance"},
                    # Which parents an increment's children are fetched for, likewise.
                    "for_each": {"parents"},
                },
                by_alias=True,
                exclude_defaults=True,  # a setting added later, at its default, changes nothing
            )
            for e in cfg.endpoints
        ],
        "output": cfg.output.model_dump(mode="json", include={"compression"}),
    }
    if cfg.output.format != "parquet":  # left out at its default: older states still match
        parts["output"]["format"] = cfg.output.format
    inputs: dict[str, list[int] | None] = {}
    for e in cfg.endpoints:
        if e.from_file is not None:
            try:
                st = os.stat(e.from_file.path)
                inputs[e.name] = [st.st_size, st.st_mtime_ns]
            except OSError:
                inputs[e.name] = None
    parts["inputs"] = inputs
    return parts


def fingerprint(cfg: PipelineConfig) -> str:
    """A hash of :func:`identity`: equal fingerprints, same records."""
    material = identity(cfg, masked=False)
    return hashlib.sha256(_sorted_json(material)).hexdigest()[:16]


def _sorted_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: orjson's bytes (what every stored fingerprint hashed), or,
    for an integer beyond 64 bits that orjson refuses (``params: {id: 2**70}``), the standard
    library's, which writes it exactly."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode()


def refusal(old_fingerprint: str, old: dict[str, Any] | None, cfg: PipelineConfig) -> list[Problem]:
    """Why this output cannot be resumed with ``cfg``: each changed field, old -> new, then
    what to do. A state from before identities were stored has only its fingerprint."""
    new_fp = fingerprint(cfg)
    found = changes(old, identity(cfg)) if old is not None else []
    problems = [Problem(where, what) for where, what in found]
    if old is None:
        why = (
            f"the config or an input file changed since this output was started (fingerprint "
            f"{old_fingerprint} -> {new_fp}; its state is from an asyncingest that did not "
            "record the config, so this cannot name the fields)"
        )
    elif not found:
        why = (
            f"the config changed since this output was started (fingerprint {old_fingerprint}"
            f" -> {new_fp}; a masked secret in api.base_url?)"
        )
    else:
        n = len(found)
        what = "this field" if n == 1 else f"these {n} fields"
        why = f"{what} changed since this output was started"
    problems.append(
        Problem(
            "resume",
            f"{why}, so resuming could mix two different jobs' records; run with --fresh to "
            "start over (this deletes the output's data), or undo the change",
        )
    )
    return problems


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, "old -> new")`` for each field that differs, in config terms."""
    out: list[tuple[str, str]] = []
    if old.get("base_url") != new.get("base_url"):
        out.append(("api.base_url", _arrow(old.get("base_url"), new.get("base_url"))))
    old_eps = {e.get("name"): e for e in old.get("endpoints", []) if isinstance(e, dict)}
    new_eps = {e.get("name"): e for e in new.get("endpoints", []) if isinstance(e, dict)}
    for name in old_eps:
        if name not in new_eps:
            out.append((f"endpoints[{name}]", "removed"))
    for name, e in new_eps.items():
        if name not in old_eps:
            out.append((f"endpoints[{name}]", "added"))
        else:
            _diff(f"endpoints[{name}]", old_eps[name], e, out, skip=frozenset({"name"}))
    _diff("output", old.get("output", {}), new.get("output", {}), out)
    old_in, new_in = old.get("inputs", {}), new.get("inputs", {})
    for name in sorted(set(old_in) | set(new_in)):
        a, b = old_in.get(name), new_in.get(name)
        if a != b and name in new_eps:
            path = (new_eps[name].get("from_file") or {}).get("path", "?")
            out.append((f"endpoints[{name}].from_file ({path})", _input_change(a, b)))
    return out


def _diff(
    where: str,
    a: Any,
    b: Any,
    out: list[tuple[str, str]],
    skip: frozenset[str] | set[str] = frozenset(),
) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if key in skip:
                continue
            if key not in b:
                out.append((f"{where}.{key}", _arrow(a[key], None)))
            elif key not in a:
                out.append((f"{where}.{key}", _arrow(None, b[key])))
            else:
                _diff(f"{where}.{key}", a[key], b[key], out)
    elif a != b:
        out.append((where, _arrow(a, b)))


def _input_change(a: list[int] | None, b: list[int] | None) -> str:
    if a is None:
        return "now readable (it was missing)"
    if b is None:
        return "missing (it was readable)"
    if a[0] != b[0]:
        return f"size {a[0]:,} -> {b[0]:,} bytes"
    return "modified (same size, a newer modification time)"


def _arrow(a: Any, b: Any) -> str:
    return f"{_show(a)} -> {_show(b)}"


def _show(v: Any) -> str:
    if v is None:
        return "(not set)"
    text = v if isinstance(v, str) else _sorted_json(v).decode()
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _masked(url: str) -> str:
    """The URL with a password in it masked (the fingerprint then ignores the password)."""
    u = URL(url)
    if u.password is None:
        return url
    return str(u.with_password("***"))
