"""Which values of a traced model scale with its input size (a read-only measurement).

Shapes are propagated once more at twice the traced size: global values (pooled vectors,
squeeze-excite gates) keep their size; NCHW feature maps grow in their last two dimensions;
reshaped maps (channels-last, a channel shuffle's 5D view, tokens) grow elsewhere. A model that
fails at twice its size where it combines the data with a tensor fixed to its resolution (a
position embedding) or reshapes with sizes written into its code is refused here: it takes one
input size only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from reverso.errors import UnsupportedTopologyError, failed_node
from reverso.frontend.inputs import example_input, traced_dtype
from reverso.ir import by_name, descendants_within, describe, fixed_inputs
from reverso.ir.shapes import propagate


@dataclass
class Scaling:
    input: fx.Node  # the image placeholder
    scaling: set[fx.Node]  # values whose size follows the input size
    maps: set[fx.Node]  # among them, the NCHW feature maps
    channels_last: set[fx.Node] = field(default_factory=set)  # 4D maps growing in dims 1, 2
    tokens: set[fx.Node] = field(default_factory=set)  # (B, N, C) values growing in dim 1
    grown: dict[fx.Node, object] = field(default_factory=dict)  # values at twice the size


def image_inputs(gm: fx.GraphModule) -> list[fx.Node]:
    """The placeholders that hold a tensor (optional arguments were fixed at trace time)."""
    return [
        n
        for n in gm.graph.nodes
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)
    ]


def measure_scaling(gm: fx.GraphModule, input_size) -> Scaling:
    """Propagate shapes at twice ``input_size`` and sort the values by how they grow. The
    nodes' shapes are left as they were, and the graph is not changed."""
    first = {n: n.meta.get("val") for n in gm.graph.nodes}
    c, h, w = input_size
    try:
        propagate_at(gm, (c, 2 * h, 2 * w))
        second = {n: n.meta.get("val") for n in gm.graph.nodes}
    except Exception as err:
        refuse_fixed_size(gm, err)
        second = None  # without a second size every 4D value the data reaches is a map
    finally:
        for n, v in first.items():
            n.meta["val"] = v

    scaling, maps, channels_last, tokens = set(), set(), set(), set()
    image = image_inputs(gm)[:1]  # the analysis refuses any other number of image inputs
    data = descendants_within(image, set(first))
    for n, a in first.items():
        if second is None and n not in data:
            continue  # a parameter's view (a layer-scale gain) is no map
        b = second.get(n) if second is not None else None
        parts = (
            list(zip(a, b or [None] * len(a), strict=True))
            if isinstance(a, (tuple, list))
            else [(a, b)]
        )
        dims = [_grown(x, y) for x, y in parts if isinstance(x, torch.Tensor)]
        if dims and all(d for d in dims):
            scaling.add(n)
            if isinstance(a, torch.Tensor) and a.dim() == 4 and dims[0] == {2, 3}:
                maps.add(n)
            elif isinstance(a, torch.Tensor) and a.dim() == 4 and dims[0] == {1, 2}:
                channels_last.add(n)
            elif isinstance(a, torch.Tensor) and a.dim() == 3 and dims[0] == {1}:
                tokens.add(n)
    return Scaling(image[0], scaling, maps, channels_last, tokens, second or {})


def propagate_at(gm: fx.GraphModule, size) -> None:
    """Propagate shapes for a (C, H, W) input of the traced model's dtype."""
    propagate(gm, example_input(size, dtype=traced_dtype(gm)))


def _grown(a, b) -> set[int] | None:
    """Dimensions (but the batch) that grow from ``a`` to ``b``; None for non-tensors."""
    if not isinstance(a, torch.Tensor) or a.dim() < 3:
        return None
    if b is None:
        return {2, 3} if a.dim() == 4 else set()
    if not isinstance(b, torch.Tensor) or a.dim() != b.dim():
        return set()
    return {i for i in range(1, a.dim()) if b.shape[i] > a.shape[i]}


def refuse_fixed_size(gm: fx.GraphModule, err: Exception) -> None:
    """A model that fails at twice its size where it adds a tensor of its own (a position
    embedding, a fixed mask) to the data works at one resolution only: no top-down form."""
    node = by_name(gm).get(failed_node(err))
    fixed = fixed_inputs(node) if node is not None else []
    if fixed:
        raise UnsupportedTopologyError(
            f"node {describe(gm, node)} combines the data with '{fixed[0].name}', a tensor of the "
            "model's own whose size is fixed to the model's resolution, so the model takes one "
            "input size only; a top-down network runs its layers at other resolutions. Convert a "
            "model whose layers take any input size"
        ) from err
    constant = _constant_reshape(node) if node is not None else None
    if constant is not None:
        raise UnsupportedTopologyError(
            f"node {describe(gm, node)} reshapes the data with sizes written into the model "
            f"({constant}): the layer takes one input size only, and a top-down network runs "
            "its layers at other resolutions. Convert a model whose layers read their sizes "
            "from the input (x.shape)"
        ) from err


RESHAPES = {"view", "reshape"}


def _constant_reshape(node: fx.Node) -> str | None:
    """The constant sizes of a ``view``/``reshape`` that failed at twice the input size, when
    more than the batch is a Python constant (the model wrote a resolution into its code), as
    ``"dimension 2 = 7, dimension 3 = 7"``."""
    if node.op == "call_method" and node.target in RESHAPES:
        sizes = node.args[1:]
    elif node.op == "call_function" and node.target is torch.reshape:
        sizes = node.args[1:2]
    else:
        return None
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    constants = [
        f"dimension {i} = {s}" for i, s in enumerate(sizes) if i and isinstance(s, int) and s != -1
    ]
    return ", ".join(constants) or None
