"""Stage 1, probe: the image input, the logits, and which values scale with the input.

Shapes are propagated once more at twice the input size: global values (pooled vectors,
squeeze-excite gates) keep their size; NCHW feature maps grow in their last two dimensions;
reshaped maps (channels-last, a channel shuffle's 5D view, tokens) grow elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from reverso.errors import UnsupportedTopologyError, failed_node
from reverso.frontend.tracing import example_input, traced_dtype
from reverso.ir import (
    by_name,
    dataflow_graph,
    descendants_within,
    describe,
    fixed_inputs,
    main_chain,
    slice_step,
)
from reverso.ir.shapes import propagate, spatial


@dataclass
class Probe:
    input: fx.Node  # the image placeholder
    output: fx.Node  # the graph's output node
    result: fx.Node  # the logits node the output returns
    scaling: set[fx.Node]  # values whose size follows the input size
    maps: set[fx.Node]  # among them, the NCHW feature maps
    channels_last: set[fx.Node] = field(default_factory=set)  # 4D maps growing in dims 1, 2
    tokens: set[fx.Node] = field(default_factory=set)  # (B, N, C) values growing in dim 1
    grown: dict[fx.Node, object] = field(default_factory=dict)  # values at twice the size

    @property
    def num_classes(self) -> int:
        return int(self.result.meta["val"].shape[-1])

    def hw(self, n: fx.Node) -> tuple[int, int]:
        """The spatial size of a feature map, NCHW or channels-last."""
        shape = n.meta["val"].shape
        return (int(shape[1]), int(shape[2])) if n in self.channels_last else spatial(n)


def probe(gm: fx.GraphModule, input_size: tuple[int, int, int]) -> Probe:
    """Check the model's signature (one image in, one logits tensor out) and probe its values."""
    # optional forward arguments were fixed at trace time and hold no tensor
    images = [
        n
        for n in gm.graph.nodes
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)
    ]
    if len(images) != 1:
        raise UnsupportedTopologyError(
            f"the model's forward takes {len(images)} inputs "
            f"({', '.join(p.name for p in images)}); reverso converts models with one image input"
        )
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, fx.Node) or not isinstance(result.meta.get("val"), torch.Tensor):
        raise UnsupportedTopologyError(
            "the model returns a tuple/dict instead of one logits tensor; wrap it so that "
            "forward returns the class scores only"
        )
    scaling, maps, channels_last, tokens, grown = _scaling_values(gm, input_size)
    return Probe(images[0], output, result, scaling, maps, channels_last, tokens, grown)


def scaling_values(gm: fx.GraphModule, input_size) -> tuple[set[fx.Node], set[fx.Node]]:
    """Values whose size follows the input size, and among them the NCHW feature maps.
    The nodes' shapes are left as they were."""
    scaling, maps, *_ = _scaling_values(gm, input_size)
    return scaling, maps


def _scaling_values(gm: fx.GraphModule, input_size):
    first = {n: n.meta.get("val") for n in gm.graph.nodes}
    c, h, w = input_size
    try:
        propagate(gm, example_input((c, 2 * h, 2 * w), dtype=traced_dtype(gm)))
        second = {n: n.meta.get("val") for n in gm.graph.nodes}
    except Exception as err:
        _refuse_fixed_size(gm, err)
        # a model that only asserts its input size is probed past its assertions; without a
        # second size every 4D value stands for a map
        second = _past_size_checks(gm, (c, 2 * h, 2 * w), err)
    finally:
        for n, v in first.items():
            n.meta["val"] = v

    scaling, maps, channels_last, tokens = set(), set(), set(), set()
    # without the second size, the values data flows into from the input stand for the maps
    data = descendants_within(_inputs(gm)[:1], set(first))
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
    return scaling, maps, channels_last, tokens, second or {}


def _past_size_checks(gm: fx.GraphModule, size, err: Exception) -> dict | None:
    """When the larger probe stops at ``torch._assert`` (a patch embedding that checks the
    image size), probe again with the assertions skipped. If the layers then run, the
    assertions only pinned the bottom-up size: they are removed (the top-down net runs its
    layers at every level). If a layer fails, the model is refused when that layer combines the
    data with a tensor fixed to the model's resolution (a position embedding)."""
    checks = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch._assert]
    if failed_node(err) not in {n.name for n in checks}:
        return None
    for n in checks:
        n.target = _skip_check
    try:
        propagate(gm, example_input(size, dtype=traced_dtype(gm)))
    except Exception as again:
        for n in checks:
            n.target = torch._assert
        _refuse_fixed_size(gm, again)
        return None
    grown = {n: n.meta.get("val") for n in gm.graph.nodes}
    for n in checks:
        gm.graph.erase_node(n)
    gm.recompile()
    return grown


