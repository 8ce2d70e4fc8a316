"""Opening wrapped functions that downsample.

torch.fx keeps functions registered with ``torch.fx.wrap`` (and timm's notrace functions) as
single call nodes. One that downsamples hides its stride from the compiler: torchvision's
Swin merges patches in ``_patch_merging_pad`` (pad, four strided slices, concatenation).
Such a function is traced on its own and its graph is copied in place of the call, so the
compiler sees the strided ops; a function that does not trace stays whole.
"""

from __future__ import annotations

import inspect
import operator

import torch
import torch.fx as fx

from reverso.ir.shapes import tensor_shape


def inline_downsampling_functions(gm: fx.GraphModule) -> bool:
    """Replace the calls of wrapped Python functions that shrink a map by their traced graphs.
    Returns whether the graph changed (propagate shapes again then)."""
    changed = False
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and _is_wrapped(n.target) and _shrinks(n):
            sub = _traced(n.target, len(n.args))
            if sub is not None and not n.kwargs:
                _inline(gm.graph, n, sub)
                changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


def _is_wrapped(target) -> bool:
    """A plain Python function outside torch itself (torch.fx.wrap'd or autowrapped)."""
    module = getattr(target, "__module__", "") or ""
    return inspect.isfunction(target) and module.split(".")[0] != "torch"


def _shrinks(n: fx.Node) -> bool:
    """The output has the rank of a tensor input and is smaller in two of its dims."""
    out = tensor_shape(n)
    if out is None or len(out) != 4:
        return False
    for a in n.all_input_nodes:
        shape = tensor_shape(a)
        if shape is not None and len(shape) == 4:
            return sum(o < i for o, i in zip(out[1:], shape[1:], strict=True)) == 2
    return False


def _traced(fn, arity: int) -> fx.Graph | None:
    """``fn``'s graph, or None when it does not trace or holds tensors of its own."""
    try:
        graph = fx.symbolic_trace(fn).graph
    except Exception:
        return None
    placeholders = [s for s in graph.nodes if s.op == "placeholder"]
    if len(placeholders) != arity or any(s.op == "get_attr" for s in graph.nodes):
        return None
    return graph


def _inline(graph: fx.Graph, call: fx.Node, sub: fx.Graph) -> None:
    env: dict[fx.Node, object] = {}
    inputs = iter(call.args)
    with graph.inserting_before(call):
        for s in sub.nodes:
            if s.op == "placeholder":
                env[s] = next(inputs)
            elif s.op == "output":
                result = fx.node.map_arg(s.args[0], lambda a: env[a])
            else:
                env[s] = graph.node_copy(s, lambda a: env[a])
                env[s].meta["stack_trace"] = call.meta.get("stack_trace")
    call.replace_all_uses_with(result)
    graph.erase_node(call)


def slice_reshaped_patch_merging(gm: fx.GraphModule) -> bool:
    """Patch merging written as ``x.reshape(B, H/b, b, W/b, b, C).permute(0, 1, 3, 4, 2, 5)
    .flatten(3)`` on channels-last values (timm's Swin) becomes the same values as b^2 strided
    slices ``x[:, i::b, j::b, :]`` concatenated along channels, which the compiler mirrors.
    Returns whether the graph changed (propagate shapes again then)."""
    changed = False
    for n in list(gm.graph.nodes):
        match = _patch_merging(n)
        if match is None:
            continue
        x, block, rows_outer = match
        pairs = [(i, j) for i in range(block) for j in range(block)]
        if not rows_outer:
            pairs = [(i, j) for j in range(block) for i in range(block)]
        graph = gm.graph
        with graph.inserting_before(n):
            parts = [
                graph.call_function(
                    operator.getitem,
                    (x, (slice(None), slice(i, None, block), slice(j, None, block), slice(None))),
                )
                for i, j in pairs
            ]
            cat = graph.call_function(torch.cat, (parts, -1))
        n.replace_all_uses_with(cat)
        permute = n.args[0]
        graph.erase_node(n)
        reshape = permute.args[0]
        graph.erase_node(permute)
        graph.erase_node(reshape)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return changed


def _patch_merging(n: fx.Node):
    """(x, b, whether the row offset varies slowest) when ``n`` is ``flatten(3)`` of
    ``reshape(x, B, H/b, b, W/b, b, C).permute(0, 1, 3, p, q, 5)`` with {p, q} = {2, 4}."""
    if not (n.op == "call_method" and n.target == "flatten" and n.args[1:] in ((3,), (-3,))):
        return None
    permute = n.args[0]
    if not (
        isinstance(permute, fx.Node) and permute.target == "permute" and len(permute.users) == 1
    ):
        return None
    order = tuple(permute.args[1:]) if len(permute.args) > 2 else tuple(permute.args[1])
    if order not in ((0, 1, 3, 4, 2, 5), (0, 1, 3, 2, 4, 5)):  # then flatten: not windows
        return None
    reshape = permute.args[0]
    if not (isinstance(reshape, fx.Node) and reshape.target in ("reshape", "view")):
        return None
    x = reshape.args[0]
    inner, outer = tensor_shape(reshape), tensor_shape(x) if isinstance(x, fx.Node) else None
    if (
        inner is None
        or outer is None
        or len(inner) != 6
        or len(outer) != 4
        or len(reshape.users) != 1
    ):
        return None
    b, h, w, c = outer
    block = inner[2]
    if inner != (b, h // block, block, w // block, block, c) or inner[4] != block or block < 2:
        return None
    return x, block, order[3] == 2
