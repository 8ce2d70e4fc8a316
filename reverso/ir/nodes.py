"""What a node is: its layer kind, how much it downsamples, and names for messages.

Kinds are decided by module type or function target, never by names, so they hold for any
model. Geometry (kernel, stride, padding, dilation) comes from :mod:`reverso.ir.windows`.
"""

from __future__ import annotations

import functools
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from reverso.ir import activations
from reverso.ir.shapes import channels, is_feature_map, spatial, tensor_shape
from reverso.ir.windows import pair, window_of
from reverso.lazy import constants


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls, None for any other node."""
    if node.op != "call_module":
        return None
    return gm.get_submodule(node.target)


def by_name(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """The graph's nodes by name (the one name -> node index)."""
    return {n.name: n for n in gm.graph.nodes}


def stride_of(gm: fx.GraphModule, n: fx.Node) -> int:
    """How much a node downsamples: its window's stride, the ``stride`` of any other module that
    declares one (a BlurPool, an N-Jet conv), 1 for anything else."""
    window = window_of(gm, n)
    if window is not None:
        return window.step
    module = module_of(gm, n)
    if isinstance(module, (nn.modules.conv._ConvTransposeNd, nn.modules.pooling._MaxUnpoolNd)):
        return 1  # its stride upsamples
    stride = getattr(module, "stride", 1)
    return int(max(pair(stride)) if stride else 1)


