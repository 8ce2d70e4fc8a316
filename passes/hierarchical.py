"""hierarchical: a plain CNN rebuilt as a hierarchical attribute CNN (docs/methods/hcnn.md,
section 9).

The body (every conv from the first to the head) becomes HCNN layers of one width
``C = (K / 2) K``, which the pass imposes as top-down's ``uni`` arrangement does (fresh weights:
no weight transfer is possible):

- the first conv becomes layer 1 (``in_chans -> K``, its kernel and stride; BatchNorm, ELU) and
  the lift to two attributes (:class:`~reverso.nn.hierarchical.HLift`);
- every later conv becomes an :class:`~reverso.nn.hierarchical.HConv2d` with its kernel (odd,
  square) as the spatial filters and its stride on them; the norms and activations after a conv
  are the layer's own now and go; a pool between two convs becomes the next layer's stride;
- the HCNN layers are dense with 'same' zero padding (the thesis's), whatever the conv's groups,
  padding and padding mode were; a dilated conv is refused (its receptive field would shrink);
- ``head="keep"``: the model's head stays, its first layer rebuilt for the ``C`` channels (the
  authors' code: global pooling and a classifier); ``head="readout"``: the head goes, the last
  layer gets one output per class and the readout (eq. 36) follows (the thesis).

Residual units are refused: an identity shortcut would add maps whose attribute axes mean
``(v_{j-2}, v_{j-1})`` to maps indexed ``(v_{j-1}, v_j)``. So are branches and other operations
in the body (the body must be a chain).
"""

from __future__ import annotations

import contextlib

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import UnsupportedTopologyError
from reverso.ir.shapes import propagate
from reverso.nn.hierarchical import HConv2d, HLift, HReadout
from reverso.options import HierarchicalOptions
from reverso.rewrite.residuals import residual_units


class Hierarchical(Pass):
    name = "hierarchical"

    Options = HierarchicalOptions  # K, Q, variant, head, attr_kernel
    inside_topdown = False
    inside_topdown_instead = "it rebuilds every layer; call reverso.hierarchical on the model"

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        rebuild(gm, ctx.example_input(), **vars(self.settings))
        return PassResult(gm, True)


