"""The public API documents itself: every object users may import has a docstring.

What users may import is ``asyncingest.__all__`` (plus ``asyncingest.testing``, whose
``__all__`` is walked too; ``asyncingest.errors`` is re-exported). Each exported class and function
needs its own docstring, and so does each public method or property an exported class defines
(inherited ones, such as pydantic's, are the base class's business).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from types import ModuleType

import pytest

import asyncingest
import asyncingest.testing

PUBLIC_MODULES = [asyncingest, asyncingest.testing]
NOT_OBJECTS = {"__version__"}


def own_docstring(obj: object) -> str:
    """The docstring ``obj`` itself was written with ('' when it has none).

    Dataclasses and enums without one get a generated text (``Name(field, ...)``, "An
    enumeration."), which documents nothing, so it counts as none.
    """
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    doc = doc.strip()
    name = getattr(obj, "__name__", "")
    if inspect.isclass(obj) and (doc.startswith(f"{name}(") or doc == "An enumeration."):
        return ""
    return doc


def public_members(cls: type) -> Iterator[tuple[str, object]]:
    """The public methods and properties ``cls`` defines itself."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            value = value.fget
        if inspect.isfunction(value):
            yield name, value


def exported() -> Iterator[tuple[str, object]]:
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            if name not in NOT_OBJECTS:
                yield f"{module.__name__}.{name}", getattr(module, name)


def undocumented(qualname: str, obj: object) -> Iterator[str]:
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return
    if not own_docstring(obj):
        yield qualname
    if inspect.isclass(obj):
        for name, member in public_members(obj):
            if not own_docstring(member):
                yield f"{qualname}.{name}"


def test_every_export_and_its_public_methods_have_a_docstring() -> None:
    missing = [name for qualname, obj in exported() for name in undocumented(qualname, obj)]
    assert missing == []


def test_the_exports_are_grouped_by_topic_in_the_documented_order() -> None:
    """``__all__`` reads as a table of contents: one comment per topic, in this order."""
    source = inspect.getsource(asyncingest)
    block = re.search(r"__all__ = \[(.*?)\n\]", source, re.S)
    assert block is not None
    groups = re.findall(r"\n\s*# (.+)", block.group(1))
    assert groups == [
        "config",
        "running a pipeline",
        "results and snapshots",
        "events",
        "errors",
        "limits and time",
        "testing",
    ]


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_everything_exported_exists_once(module: ModuleType) -> None:
    names = list(module.__all__)
    assert len(names) == len(set(names))
    assert all(hasattr(module, name) for name in names)
