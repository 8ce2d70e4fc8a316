"""Module-tree swaps: the spatial convs anywhere under a module, each replaceable in place.

The ``njet``, ``frames`` and ``steerable`` passes replace convs inside any module (graph nodes,
merges, other leaf modules), not only graph nodes; they find them, and say which they keep,
through these helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reverso.errors import UnsupportedTopologyError
from reverso.ir import module_window


@dataclass
class ConvSlot:
    """Where a conv sits: ``parent.<attr>``, called ``name`` from the root."""

    parent: nn.Module
    attr: str
    name: str
    conv: nn.Conv2d

    def replace(self, module: nn.Module) -> None:
        setattr(self.parent, self.attr, module)


def spatial_convs(root: nn.Module) -> list[ConvSlot]:
    """Every ``nn.Conv2d`` (subclasses too) with a window larger than 1x1 under ``root``, in
    module order; a list, so the convs can be replaced while walking it."""
    return [
        ConvSlot(parent, attr, f"{parent_name}.{attr}" if parent_name else attr, child)
        for parent_name, parent in list(root.named_modules())
        for attr, child in list(parent.named_children())
        if isinstance(child, nn.Conv2d) and module_window(child).extent > 1
    ]


def overrides_forward(conv: nn.Conv2d) -> str | None:
    """Why a conv's output is not ``F.conv2d`` of its weight (its class overrides ``forward``:
    weight standardisation, dynamic 'same' padding, ...), or None."""
    if type(conv).forward is not nn.Conv2d.forward:
        return f"{type(conv).__name__} overrides Conv2d.forward"
    return None


def refuse_if_nothing_swapped(
    swapped: list, kept: list[tuple[str, str]], root: nn.Module, what: str, remedy: str = ""
) -> None:
    """An UnsupportedTopologyError when no conv was swapped: ``what`` the pass found none of,
    every conv it kept with the reason, then ``remedy``."""
    if not swapped:
        reasons = "; ".join(f"{name}: {why}" for name, why in kept) or "it has none"
        message = f"{what} in {type(root).__name__} ({reasons})"
        raise UnsupportedTopologyError(f"{message}; {remedy}" if remedy else message)
