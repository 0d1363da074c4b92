"""Reading a pipeline config file into a :class:`PipelineConfig`, with every problem reported.

Errors name the file, the field's path (endpoints by name, e.g. ``endpoints[laps].pagination``)
and what was expected; a :class:`ConfigError` carries all of them at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ._config import PipelineConfig
from ._errors import ConfigError, Problem


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read a YAML or JSON config file, apply ``path=value`` overrides and validate it.

    Relative ``from_file.path`` entries are resolved against the config file's folder.
    """
    src = Path(path)
    try:
        text = src.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(src), [Problem("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(src), [Problem("", f"cannot read the file: {exc}")]) from None
    raw = parse_text(text, str(src))
    raw = apply_overrides(raw, overrides, str(src))
    return config_from_dict(raw, str(src), base_dir=src.resolve().parent)


def parse_text(text: str, source: str) -> Any:
    try:
        if source.lower().endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            source, [Problem(f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}")]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [Problem(where, f"invalid YAML: {what}")]) from None


def config_from_dict(
    raw: Any, source: str = "<config>", base_dir: Path | None = None
) -> PipelineConfig:
    if not isinstance(raw, Mapping):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ConfigError(source, [Problem("", f"expected a mapping at the top level, got {got}")])
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, raw)) from None
    if base_dir is not None:
        cfg = _resolve_files(cfg, base_dir)
    return cfg


def _resolve_files(cfg: PipelineConfig, base_dir: Path) -> PipelineConfig:
    endpoints = []
    for e in cfg.endpoints:
        if e.from_file and not Path(e.from_file.path).is_absolute():
            ff = e.from_file.model_copy(update={"path": str(base_dir / e.from_file.path)})
            e = e.model_copy(update={"from_file": ff})
        endpoints.append(e)
    return cfg.model_copy(update={"endpoints": tuple(endpoints)})


def _problems(exc: ValidationError, raw: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        if err["type"] == "too_short" and _raw_at(raw, err["loc"]):
            # pydantic adds "at least 1 item" when every item failed; the items' errors say more.
            continue
        loc = _location(err["loc"], raw)
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see the config reference in README.md)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] in ("union_tag_invalid", "literal_error", "enum"):
            got = err.get("input")
            msg = f"{msg} (got {got!r})" if got is not None and "got" not in msg else msg
        elif "input" in err and err["type"] not in ("model_type", "dict_type"):
            shown = repr(err["input"])
            if len(shown) < 60 and not _is_secretish(loc):
                msg = f"{msg} (got {shown})"
        problems.append(Problem(loc, msg))
    return problems


def _raw_at(raw: Any, loc: tuple[int | str, ...]) -> Any:
    for item in loc:
        try:
            raw = raw[item]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _is_secretish(loc: str) -> bool:
    return "headers" in loc or "auth" in loc


def _location(loc: tuple[int | str, ...], raw: Mapping[str, Any]) -> str:
    """pydantic's ``('endpoints', 2, 'pagination', 'cursor', 'cursor_path')`` becomes
    ``endpoints[laps].pagination.cursor_path``: endpoints by name, union tags dropped."""
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(item, int):
            name = None
            if isinstance(node, list) and 0 <= item < len(node):
                entry = node[item]
                if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                    name = entry["name"]
                node = node[item]
            else:
                node = None
            parts.append(f"[{name}]" if name else f"[{item}]")
            continue
        if isinstance(node, Mapping) and item in node:
            node = node[item]
        elif isinstance(node, Mapping) and item in _DISCRIMINATED:
            # pydantic adds the union tag to the location; it is not a key the user wrote.
            continue
        else:
            node = None
        parts.append(f".{item}" if parts else str(item))
    return "".join(parts)


_DISCRIMINATED = {"none", "offset", "page", "cursor", "next_url", "link_header"}


def apply_overrides(raw: Any, overrides: Iterable[str], source: str) -> Any:
    """Apply ``--set a.b.c=value`` overrides; ``endpoints.<name>.x`` selects by name.

    Values are read as YAML scalars (``true``, ``42``, ``[1, 2]`` work).
    """
    overrides = list(overrides)
    if not overrides:
        return raw
    if not isinstance(raw, dict):
        return raw
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(
                Problem(f"--set {item}", "expected PATH=VALUE, e.g. output.directory=out")
            )
            continue
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        err = _set_path(raw, key.strip().split("."), parsed)
        if err:
            problems.append(Problem(f"--set {key}", err))
    if problems:
        raise ConfigError(source, problems)
    return raw


def _set_path(node: Any, parts: list[str], value: Any) -> str | None:
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part)
            if idx is None:
                names = [e.get("name") for e in node if isinstance(e, dict)]
                return f"no entry named '{part}' (have: {', '.join(map(str, names))})"
            if last:
                node[idx] = value
                return None
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return None
            if not isinstance(node.get(part), dict | list):
                node[part] = {}
            node = node[part]
        else:
            return f"'{'.'.join(parts[:i])}' is not a mapping"
    return None


def _list_index(node: list[Any], part: str) -> int | None:
    for idx, entry in enumerate(node):
        if isinstance(entry, dict) and entry.get("name") == part:
            return idx
    if part.isdigit() and int(part) < len(node):
        return int(part)
    return None
