"""Sizes computed from another value's shape, read from the feature map they describe instead.

A model may compute a map's size by arithmetic on the image's or an earlier map's shape (timm's
Twins and PVT patch embeddings return ``H // 4, W // 4`` beside their tokens) and hand it to
blocks deep in the body. In the top-down
net those blocks run at other levels, where ``H // 4`` of the image no longer is their size.
Such a size equals, at every input size, the height or width of a feature map computed before
its first use: the value is read from that map (``m.size(2)``) instead, and so follows the map
wherever the compiler moves it.
"""

from __future__ import annotations

import operator

import torch.fx as fx

from reverso.analysis.probe import Probe


def rebase_image_sizes(gm: fx.GraphModule, probe: Probe) -> bool:
    """Rewrite computed sizes that feed the body to read a feature map's size. Returns
    whether the graph changed (probe it again then)."""
    if not probe.grown:
        return False  # a model that takes one input size: nothing to match against
    dims = _shape_dims(gm, probe)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    changed = False
    for n, dim in dims.items():
        consumers = [u for u in n.users if u not in dims]
        if dim not in (2, 3) or not consumers or n.target in ("size", operator.getitem):
            continue  # a size read as it is: the compiler recomputes those where they are used
        first = min(consumers, key=order.__getitem__)
        source = _map_of_size(probe, n, dim, order, order[first])
        if source is None:
            continue
        with gm.graph.inserting_after(source):
            size = gm.graph.call_method("size", (source, dim))
        size.meta["val"] = n.meta["val"]
        for u in consumers:
            u.replace_input_with(n, size)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return changed


def _shape_dims(gm: fx.GraphModule, probe: Probe) -> dict[fx.Node, int | None]:
    """Int values computed from the shapes of the image or feature maps alone, with the dim each
    derives from (``x.shape[2] // 4`` -> 2); None where it cannot be told (a product of both)."""
    tensors = probe.maps | {probe.input}
    shapes, dims = set(), {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",):
            if n.args[0] in tensors:
                shapes.add(n)
        elif n.op == "call_method" and n.target == "size" and n.args[0] in tensors:
            if len(n.args) > 1:
                dims[n] = n.args[1] % 4
            else:
                shapes.add(n)
        elif n.op == "call_function" and n.target is operator.getitem and n.args[0] in shapes:
            index = n.args[1]
            dims[n] = index % 4 if isinstance(index, int) else None
        elif (
            isinstance(n.meta.get("val"), int)
            and n.all_input_nodes
            and all(a in dims for a in n.all_input_nodes)
        ):
            found = {dims[a] for a in n.all_input_nodes}
            dims[n] = found.pop() if len(found) == 1 else None
    return {n: d for n, d in dims.items() if isinstance(n.meta.get("val"), int)}


def _map_of_size(probe: Probe, n: fx.Node, dim: int, order, before: int) -> fx.Node | None:
    """The last feature map before position ``before`` whose ``dim`` equals ``n`` at both probed
    input sizes (the image itself excluded)."""
    value, grown = n.meta["val"], probe.grown.get(n)
    best = None
    for m in probe.maps:
        if m is probe.input or order[m] >= before:
            continue
        big = probe.grown.get(m)
        fits = big is not None and m.meta["val"].shape[dim] == value and big.shape[dim] == grown
        if fits and (best is None or order[m] > order[best]):
            best = m
    return best
