"""Submodules on first use, so that a dotted path the docs show resolves after ``import reverso``
(``reverso.study.attacks.SinglePixelAttack``) without importing every module up front."""

from __future__ import annotations

import importlib


def submodules(package: str, **builders):
    """A module-level ``__getattr__`` for ``package`` that imports its submodules when asked, and
    builds each of the ``builders``' constants on first use (see :func:`constants`)."""

    def __getattr__(name: str):
        if name in builders:
            return builders[name]()
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__


def constants(module: str, **builders):
    """A module-level ``__getattr__`` for ``module`` whose constants are built on first use:
    ``ACTIVATIONS=activation_types`` calls ``activation_types()`` (a cached function) when
    ``module.ACTIVATIONS`` is read. It keeps heavy imports (timm) out of ``import reverso.ir``."""

    def __getattr__(name: str):
        if name in builders:
            return builders[name]()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
