"""Units that keep their own width: what the width registry cannot re-width.

When the top-down order feeds such a unit another width than it read bottom-up, width repair
(:mod:`reverso.rewrite.repair`) puts a 1x1 projection on the map entering it instead.
"""

from __future__ import annotations

import warnings

import torch
import torch.fx as fx

from reverso import ir


def channel_dim(value) -> int | None:
    """The channel dimension of a per-channel tensor: a gain or bias (one dimension longer than
    1) or a depthwise kernel (C, 1, k, k); None for anything else (a full weight)."""
    if not isinstance(value, torch.Tensor):
        return None
    if value.dim() == 4 and value.shape[1] == 1:
        return 0
    long = [d for d, s in enumerate(value.shape) if s > 1]
    return long[0] if len(long) == 1 else None


def rigid_units(gm: fx.GraphModule, registry) -> dict[int, str]:
    """Units that keep their own width when their input's changes: those holding a function or
    method that reads a full weight of the model's own (a 2D or larger parameter that is no
    per-channel gain: no width rule rebuilds such a layer), a leaf layer with parameters and no
    width rule (timm's notrace attention), and residual blocks on channels-last values (a
    shortcut projection works on NCHW maps). Units whose reshapes read their width from a
    shape join them when width repair meets one (``ctx.fixed_width``)."""
    rigid: dict[int, str] = {}  # unit -> the leaf layer without a width rule, or ""
    for n in gm.graph.nodes:
        unit = ir.unit_of(n)
        if unit is None or ir.role_of(n) is not None:  # layers the passes added are reverso's
            continue
        if n.op == "call_module":
            module = gm.get_submodule(n.target)
            if registry.lookup(module) is None and next(module.parameters(), None) is not None:
                rigid[unit] = rigid.get(unit) or type(module).__name__
            continue
        if n.op not in ("call_function", "call_method"):
            continue
        if ir.is_join(n) and any(ir.is_reshaped(a) for a in n.all_input_nodes):
            rigid.setdefault(unit, "")
        for a in n.all_input_nodes:
            value = a.meta.get("val") if a.op == "get_attr" else None
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and channel_dim(value) is None:
                rigid.setdefault(unit, "")
    return rigid


class KeepWidth(Exception):
    """A unit turned out to be tied to its own width (a reshape reads it from a shape, a grouped
    conv cannot take the new width): width repair walks the graph again with its projection."""

    def __init__(self, unit: int):
        super().__init__(unit)
        self.unit = unit


def warn_kept_width(gm: fx.GraphModule, n: fx.Node, layer: str, got: int, want: int) -> None:
    """Say that a leaf layer without a width rule was kept at its width, and how to re-width it."""
    warnings.warn(
        f"the top-down net feeds {ir.describe(gm, n)} {got} channels instead of {want}, and "
        f"reverso cannot rebuild its {layer}: a 1x1 projection keeps it at its width. To re-width "
        f"it instead, register a rule: reverso.register_width_rule({layer}, ...)",
        stacklevel=3,
    )
