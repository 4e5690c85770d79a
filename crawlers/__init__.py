"""One module per source. Each module defines ``SOURCE``; :func:`get_source` finds it by name."""
from __future__ import annotations

import importlib
import pkgutil

from .base import Source

_SKIP = {"base"}


def all_sources() -> dict[str, type[Source]]:
    found: dict[str, type[Source]] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name in _SKIP or mod.name.startswith("_") or mod.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        source = getattr(module, "SOURCE", None)
        if source is not None:
            found[source.name] = source
    return found


def get_source(name: str) -> type[Source]:
    sources = all_sources()
    if name not in sources:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(sorted(sources))}")
    return sources[name]
