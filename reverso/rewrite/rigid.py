"""Units that keep their own width: what the width registry cannot re-width.

When the top-down order feeds such a unit another width than it read bottom-up, width repair
(:mod:`reverso.rewrite.repair`) puts a 1x1 projection on the map entering it instead: the unit
computes what it computed bottom-up, on a map of the width it was built for. That holds for
units whose functions read full weights or whose reshapes read their width from a shape (an
attention's heads). A *layer* without a width rule is another matter: reverso does not know
what it computes, so it refuses it (:func:`refuse_unknown_layer`) unless the user made it a leaf
(``leaf_modules=``) and so asked for it to run whole, at its own width.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from reverso import ir
from reverso.errors import WidthError


def channel_dim(value) -> int | None:
    """The channel dimension of a per-channel tensor: a gain or bias (one dimension longer than
    1) or a depthwise kernel (C, 1, k, k); None for anything else (a full weight)."""
    if not isinstance(value, torch.Tensor):
        return None
    if value.dim() == 4 and value.shape[1] == 1:
        return 0
    long = [d for d, s in enumerate(value.shape) if s > 1]
    return long[0] if len(long) == 1 else None


def rigid_units(gm: fx.GraphModule, registry, chosen=()) -> dict[int, type | None]:
    """Units that keep their own width when their input's changes: those holding a function or
    method that reads a full weight of the model's own (a 2D or larger parameter that is no
    per-channel gain: no width rule rebuilds such a layer), a leaf layer with width-bound
    parameters and no width rule (timm's notrace attention), and residual blocks on
    channels-last values (a shortcut projection works on NCHW maps). Units whose reshapes read their width from a
    shape join them when width repair meets one (``ctx.fixed_width``).

    Each maps to the class of its leaf layer without a width rule, or to None: None also for a
    layer the user chose to keep whole (``chosen``: the ``leaf_modules`` classes and paths)."""
    chosen_types = tuple(t for t in chosen if isinstance(t, type))
    chosen_paths = {t for t in chosen if isinstance(t, str)}
    rigid: dict[int, type | None] = {}
    for n in gm.graph.nodes:
        unit = ir.unit_of(n)
        if unit is None or ir.role_of(n) is not None:  # layers the passes added are reverso's
            continue
        if n.op == "call_module":
            module = gm.get_submodule(n.target)
            if registry.lookup(module) is None and _width_bound(module):
                kept = isinstance(module, chosen_types) or _source_path(n) in chosen_paths
                rigid[unit] = rigid.get(unit) or (None if kept else type(module))
            continue
        if n.op not in ("call_function", "call_method"):
            continue
        if ir.is_join(n) and any(ir.is_reshaped(a) for a in n.all_input_nodes):
            rigid.setdefault(unit, None)
        for a in n.all_input_nodes:
            value = a.meta.get("val") if a.op == "get_attr" else None
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and channel_dim(value) is None:
                rigid.setdefault(unit, None)
    return rigid


def _width_bound(module) -> bool:
    """Whether a layer has a parameter with a dimension longer than one (a single shared slope,
    as ``nn.PReLU()`` has, works at any width)."""
    return any(p.numel() > 1 for p in module.parameters())


def _source_path(n: fx.Node) -> str:
    """A layer's path in the user's model (passes may have renamed its graph target)."""
    stack = list((n.meta.get("nn_module_stack") or {}).values())
    last = stack[-1] if stack else None
    return last[0] if isinstance(last, tuple) else str(n.target)


class KeepWidth(Exception):
    """A unit turned out to be tied to its own width (a reshape reads it from a shape, a grouped
    conv cannot take the new width): width repair walks the graph again with its projection."""

    def __init__(self, unit: int):
        super().__init__(unit)
        self.unit = unit


def refuse_unknown_layer(gm: fx.GraphModule, n: fx.Node, layer: type, got: int, want: int):
    """A layer without a width rule that the top-down order feeds another width: reverso cannot
    rebuild it, and an adapter in front would be a layer the user never wrote. Refuse, naming
    the layer and the ways out."""
    name = layer.__name__
    err = WidthError(
        f"{ir.describe(gm, n)} is fed {got} channels in the top-down net instead of the {want} "
        f"it reads bottom-up, and reverso has no width rule for {layer.__module__}.{name}, so it "
        f"cannot rebuild that layer for the new width. Register one with "
        f"reverso.register_width_rule({name}, ...), keep every width with arrangement='rev', or "
        f"pass leaf_modules=({name},) to run it whole, at its own width, behind a 1x1 projection"
    )
    err.module_class = layer
    raise err