def rebuild(gm: fx.GraphModule, example, *, K, Q, variant, head, attr_kernel) -> None:
    """Rewrite ``gm`` in place (see the module); ``example`` is an input (meta is fine)."""
    residual = residual_units(gm)
    if residual:
        raise UnsupportedTopologyError(
            f"'{residual[0].add.name}' adds a residual shortcut; attribute layers cannot "
            "add maps of different attribute levels. Convert a plain CNN (no residual units)"
        )
    units, head_start = _body(gm)
    _check_head(gm, head_start)
    classes = _classes(gm)
    if _weighted(gm, head_start) is None:  # a pooling head reads the classes off the last conv
        head = "readout"
    stride = 1
    for index, (conv, removed, pooled) in enumerate(units):
        module = ir.module_of(gm, conv)
        k, s = module.kernel_size, module.stride
        if k[0] != k[1] or k[0] % 2 == 0 or s[0] != s[1]:
            raise UnsupportedTopologyError(
                f"conv '{conv.name}' has a {k[0]}x{k[1]} kernel and stride {s}; "
                "HCNN layers need square odd kernels and one stride"
            )
        if module.dilation != (1, 1):
            raise UnsupportedTopologyError(
                f"conv '{conv.name}' is dilated {module.dilation}; HCNN layers have no dilation, "
                "so its receptive field would shrink. Convert a model without dilated convs"
            )
        s = s[0] * stride
        if index == 0:
            new = nn.Sequential(
                nn.Conv2d(module.in_channels, K, k[0], s, k[0] // 2, bias=False),
                nn.BatchNorm2d(K, affine=False),
                nn.ELU(),
                HLift(K, K, attr_kernel=attr_kernel[1]),
            )
        else:
            last = index == len(units) - 1 and head == "readout"
            new = HConv2d(
                K // 2,
                K,
                classes if last else K,
                Q=Q,
                kernel=k[0],
                stride=s,
                attr_kernel=attr_kernel,
                variant=variant,
            )
        ir.set_module(gm, conv.target, ir.placed_in(gm, new))
        stride = pooled
        for node in removed:  # the conv's norm and activation, and pools folded into the stride
            node.replace_all_uses_with(node.all_input_nodes[0])
            gm.graph.erase_node(node)
    if head == "readout":
        _readout(gm, head_start, classes)
    else:
        _rebuild_head(gm, head_start, example)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()


def _body(gm: fx.GraphModule):
    """The units ``(conv, nodes to remove, stride of the pools after it)`` from the first conv to
    the head, and the head's first node."""
    nodes = list(gm.graph.nodes)
    first = next((i for i, n in enumerate(nodes) if ir.is_conv(gm, n)), None)
    if first is None:
        raise UnsupportedTopologyError(f"{type(gm).__name__} has no conv to rebuild")
    units, head_start = [], None
    for node in nodes[first:]:
        if node.op == "output" or not _is_map(gm, node):
            head_start = node
            break
        if ir.is_conv(gm, node):
            units.append([node, [], 1])
        elif ir.is_pool(gm, node):
            window = ir.window_of(gm, node)
            units[-1][1].append(node)
            if window is not None:
                units[-1][2] *= window.step
            else:  # a resize that shrinks by f folds in as a stride f
                units[-1][2] *= ir.spatial(ir.feature_input(node))[0] // ir.spatial(node)[0]
        elif ir.is_norm(gm, node) or ir.is_activation(gm, node):
            units[-1][1].append(node)
        elif not (ir.is_dropout(gm, node) or ir.is_identity(gm, node)):
            raise UnsupportedTopologyError(
                f"'{node.name}' ({node.op} {node.target}) is neither a conv, a pool, "
                "a norm nor an activation; the pass rebuilds plain conv-pool chains"
            )
        if len(node.users) > 1:
            raise UnsupportedTopologyError(
                f"'{node.name}' feeds {len(node.users)} layers; the pass rebuilds "
                "plain chains, not branches"
            )
    last_conv = units[-1]
    if last_conv[2] > 1:  # a pool after the last conv stays: nothing follows to take its stride
        last_conv[1] = [n for n in last_conv[1] if not ir.is_pool(gm, n)]
    return units, head_start


def _check_head(gm: fx.GraphModule, head_start: fx.Node) -> None:
    """Between the body and the head's first layer with weights only global pooling, flattening,
    dropout and activations may run (the head is rebuilt for, or replaced by what, the HCNN body
    gives); a model that goes on working on its maps (reshaped into tokens or patches) is no
    plain CNN."""
    node = head_start
    while node.op != "output":
        module = ir.module_of(gm, node)
        if module is not None and next(module.parameters(), None) is not None:
            return  # the head's first weighted layer: rebuilt or replaced
        value = node.meta.get("val")
        pooled = (
            not isinstance(value, torch.Tensor)  # sizes read for a view
            or value.dim() <= 2  # (batch, features)
            or ir.spatial(node) == (1, 1)
            or _is_adaptive_pool(gm, node)
        )
        if not (pooled or ir.is_pointwise(gm, node)):
            raise UnsupportedTopologyError(
                f"after the last conv the model goes on working on its maps at "
                f"{ir.describe(gm, node)} (a value of shape {tuple(value.shape)}) before any "
                "global pooling or flattening into a classifier: the hierarchical pass rebuilds "
                "plain CNNs (conv-pool chains with such a head), not models that reshape their "
                "maps into tokens or patches"
            )
        node = node.next


def _is_map(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A feature map of the body: more than one pixel, and not made by adaptive pooling (the
    head's pooling to a fixed size)."""
    shape = ir.spatial(node)
    return shape is not None and max(shape) > 1 and not _is_adaptive_pool(gm, node)


def _is_adaptive_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d)
    module = ir.module_of(gm, node)  # torch's, or timm's SelectAdaptivePool2d and its kin
    return (
        module is not None
        and "Adaptive" in type(module).__name__
        and "Pool" in type(module).__name__
    )


def _classes(gm: fx.GraphModule) -> int:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    value = output.args[0].meta.get("val") if isinstance(output.args[0], fx.Node) else None
    if value is None or value.dim() != 2:
        raise UnsupportedTopologyError("the model must output (batch, classes) logits")
    return int(value.shape[1])


def _readout(gm: fx.GraphModule, head_start: fx.Node, classes: int) -> None:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    source = head_start.all_input_nodes[0] if head_start.op != "output" else head_start.args[0]
    name = ir.unique_name(gm, "readout")
    gm.add_submodule(name, HReadout(classes))
    with gm.graph.inserting_before(output):
        logits = gm.graph.call_module(name, (source,))
    output.args = (logits,)


def _weighted(gm: fx.GraphModule, start: fx.Node) -> tuple[fx.Node, str, nn.Module] | None:
    """The head's first layer with weights: its node, its module's path and the module (inside
    a composite head module, its first Linear or Conv2d)."""
    node = start
    while node.op != "output":
        module = ir.module_of(gm, node)
        if module is not None and next(module.parameters(), None) is not None:
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                return node, node.target, module
            inner = next(
                (
                    (n, m)
                    for n, m in module.named_modules()
                    if isinstance(m, (nn.Linear, nn.Conv2d))
                ),
                None,
            )
            if inner is not None:
                return node, f"{node.target}.{inner[0]}", inner[1]
        node = node.next
    return None


def _rebuild_head(gm: fx.GraphModule, start: fx.Node, example) -> None:
    """The head's first layer with weights rebuilt (fresh) for what the new body gives it."""
    node, path, module = _weighted(gm, start)
    old = node.all_input_nodes[0].meta["val"]
    # the new shapes up to that layer: propagation stops there, where the width is still the old
    with contextlib.suppress(Exception):
        propagate(gm, example)
    new = node.all_input_nodes[0].meta["val"]
    if isinstance(module, nn.Linear):
        # the node itself reads the new map; inside a composite head (pooling or flattening
        # first) the Linear's input features scale with the channels
        features = (
            new.shape[-1]
            if node.target == path
            else module.in_features * new.shape[1] // old.shape[1]
        )
        layer = nn.Linear(features, module.out_features, bias=module.bias is not None)
    else:
        layer = nn.Conv2d(
            new.shape[1],
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    ir.set_module(gm, path, ir.placed_in(gm, layer))
