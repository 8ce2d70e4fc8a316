"""The one rule that finds a model's classifier.

The classifier is the last layer that maps each position's features to the class scores on its
own: a layer the width registry can resize (so ``reset_classifier`` can give it other classes),
that sets its width (not a norm), with as many outputs as there are classes, and with a kernel of
one (a Linear, or the 1x1 conv of a convolutional classifier such as Network in Network's).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx

from reverso.rewrite.widths import REGISTRY


def classifier_node(
    gm: fx.GraphModule, nodes: Iterable[fx.Node], num_classes: int
) -> fx.Node | None:
    """The classifier among ``nodes`` (in graph order), None when there is none."""
    found = None
    for n in nodes:
        if n.op != "call_module":
            continue
        module = gm.get_submodule(n.target)
        rule = REGISTRY.lookup(module)
        if rule is None or rule.preserves_width(module) or rule.out_width(module) != num_classes:
            continue
        if all(k == 1 for k in kernel_of(module)):
            found = n
    return found


def kernel_of(module) -> tuple[int, ...]:
    """A layer's window: its ``kernel_size``, else the last two sizes of a 4-D ``weight`` (a
    registered conv of the user's own), else one (a Linear)."""
    kernel = getattr(module, "kernel_size", None)
    if kernel is not None:
        return tuple(kernel) if isinstance(kernel, (tuple, list)) else (int(kernel),)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 4:
        return tuple(weight.shape[2:])
    return (1,)
