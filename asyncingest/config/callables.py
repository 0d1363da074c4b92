"""References to user code in a config (``"package.module:function"``: a transform's ``function``,
a custom paginator's class): checked when the config is parsed, imported again where used (by
each transform worker, by each run's paginator)."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

REFERENCE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
"""What a reference looks like: a dotted module path, a colon, a dotted attribute path."""
_MAX_REASON = 500


def load_callable(ref: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` and return the function; ``ValueError`` if unusable."""
    if not isinstance(ref, str) or not REFERENCE.fullmatch(ref):
        raise ValueError(f"{ref!r} is not a 'package.module:function' reference")
    module_name, _, qualname = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or whatever the module raises at import
        raise ValueError(f"{ref}: cannot import {module_name!r}: {describe_error(exc)}") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{ref}: {module_name!r} has no attribute {qualname!r}") from None
    if not callable(obj):
        raise ValueError(f"{ref}: {qualname!r} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]  # callable() narrowed it; mypy cannot say to what


def describe_error(exc: BaseException, limit: int = _MAX_REASON) -> str:
    """``"Type: message"`` on one line, cut to ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


PAGINATOR_PROTOCOL = "first(request) -> Request and next(page) -> Request | None"
"""What a custom paginator must have (``pagination: {type: custom}``), as error messages say it."""


def load_paginator(ref: str, options: Mapping[str, Any]) -> Any:
    """Import ``"package.module:Class"``, build it with ``options`` as keyword arguments and check
    that the result has the paginator protocol's two one-argument methods; ``ValueError`` (saying
    what is expected) when it does not. Checked when the config is parsed, so a bad reference is a
    config error (exit 2), never a traceback half way through a run."""
    factory = load_callable(ref)
    try:
        paginator = factory(**options)
    except Exception as exc:  # user code: a TypeError for unknown options, or its own error
        given = ", ".join(sorted(options)) or "no options"
        raise ValueError(f"{ref}: cannot be built with {given}: {describe_error(exc)}") from exc
    kind = type(paginator).__name__
    for name, argument in (("first", "request"), ("next", "page")):
        method = getattr(paginator, name, None)
        if not callable(method):
            raise ValueError(
                f"{ref}: what it built (a {kind} object) has no {name}({argument}) method; "
                f"a custom paginator needs {PAGINATOR_PROTOCOL}"
            )
        try:
            inspect.signature(method).bind(None)
        except TypeError:
            raise ValueError(
                f"{ref}: {kind}.{name} cannot be called as {name}({argument}); a custom "
                f"paginator needs {PAGINATOR_PROTOCOL}"
            ) from None
        except ValueError:  # no signature to read (a builtin): trust it
            pass
    return paginator
