"""Reading a pipeline config file into a :class:`PipelineConfig`, with every problem reported.

Errors name the file, the field's path (endpoints by name, e.g. ``endpoints[laps].pagination``)
and what was expected; a :class:`ConfigError` carries all of them at once.

A config is small, so reading one is bounded: a file over :data:`MAX_CONFIG_BYTES` is refused
before it is parsed, and a YAML document whose aliases would expand to more than
:data:`MAX_CONFIG_NODES` values (a "billion laughs" alias bomb) is refused after composing,
before anything walks the expanded tree. Both fail in well under a second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, Problem
from .models import FromFile, PipelineConfig

MAX_CONFIG_BYTES = 1024 * 1024
"""Largest config file read (1 MiB; real configs are a few kB, ids belong in ``from_file``)."""
MAX_CONFIG_NODES = 100_000
"""Most YAML values a config may expand to, each alias counted as the values it stands for."""


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read a YAML or JSON config file, apply ``path=value`` overrides and validate it.

    Relative ``from_file.path`` entries are resolved against the config file's folder.
    """
    src = Path(path)
    text = _read(src)
    raw = parse_text(text, str(src))
    raw = apply_overrides(raw, overrides, str(src))
    cfg = config_from_dict(raw, str(src), base_dir=src.resolve().parent)
    check_input_files(cfg, str(src))
    return cfg


def _read(src: Path) -> str:
    """The file's text, refusing what is not a small readable file before reading it."""
    try:
        if src.is_dir():
            raise ConfigError(str(src), [Problem("", "is a directory, not a config file")])
        size = src.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                str(src),
                [
                    Problem(
                        "",
                        f"the file is {size:,} bytes; a config may be at most "
                        f"{MAX_CONFIG_BYTES:,} (ids belong in a from_file input file)",
                    )
                ],
            )
        with src.open("rb") as fh:  # the file may have grown since stat()
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(
                str(src), [Problem("", f"a config may be at most {MAX_CONFIG_BYTES:,} bytes")]
            )
        return data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(src), [Problem("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(src), [Problem("", f"cannot read the file: {exc}")]) from None


def check_input_files(cfg: PipelineConfig, source: str) -> None:
    """Every ``from_file.path`` names a readable file (not a folder), checked before a run
    or ``validate`` says the config is fine."""
    problems = []
    for e in cfg.endpoints:
        if e.from_file is None:
            continue
        where = f"endpoints[{e.name}].from_file.path"
        path = Path(e.from_file.path)
        if path.is_dir():
            problems.append(Problem(where, f"is a directory, not a file: {path}"))
        elif not path.exists():
            problems.append(Problem(where, f"file not found: {path}"))
        elif not os.access(path, os.R_OK):
            problems.append(Problem(where, f"file not readable: {path}"))
        else:
            problems += _first_ids_problems(e.name, e.from_file)
    if problems:
        raise ConfigError(source, problems)


def _first_ids_problems(endpoint: str, spec: FromFile) -> list[Problem]:
    """Read the file's first ids as the run would: a missing column or a file that is not in
    ``file_format`` is a config problem, named with its field."""
    from .sources import check_ids_file

    where = f"endpoints[{endpoint}].from_file"
    try:
        check_ids_file(spec)
    except ConfigError as exc:
        return [
            Problem(f"{where}.{p.location.removeprefix('from_file.')}", p.message)
            if p.location.startswith("from_file.")
            else Problem(f"{where}.path", f"{spec.path}: {p}")
            for p in exc.problems
        ]
    except Exception as exc:  # pyarrow, csv, decoding: what the file's bytes made of it
        return [Problem(f"{where}.path", f"cannot read it as {spec.file_format}: {exc}")]
    return []


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document expanding to more than
    :data:`MAX_CONFIG_NODES` values once its aliases are followed.

    Composing is cheap (an alias is the same node object again); the cost of an alias bomb
    comes later, from everything that walks the expanded tree. So the composed graph is sized
    first, each distinct node once (memoised), and refused before it is constructed."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, MAX_CONFIG_NODES)
        return node


class _TooLarge(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    key = id(node)
    if key in memo:
        if memo[key] < 0:
            raise _TooLarge("an alias refers to a node that contains it (recursive anchor)")
        return memo[key]
    memo[key] = -1  # in progress: meeting it again below means a cycle
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo, limit)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, limit) + _expanded_size(v, memo, limit)
    if size > limit:
        raise _TooLarge(
            f"the document expands to more than {limit:,} values through its aliases "
            "(an alias bomb?); write the values out or simplify the anchors"
        )
    memo[key] = size
    return size


def safe_load_bounded(text: str) -> Any:
    """``yaml.safe_load`` with the alias expansion bounded (:class:`_BoundedLoader`)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_text(text: str, source: str) -> Any:
    """Parse a config file's text (JSON by the ``source`` file name, else bounded YAML) into plain
    data; a file too large, an alias bomb or nesting too deep is a ``ConfigError``.
    """
    try:
        if source.lower().endswith(".json"):
            return json.loads(text)
        return safe_load_bounded(text)
    except _TooLarge as exc:
        raise ConfigError(source, [Problem("", exc.why)]) from None
    except RecursionError:
        raise ConfigError(source, [Problem("", "nested too deeply")]) from None
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
    """Validate plain data (a parsed YAML/JSON document) into a frozen ``PipelineConfig``. Every
    problem is reported at once with its path, as a ``ConfigError`` naming ``source``; relative
    ``from_file`` paths are resolved against ``base_dir`` when given.
    """
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


_DISCRIMINATED = {
    # pagination
    *("none", "offset", "page", "cursor", "next_url", "link_header", "custom"),
    # auth
    *("bearer", "header", "query", "oauth2_client_credentials"),
}


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
            parsed = safe_load_bounded(value) if value.strip() else ""
        except _TooLarge as exc:
            problems.append(Problem(f"--set {key}", exc.why))
            continue
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
