"""Submodules on first use, so that a dotted path the docs show resolves after ``import reverso``
(``reverso.study.attacks.SinglePixelAttack``) without importing every module up front."""

from __future__ import annotations

import importlib


def submodules(package: str):
    """A module-level ``__getattr__`` for ``package`` that imports its submodules when asked."""

    def __getattr__(name: str):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
