"""The catalogue of passes known by name: the ``reverso.passes`` entry points.

reverso's built-in passes (and any installed package's) are registered under the entry-point
group ``reverso.passes`` (see ``pyproject.toml``), so the compiler finds them by name without
importing the layer above it.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from reverso.errors import OptionError

GROUP = "reverso.passes"


@functools.cache
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    """The names of every registered pass."""
    return list(_entry_points())


def lookup(name: str) -> type | None:
    """The registered pass class called ``name``, or None."""
    ep = _entry_points().get(name)
    return ep.load() if ep is not None else None


def module_of(name: str) -> str:
    """The module that defines the registered pass ``name``, read without importing it."""
    return _entry_points()[name].module


def get(name: str) -> type:
    """The registered pass class called ``name``; a refusal listing the names otherwise."""
    cls = lookup(name)
    if cls is None:
        raise OptionError(f"no built-in pass named {name!r}; available: {', '.join(names())}")
    return cls