def has_stride(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Convs, pools and modules declaring a stride: they say exactly how much they downsample."""
    return window_of(gm, n) is not None or hasattr(module_of(gm, n), "stride")


def conv_kernel(gm, node) -> int:
    """The largest kernel extent of a conv node (1 for pointwise convs, 0 for non-convs)."""
    window = window_of(gm, node) if is_conv(gm, node) else None
    return window.extent if window is not None else 0


def is_depthwise(m: nn.Module) -> bool:
    """A conv (torch's, timm's MixedConv2d, an N-Jet conv) with one group per channel."""
    if type(m).__name__ == "MixedConv2d":
        return all(is_depthwise(c) for c in m.values())
    groups = getattr(m, "groups", 1)
    return groups > 1 and groups == m.in_channels == m.out_channels


# ---------------------------------------------------------------------------------------------
# node kinds

_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_CAT = {torch.cat, torch.concat}
_NORM_FUNCS = {F.layer_norm, F.batch_norm, F.group_norm, F.instance_norm}

NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@functools.cache
def dropout_types() -> tuple[type, ...]:
    """torch's dropout layers and timm's (DropPath, DropBlock2d; timm is imported on the first
    call). Also readable as ``DROPOUTS``; ``ACTIVATIONS`` is :func:`activations.module_types`."""
    types = [nn.Dropout, nn.Dropout2d, nn.AlphaDropout]
    try:
        import timm.layers as tl

        types += [getattr(tl, n) for n in ("DropPath", "DropBlock2d") if hasattr(tl, n)]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


__getattr__ = constants(__name__, ACTIVATIONS=activations.module_types, DROPOUTS=dropout_types)


def is_conv(gm, node) -> bool:
    """A call of an ``nn.Conv2d`` (or subclass) or of timm's MixedConv2d."""
    m = module_of(gm, node)
    return isinstance(m, nn.Conv2d) or (m is not None and type(m).__name__ == "MixedConv2d")


def is_spatial_conv(gm, node) -> bool:
    """A conv (:func:`is_conv`) whose kernel is larger than 1x1."""
    return is_conv(gm, node) and conv_kernel(gm, node) > 1


def is_linear(gm, node) -> bool:
    """A call of an ``nn.Linear``."""
    return isinstance(module_of(gm, node), nn.Linear)


def is_norm(gm, node) -> bool:
    """A normalisation: a norm layer (BatchNorm, GroupNorm, LayerNorm, timm's norm-act layers,
    ...) or a functional norm."""
    if node.op == "call_function":
        return node.target in _NORM_FUNCS
    return isinstance(module_of(gm, node), NORMS)


def is_activation(gm, node) -> bool:
    """An activation: a layer, function or tensor method of the activation table
    (``reverso.ir.activations``)."""
    if node.op == "call_function":
        return node.target in activations.FUNCTIONS
    if node.op == "call_method":
        return node.target in activations.METHODS
    return isinstance(module_of(gm, node), activations.module_types())


def is_dropout(gm, node) -> bool:
    """A dropout: ``F.dropout``/``F.dropout2d`` or a dropout layer (torch's and timm's)."""
    if node.op == "call_function":
        return node.target in {F.dropout, F.dropout2d}
    return isinstance(module_of(gm, node), dropout_types())


def is_identity(gm, node) -> bool:
    """A call of an ``nn.Identity``."""
    return isinstance(module_of(gm, node), nn.Identity)


#: torch's padding layers (zero, constant, reflect, replicate, circular)
PADDINGS = (
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.modules.padding._CircularPadNd,
)


def is_padding(gm, node) -> bool:
    """``F.pad``, a torch padding layer or reverso's SamePad2d: the map grows by its border only."""
    from reverso.nn.padding import SamePad2d

    if node.op == "call_function":
        return node.target in (F.pad, torch.constant_pad_nd)
    if node.op == "call_method":
        return False
    return isinstance(module_of(gm, node), (*PADDINGS, SamePad2d))


def is_pointwise(gm, node) -> bool:
    """Shape- and width-preserving single-input layers: norms, activations, dropouts, identities."""
    return (
        is_norm(gm, node)
        or is_activation(gm, node)
        or is_dropout(gm, node)
        or is_identity(gm, node)
    )


def is_pool(gm, node) -> bool:
    """A (non-adaptive) spatial pooling op: max/avg pooling, a resize that shrinks the map
    (``F.interpolate(x, scale_factor=0.5)``), or any layer that declares a stride, learns nothing
    and keeps the channels (a blur pool: a fixed filter, then subsampling; not a space-to-depth,
    which moves pixels into channels)."""
    window = window_of(gm, node)
    if window is not None:
        return window.kind != "conv"
    if is_resize(gm, node):
        source = feature_input(node)
        return source is not None and is_feature_map(node) and _shrinks(node, source)
    m = module_of(gm, node)
    source = feature_input(node)
    return (
        m is not None
        and hasattr(m, "stride")
        and not isinstance(m, nn.Conv2d)
        and next(m.parameters(), None) is None
        and (source is None or channels(node) == channels(source))
    )


#: functions that return (map, indices), and the function that returns the map alone
WITH_INDICES = {
    F.max_pool1d_with_indices: F.max_pool1d,
    F.max_pool2d_with_indices: F.max_pool2d,
    F.max_pool3d_with_indices: F.max_pool3d,
    F.adaptive_max_pool1d_with_indices: F.adaptive_max_pool1d,
    F.adaptive_max_pool2d_with_indices: F.adaptive_max_pool2d,
    F.adaptive_max_pool3d_with_indices: F.adaptive_max_pool3d,
}


def returns_indices(gm, node) -> bool:
    """A max-pool that returns (map, indices of the maxima): ``return_indices=True``."""
    if node.op == "call_module":
        return getattr(gm.get_submodule(node.target), "return_indices", False) is True
    return node.op == "call_function" and node.target in WITH_INDICES


def is_resize(gm, node) -> bool:
    """``F.interpolate`` or an ``nn.Upsample`` layer (whichever way it scales)."""
    if node.op == "call_function":
        return node.target in (F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest)
    return isinstance(module_of(gm, node), nn.Upsample)


def _shrinks(node: fx.Node, source: fx.Node) -> bool:
    (h, w), (h0, w0) = spatial(node), spatial(source)
    return h <= h0 and w <= w0 and (h, w) != (h0, w0)


def _calls(node: fx.Node, functions: set, methods: set) -> bool:
    return (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target in methods
    )


def is_add(node: fx.Node) -> bool:
    """An addition (``a + b``, ``torch.add``, ``x.add_(y)``): how a residual skip joins."""
    return _calls(node, _ADD, {"add", "add_"})


def is_join(node: fx.Node) -> bool:
    """An elementwise op combining two tensors (add, sub, mul)."""
    if not _calls(node, _ADD | _SUB | _MUL, {"add", "add_", "mul", "mul_", "sub", "sub_"}):
        return False
    return sum(isinstance(a, fx.Node) and tensor_shape(a) is not None for a in node.args[:2]) == 2


def is_split(node: fx.Node) -> bool:
    """``torch.split(x, sizes, dim)`` or ``x.split(sizes, dim)``."""
    return _calls(node, {torch.split, torch.functional.split, torch.Tensor.split}, {"split"})


def slice_step(node: fx.Node) -> int:
    """The largest step of a strided slice ``x[..., s::k, ...]`` (1 for any other node)."""
    if node.target is not operator.getitem or not isinstance(node.args[1], tuple):
        return 1
    return max((i.step or 1 for i in node.args[1] if isinstance(i, slice)), default=1)


def is_cat(node: fx.Node) -> bool:
    """A concatenation (``torch.cat`` and its aliases)."""
    return node.op == "call_function" and node.target in _CAT


def feature_input(node: fx.Node) -> fx.Node | None:
    """The first feature-map input of a node."""
    for a in node.all_input_nodes:
        if is_feature_map(a):
            return a
    return None


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


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """'name' (Type) for messages, and the user's module it was traced in: ``'add' (add) in
    'layer1.0' (BasicBlock)``."""
    m = module_of(gm, node)
    if m is not None:
        own = f"'{node.target}' ({type(m).__name__})"
    else:
        own = f"'{node.name}' ({getattr(node.target, '__name__', node.target)})"
    owner = traced_in(node)
    return own if owner is None else f"{own} in '{owner[0]}' ({owner[1]})"


def owner_class(node: fx.Node) -> type | None:
    """The class of the innermost user module (not a container) the node was traced in."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if node.op == "call_module" and stack:
        stack = stack[:-1]
    for entry in reversed(stack):
        cls = entry[1] if isinstance(entry, tuple) else entry
        if isinstance(cls, type) and cls.__name__ not in ("Sequential", "ModuleList", "ModuleDict"):
            return cls
    return None


def traced_in(node: fx.Node) -> tuple[str, str] | None:
    """The path and class name of the innermost module (not a container, not the node's own
    layer) whose forward the node was traced in, from torch.fx's ``nn_module_stack``."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if node.op == "call_module" and stack:
        stack = stack[:-1]
    for entry in reversed(stack):
        path, cls = entry if isinstance(entry, tuple) else (None, entry)
        name = getattr(cls, "__name__", str(cls).rpartition(".")[2].strip("'>"))
        if path and name not in ("Sequential", "ModuleList", "ModuleDict"):
            return path, name
    return None


def module_path(nodes: list[fx.Node]) -> list[str]:
    """The common module path of the nodes' layers; for a single layer, the path of its parent
    (``layer2.0.conv1`` alone -> ``["layer2", "0"]``)."""
    paths = [n.target.split(".") for n in nodes if n.op == "call_module"]
    if not paths:
        return []
    common = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    if len(common) == min(len(p) for p in paths):
        common = common[:-1]
    return common
