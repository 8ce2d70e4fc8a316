"""The one table of activations: module types, functional forms and method names.

``is_activation`` (node kinds), the shape rules and the planner (which turns ``F.relu(x)`` into an
``nn.ReLU()`` for the layers passes add) all read this table.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from reverso.lazy import constants

#: activation name -> its torch module type; functional forms are ``F.<name>``/``torch.<name>``
#: and their in-place variants (``F.relu_``), methods are ``x.<name>()`` and ``x.<name>_()``
BY_NAME: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU, "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid, "elu": nn.ELU, "mish": nn.Mish, "selu": nn.SELU,
    "softplus": nn.Softplus, "hardtanh": nn.Hardtanh,
}  # fmt: skip

#: torch's activation layers (shape-preserving; PReLU is the only one with parameters)
TORCH_TYPES: tuple[type, ...] = (*BY_NAME.values(), nn.PReLU)

#: ``x.clamp()`` clips like an activation but has no module of its own
_METHOD_ONLY = ("clamp",)


def _functions() -> dict[object, str]:
    found = {}
    for name in BY_NAME:
        for namespace in (F, torch):
            for variant in (name, name + "_"):
                fn = getattr(namespace, variant, None)
                if callable(fn):
                    found[fn] = name
    return found


#: functional activation -> its name in BY_NAME
FUNCTIONS: dict[object, str] = _functions()
METHODS: frozenset[str] = frozenset(
    v for name in (*BY_NAME, *_METHOD_ONLY) for v in (name, name + "_")
)


@functools.cache
def module_types() -> tuple[type, ...]:
    """Every activation module type reverso recognises: torch's and timm's (timm is imported on the
    first call, not with this module). Also readable as ``MODULE_TYPES``."""
    types = list(TORCH_TYPES)
    try:
        import timm.layers.activations as ta
    except ImportError:  # pragma: no cover
        return tuple(types)
    types += [o for o in vars(ta).values() if isinstance(o, type) and issubclass(o, nn.Module)]
    return tuple(types)


__getattr__ = constants(__name__, MODULE_TYPES=module_types)


def module_for(target) -> nn.Module | None:
    """A fresh activation module for a functional or method target (``F.relu`` -> ``nn.ReLU()``),
    or None when the target is no activation with a module form."""
    name = FUNCTIONS.get(target) or (str(target).rstrip("_") if isinstance(target, str) else None)
    module = BY_NAME.get(name) if name else None
    return module() if module is not None else None