def _skip_check(*args, **kwargs) -> None:
    return None


def _inputs(gm: fx.GraphModule) -> list[fx.Node]:
    """The image placeholder (the first one; optional arguments are fixed at trace time)."""
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _grown(a, b) -> set[int] | None:
    """Dimensions (but the batch) that grow from ``a`` to ``b``; None for non-tensors."""
    if not isinstance(a, torch.Tensor) or a.dim() < 3:
        return None
    if b is None:
        return {2, 3} if a.dim() == 4 else set()
    if not isinstance(b, torch.Tensor) or a.dim() != b.dim():
        return set()
    return {i for i in range(1, a.dim()) if b.shape[i] > a.shape[i]}


def _refuse_fixed_size(gm: fx.GraphModule, err: Exception) -> None:
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


def cut_channels_last(gm: fx.GraphModule, probe: Probe) -> bool:
    """Every channels-last value on the main path (Swin's and MambaOut's NHWC blocks) gets an
    NCHW map beside it: the value is turned into a map and back, so the compiler cuts units
    there as it does in NCHW nets, and merges and upsamplings find a map at every boundary.
    Returns whether the graph changed (probe it again then)."""
    chain = main_chain(dataflow_graph(gm), probe.input, probe.output)
    cuts = [n for n in chain if n in probe.channels_last and not _only_sliced(n)]
    for n in cuts:
        _round_trip(gm.graph, n, list(n.users))
    if cuts:
        gm.recompile()
    return bool(cuts)


def _only_sliced(n: fx.Node) -> bool:
    """A value read only by strided slices (the even-size padding before a patch merging)
    belongs to that downsampling's unit."""
    return all(slice_step(u) > 1 for u in n.users)


def _round_trip(graph: fx.Graph, n: fx.Node, readers: list[fx.Node]) -> None:
    """Insert ``n.permute(0, 3, 1, 2).permute(0, 2, 3, 1)`` after the channels-last value ``n``
    (an NCHW map, then ``n`` again) and let ``readers`` read it."""
    value = n.meta["val"]
    with graph.inserting_after(n):
        mapped = graph.call_method("permute", (n, 0, 3, 1, 2))
    with graph.inserting_after(mapped):
        restored = graph.call_method("permute", (mapped, 0, 2, 3, 1))
    mapped.meta["val"] = value.permute(0, 3, 1, 2)
    restored.meta["val"] = value
    for u in readers:
        u.replace_input_with(n, restored)


def close_reshaped_tail(gm: fx.GraphModule, probe: Probe, head_start: fx.Node) -> bool:
    """A body that ends in layers on channels-last maps or on tokens which the global pooling
    reads directly (MambaOut's NHWC blocks, Twins' last stage) gets an NCHW map to end on: the
    pooling reads that value turned into a map and back, so those layers form a body unit
    instead of joining the head. Returns whether the graph changed (probe it again then)."""
    tail = [a for a in head_start.all_input_nodes if a in probe.channels_last | probe.tokens]
    if len(tail) != 1:
        return False
    (last,) = tail
    graph, value = gm.graph, last.meta["val"]
    if last in probe.channels_last:
        _round_trip(graph, last, [head_start])
        gm.recompile()
        return True
    grid = _token_grid(probe, last)
    if grid is None:
        return False
    with graph.inserting_after(last):  # each call goes after the one before
        h = graph.call_method("size", (grid, 2))
    with graph.inserting_after(h):
        w = graph.call_method("size", (grid, 3))
    with graph.inserting_after(w):
        t = graph.call_method("transpose", (last, 1, 2))
    with graph.inserting_after(t):
        nchw = graph.call_method("unflatten", (t, 2, (h, w)))
    with graph.inserting_after(nchw):
        flat = graph.call_method("flatten", (nchw, 2))
    with graph.inserting_after(flat):
        back = graph.call_method("transpose", (flat, 1, 2))
    h.meta["val"], w.meta["val"] = grid.meta["val"].shape[2], grid.meta["val"].shape[3]
    t.meta["val"] = value.transpose(1, 2)
    nchw.meta["val"] = t.meta["val"].unflatten(2, tuple(grid.meta["val"].shape[2:]))
    flat.meta["val"] = nchw.meta["val"].flatten(2)
    back.meta["val"] = value
    head_start.replace_input_with(last, back)
    gm.recompile()
    return True


def _token_grid(probe: Probe, tokens: fx.Node) -> fx.Node | None:
    """The nearest feature map before ``tokens`` with as many pixels as there are tokens."""
    count = tokens.meta["val"].shape[1]
    stack, seen = [tokens], set()
    while stack:
        n = stack.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if n in probe.maps and n.meta["val"].shape[2] * n.meta["val"].shape[3] == count:
            return n
        stack.extend(n.all_input_nodes)
    return None
