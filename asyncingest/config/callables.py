"""References to user functions in a config (``"package.module:function"``, e.g. a transform's
``function``): checked when the config is parsed, imported again by each transform worker."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
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
