"""Opening wrapped functions that downsample.

torch.fx keeps functions registered with ``torch.fx.wrap`` (and timm's notrace functions) as
single call nodes. One that downsamples hides its stride from the compiler: torchvision's
Swin merges patches in ``_patch_merging_pad`` (pad, four strided slices, concatenation).
Such a function is traced on its own and its graph is copied in place of the call, so the
compiler sees the strided ops; a function that does not trace stays whole.
"""

from __future__ import annotations

import inspect

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
