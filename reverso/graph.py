"""Reading and editing torch.fx graphs: what a node is, the dataflow graph, and small edits.

Node kinds are decided by module type or function target, never by names, so they hold for
any model. Edits keep ``node.meta`` (shapes and reverso's tags) on copied nodes.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable

import networkx as nx
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .shapes import TORCH_ACTIVATIONS, is_feature_map, tensor_shape

TAG = "reverso"  # key of reverso's own metadata in node.meta


def tag(node: fx.Node) -> dict:
    """reverso's metadata of a node (unit index, role, ...); created on first use."""
    if TAG not in node.meta:
        node.meta[TAG] = {}
    return node.meta[TAG]


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(node.target)


# ---------------------------------------------------------------------------------------------
# node kinds

_ACT_FUNCS = {
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    F.leaky_relu,
    F.elu,
    F.mish,
    F.sigmoid,
    F.tanh,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.relu_,
    torch.relu_,
}
_ACT_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_"}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_JOIN_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_"}
_CAT = {torch.cat, torch.concat}
_POOL_FUNCS = {F.max_pool2d, F.avg_pool2d, torch.max_pool2d, torch._C._nn.avg_pool2d}
_ADAPTIVE_FUNCS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_NORM_FUNCS = {F.layer_norm, F.batch_norm, F.group_norm, F.instance_norm}


def _activation_types() -> tuple[type, ...]:
    types = list(TORCH_ACTIVATIONS)
    try:
        import timm.layers.activations as ta

        types += [
            obj for obj in vars(ta).values() if isinstance(obj, type) and issubclass(obj, nn.Module)
        ]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


ACTIVATIONS = _activation_types()
NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def _dropout_types() -> tuple[type, ...]:
    types = [nn.Dropout, nn.Dropout2d, nn.AlphaDropout]
    try:
        import timm.layers as tl

        types += [getattr(tl, n) for n in ("DropPath", "DropBlock2d") if hasattr(tl, n)]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


DROPOUTS = _dropout_types()


def is_conv(gm, node) -> bool:
    m = module_of(gm, node)
    return isinstance(m, nn.Conv2d) or (m is not None and type(m).__name__ == "MixedConv2d")


def conv_kernel(gm, node) -> int:
    """The largest kernel extent of a conv node (1 for pointwise convs)."""
    m = module_of(gm, node)
    if isinstance(m, nn.Conv2d):
        return max(d * (k - 1) + 1 for k, d in zip(m.kernel_size, m.dilation, strict=True))
    if m is not None and type(m).__name__ == "MixedConv2d":
        return max(max(c.kernel_size) for c in m.values())
    return 0


def is_spatial_conv(gm, node) -> bool:
    return is_conv(gm, node) and conv_kernel(gm, node) > 1


def is_linear(gm, node) -> bool:
    return isinstance(module_of(gm, node), nn.Linear)


def is_norm(gm, node) -> bool:
    if node.op == "call_function":
        return node.target in _NORM_FUNCS
    return isinstance(module_of(gm, node), NORMS)


def is_activation(gm, node) -> bool:
    if node.op == "call_function":
        return node.target in _ACT_FUNCS
    if node.op == "call_method":
        return node.target in _ACT_METHODS
    return isinstance(module_of(gm, node), ACTIVATIONS)


def is_dropout(gm, node) -> bool:
    if node.op == "call_function":
        return node.target in {F.dropout, F.dropout2d}
    return isinstance(module_of(gm, node), DROPOUTS)


def is_identity(gm, node) -> bool:
    return isinstance(module_of(gm, node), nn.Identity)


def is_pointwise(gm, node) -> bool:
    """Shape- and width-preserving single-input layers: norms, activations, dropouts, identities."""
    return (
        is_norm(gm, node)
        or is_activation(gm, node)
        or is_dropout(gm, node)
        or is_identity(gm, node)
    )


def is_pool(gm, node) -> bool:
    """A (non-adaptive) spatial pooling op."""
    if node.op == "call_function":
        return node.target in _POOL_FUNCS
    m = module_of(gm, node)
    return isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) or (
        m is not None and type(m).__name__ in {"MaxPool2dSame", "AvgPool2dSame"}
    )


def pool_call_args(node: fx.Node) -> dict:
    """The arguments of a functional pooling call (``F.max_pool2d``, ``F.avg_pool2d``) by name,
    whether passed by position or keyword; the stride defaults to the kernel size."""
    names = ["input", "kernel_size", "stride", "padding"]
    names += (
        ["dilation", "ceil_mode"]
        if node.target in (F.max_pool2d, torch.max_pool2d)
        else ["ceil_mode", "count_include_pad"]
    )
    bound = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    bound["stride"] = bound.get("stride") or bound["kernel_size"]
    return bound


def is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD) or (
        node.op == "call_method" and node.target in {"add", "add_", "sub", "sub_"}
    )


def is_join(node: fx.Node) -> bool:
    """An elementwise op combining two tensors (add, sub, mul)."""
    if node.op == "call_function" and node.target in _ADD | _MUL:
        pass
    elif not (node.op == "call_method" and node.target in _JOIN_METHODS):
        return False
    return sum(isinstance(a, fx.Node) and tensor_shape(a) is not None for a in node.args[:2]) == 2


def is_cat(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _CAT


def width_defining(gm, node) -> bool:
    """Layers that set their output width (convs that are not depthwise, linears, registered ones)."""
    from .widths import REGISTRY

    m = module_of(gm, node)
    if m is None:
        return False
    rule = REGISTRY.lookup(m)
    return rule is not None and not rule.preserves_width(m)


def stride_of(gm: fx.GraphModule, n: fx.Node) -> int:
    """The stride of a conv/pool node (module or functional), 1 for anything else."""
    if n.op == "call_function" and is_pool(gm, n):
        stride = pool_call_args(n)["stride"]
    else:
        stride = getattr(module_of(gm, n), "stride", 1)
    stride = max(stride) if isinstance(stride, (tuple, list)) else stride
    return int(stride or 1)


def stalled_stride(gm: fx.GraphModule) -> fx.Node | None:
    """The first strided node whose feature map does not shrink (its input is already too small
    to be downsampled further), or None. Needs shapes in ``node.meta["val"]``."""
    for n in gm.graph.nodes:
        source = feature_input(n)
        if not is_feature_map(n) or source is None or stride_of(gm, n) == 1:
            continue
        out, into = n.meta["val"].shape[-2:], source.meta["val"].shape[-2:]
        if out[0] >= into[0] and out[1] >= into[1]:
            return n
    return None


def feature_input(node: fx.Node) -> fx.Node | None:
    """The first feature-map input of a node."""
    for a in node.all_input_nodes:
        if is_feature_map(a):
            return a
    return None


# ---------------------------------------------------------------------------------------------
# the dataflow graph


def carries_tensor(node: fx.Node) -> bool:
    """The node's value is a tensor or a tuple/list holding tensors (split, chunk, ...)."""

    def has(v) -> bool:
        if isinstance(v, torch.Tensor):
            return True
        return isinstance(v, (tuple, list)) and any(has(x) for x in v)

    return has(node.meta.get("val"))


def is_mutation(node: fx.Node) -> bool:
    """Nodes that change their first argument in place and whose result may be unused."""
    if node.op == "call_function" and node.target is operator.setitem:
        return True
    return (
        node.op == "call_method"
        and isinstance(node.target, str)
        and node.target.endswith("_")
        and (not node.target.startswith("__"))
    )


def dataflow_graph(gm: fx.GraphModule) -> nx.DiGraph:
    """Tensor-valued nodes and the edges between them, plus edges that order in-place mutations.

    Nodes that only compute sizes (``x.shape``, ``size()``) or come from parameters are left out;
    callers treat them as side inputs of the nodes that use them.
    """
    G = nx.DiGraph()
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        if n.op == "output" or carries_tensor(n) or is_mutation(n):
            G.add_node(n)
    for n in list(G.nodes):
        for a in n.all_input_nodes:
            if a in G:
                G.add_edge(a, n)
        if is_mutation(n) and n.args and isinstance(n.args[0], fx.Node):
            target = n.args[0]
            for user in target.users:
                if user is not n and order[user] > order[n] and user in G:
                    G.add_edge(n, user)
    return G


def main_chain(G: nx.DiGraph, source: fx.Node, sink: fx.Node) -> list[fx.Node]:
    """The nodes every source-to-sink path passes through, in order (dominators of the sink)."""
    reach = nx.descendants(G, source) | {source}
    sub = G.subgraph(reach & (nx.ancestors(G, sink) | {sink}))
    idom = nx.immediate_dominators(sub, source)
    chain = [sink]
    while chain[-1] is not source:
        chain.append(idom[chain[-1]])
    return chain[::-1]


# ---------------------------------------------------------------------------------------------
# edits


def unique_name(gm: fx.GraphModule, base: str) -> str:
    """A free attribute path on ``gm`` starting with ``base``."""
    base = re.sub(r"[^0-9a-zA-Z_.]", "_", base)
    if not _has_attr(gm, base):
        return base
    i = 1
    while _has_attr(gm, f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


def _has_attr(gm: nn.Module, path: str) -> bool:
    obj = gm
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Replace (or add) the submodule at ``target``."""
    parent_path, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    setattr(parent, name, module)


def add_module_node(
    gm: fx.GraphModule,
    name: str,
    module: nn.Module,
    args: tuple,
    *,
    after: fx.Node | None = None,
    before: fx.Node | None = None,
    meta_from: fx.Node | None = None,
) -> fx.Node:
    """Add ``module`` under a free name and a call to it placed after/before a node.

    With ``meta_from`` the new node joins the unit of that node.
    """
    target = unique_name(gm, name)
    gm.add_submodule(target, module)
    ctx = (
        gm.graph.inserting_after(after) if after is not None else gm.graph.inserting_before(before)
    )
    with ctx:
        node = gm.graph.call_module(target, args)
    if meta_from is not None and "unit" in tag(meta_from):
        tag(node)["unit"] = tag(meta_from)["unit"]  # the new node belongs to the same unit
    return node


def descendants_within(start: Iterable[fx.Node], within: set[fx.Node]) -> set[fx.Node]:
    out, stack = set(), list(start)
    while stack:
        n = stack.pop()
        if n in out or n not in within:
            continue
        out.add(n)
        stack.extend(n.users)
    return out


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """'name' (Type) for messages."""
    m = module_of(gm, node)
    if m is not None:
        return f"'{node.target}' ({type(m).__name__})"
    target = getattr(node.target, "__name__", node.target)
    return f"'{node.name}' ({target})"


def own_copy(module: nn.Module, model: nn.Module) -> nn.Module:
    """Copy every layer ``module`` still shares with the user's ``model`` (weights, and stateless
    layers whose train/eval mode would otherwise follow ``module``'s), and nothing else. Copies
    keep the mode of the layer they copy (a BatchNorm frozen in eval mode stays frozen); every
    other layer (new ones, containers) takes ``model``'s mode."""
    import copy

    shared = {id(m) for m in model.modules()}
    copies: set[int] = set()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in shared:
                new = copy.deepcopy(child)
                setattr(parent, name, new)
                copies.update(id(m) for m in new.modules())
    for m in module.modules():
        if id(m) not in copies:
            m.training = model.training
    return module
