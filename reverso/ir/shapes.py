"""Shape propagation on meta tensors.

Every pass leaves the graph with ``node.meta["val"]`` holding a meta tensor (or a nested
structure of them) for each node, so later passes read shapes instead of recomputing them.
The common layers have closed-form shape rules and everything else runs on meta tensors through
a cached meta copy of its module. The one exception: a module whose forward depends on the data
(``x.item()``, ``if x.sum() > 0``) cannot run on meta tensors, so it runs once for real, on zeros
of the right shapes, on its own device.
"""

from __future__ import annotations

import copy
import itertools
import math
import weakref
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.fx as fx
from torch import nn

from reverso.errors import InputSizeError
from reverso.ir.modes import evaluating
from reverso.ir.shape_rules import FUNCTION_RULES, META, METHOD_RULES, SHAPE_RULES
from reverso.options import check_size


def _zeros_like_meta(v, device):
    return (
        torch.zeros(v.shape, dtype=v.dtype, device=device)
        if isinstance(v, torch.Tensor) and v.is_meta
        else v
    )


def _to_meta(v):
    return v.to(META) if isinstance(v, torch.Tensor) else v


def meta_like(t: torch.Tensor) -> torch.Tensor:
    """An empty meta tensor with the shape, dtype and parameter-ness of ``t``."""
    mt = torch.empty_like(t, device=META)
    return nn.Parameter(mt, t.requires_grad) if isinstance(t, nn.Parameter) else mt


def meta_clone(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers live on the meta device (no data copied)."""
    memo = {id(t): meta_like(t) for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


class ShapeProp(fx.Interpreter):
    """Runs a GraphModule on meta tensors and stores each result in ``node.meta["val"]``.

    Meta copies of modules are cached (weakly: a module that is gone takes its copy with it), so
    that re-propagating after every pass costs little.
    """

    #: meta copy of each module seen, dropped with the module (user modules are never kept alive)
    _clones: ClassVar[weakref.WeakKeyDictionary[nn.Module, tuple]] = weakref.WeakKeyDictionary()

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=False)

    def run_node(self, n: fx.Node):
        try:
            result = super().run_node(n)
        except Exception as err:
            if not hasattr(err, "_reverso_node"):
                err._reverso_node = n.name
            raise
        n.meta["val"] = result
        return result

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        rule = SHAPE_RULES.get(type(module))
        if rule is not None and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            return rule(module, args[0])
        try:
            with RealKernelChecks():
                return self.meta_module(module)(*args, **kwargs)
        except (RuntimeError, NotImplementedError) as err:
            if "meta" not in str(err):
                raise
            # data-dependent code (x.item(), `if x.sum() > 0`) cannot run on meta tensors:
            # run this one module on zeros of the right shapes instead
            ref = next(itertools.chain(module.parameters(), module.buffers()), None)
            device = ref.device if ref is not None else torch.device("cpu")
            real = torch.utils._pytree.tree_map(
                lambda v: _zeros_like_meta(v, device), (args, kwargs)
            )
            return torch.utils._pytree.tree_map(_to_meta, module(*real[0], **real[1]))

    def call_function(self, target, args, kwargs):
        if target is torch.nn.functional.conv2d:
            _check_conv2d(*args, **kwargs)  # meta kernels do not check the groups
        rule = FUNCTION_RULES.get(target)
        if rule is not None and _plain(args, kwargs):
            return rule(*args, **kwargs)
        # a tensor the graph creates (torch.arange(n), torch.ones(k)) lives on the CPU: move it
        # to the meta device, where every other value of the propagation lives
        result = super().call_function(target, args, kwargs)
        return torch.utils._pytree.tree_map(_to_meta, result)

    def call_method(self, target, args, kwargs):
        if target in ("to", "cpu", "cuda") and isinstance(args[0], torch.Tensor):
            return _meta_to(args[0], *args[1:], **kwargs)  # shapes stay on the meta device
        rule = METHOD_RULES.get(target)
        if rule is not None and _plain(args, kwargs):
            return rule(*args, **kwargs)
        return super().call_method(target, args, kwargs)

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return meta_like(value).detach() if isinstance(value, torch.Tensor) else value

    @classmethod
    def meta_module(cls, module: nn.Module) -> nn.Module:
        """The module's meta clone, made again when a pass has swapped one of its submodules."""
        parts = tuple(map(id, module.modules()))
        cached = cls._clones.get(module)
        if cached is None or cached[0] != parts:
            cached = cls._clones[module] = (parts, meta_clone(module))
        return cached[1]


def _meta_to(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``x.to(...)`` on the meta device: the dtype it asks for, never another device."""
    dtype = kwargs.get("dtype")
    for a in args:
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, torch.Tensor):
            dtype = a.dtype
    return _to_meta(x).to(dtype=dtype or x.dtype)


class RealKernelChecks(torch.overrides.TorchFunctionMode):
    """Inside a layer run on meta tensors, the checks real kernels make and meta kernels skip
    (a conv's groups), so that a shape propagation proves what a real forward would."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.conv2d or func is torch.conv2d:
            _check_conv2d(*args, **kwargs)
        return func(*args, **kwargs)


def _check_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> None:
    """What ``F.conv2d`` checks on real tensors: input channels = weight's * groups."""
    tensors = isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dim() == 4
    if tensors and (x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups):
        raise RuntimeError(
            f"conv2d with groups={groups} and a weight of shape {tuple(weight.shape)} cannot "
            f"take an input of {x.shape[1]} channels"
        )


def _plain(args, kwargs) -> bool:
    """Rules handle positional tensors/numbers only (no out=, no alpha=, ...), with a tensor among
    them: arithmetic on sizes (``x.shape[1] - k``, ``h * w``) runs as itself, giving numbers."""
    if kwargs and set(kwargs) - {"dim"}:
        return False
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    tensors += [
        t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)
    ]
    return bool(tensors) and all(
        isinstance(a, (torch.Tensor, int, float, list, tuple)) for a in args
    )


class Fingerprint:
    """Identity of a graph's nodes (their op and target), of the modules they call and of their
    positional and keyword arguments.

    It holds the objects themselves, so none of them can be freed and its ``id`` reused by a
    new object while the fingerprint is kept: equal fingerprints really mean the same graph.
    """

    def __init__(self, gm: fx.GraphModule):
        self.objects = tuple(
            (n, gm.get_submodule(n.target) if n.op == "call_module" else None, n.args, n.kwargs)
            for n in gm.graph.nodes
        )
        self.key = tuple(
            (n.op, n.target if isinstance(n.target, str) else id(n.target), *map(id, entry))
            for n, entry in zip(gm.graph.nodes, self.objects, strict=True)
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, Fingerprint) and self.key == other.key

    __hash__ = None

    def __deepcopy__(self, memo) -> None:
        """A copied graph has other nodes: its shapes count as unchecked (and the nodes, linked
        to each other, are not copied one by one)."""
        return None


def mark_shapes_current(gm: fx.GraphModule) -> None:
    """Record that every node's ``meta["val"]`` now holds the shape of this very graph."""
    gm.meta["shapes_of"] = fingerprint(gm)


def shapes_current(gm: fx.GraphModule) -> bool:
    """Whether the graph is unchanged since its shapes were last propagated."""
    return gm.meta.get("shapes_of") == fingerprint(gm)


def fingerprint(gm: fx.GraphModule) -> Fingerprint:
    """Equal fingerprints mean the shapes stored in the nodes are still those of the graph."""
    return Fingerprint(gm)


def propagate(gm: fx.GraphModule, *inputs: torch.Tensor) -> None:
    """Fill ``node.meta["val"]`` for every node of ``gm`` given example inputs (any device)."""
    meta_inputs = [x.to(META) if isinstance(x, torch.Tensor) else x for x in inputs]
    with evaluating(gm), torch.no_grad():
        ShapeProp(gm).run(*meta_inputs)
    mark_shapes_current(gm)


def tensor_shape(node: fx.Node) -> torch.Size | None:
    """The shape of a node's value if it is a tensor, else None."""
    val = node.meta.get("val")
    return val.shape if isinstance(val, torch.Tensor) else None


def is_feature_map(node: fx.Node) -> bool:
    """The node's propagated value is a 4-D tensor (an NCHW map)."""
    shape = tensor_shape(node)
    return shape is not None and len(shape) == 4


def channels(node: fx.Node) -> int | None:
    """The channels of the node's 4-D value (its dimension 1), None for any other value."""
    shape = tensor_shape(node)
    return int(shape[1]) if shape is not None and len(shape) == 4 else None


def spatial(node: fx.Node) -> tuple[int, int] | None:
    """The height and width of the node's 4-D value, None for any other value."""
    shape = tensor_shape(node)
    return (int(shape[2]), int(shape[3])) if shape is not None and len(shape) == 4 else None


def level_of(size: Sequence[int], input_hw: Sequence[int]) -> int:
    """Level l = log2(H / h) of a feature map, averaged over both axes and rounded (so floor and
    ceil size conventions of odd inputs agree)."""
    ratios = [math.log2(full / max(part, 1)) for full, part in zip(input_hw, size, strict=True)]
    return round(sum(ratios) / len(ratios))


def check_input_size(input_size) -> tuple[int, int, int]:
    """Validate and normalise a (C, H, W) input size (an :class:`InputSizeError` otherwise)."""
    return check_size(input_size, "input_size", InputSizeError)


def output_value(gm: fx.GraphModule):
    """The value ``gm`` returns, as last propagated (a meta tensor, or a structure of them)."""
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return fx.node.map_arg(output, lambda n: n.meta.get("val"))


def output_shapes(gm: fx.GraphModule):
    """The shape of each value ``gm`` returns (its output's structure kept: a tuple, list or dict
    of shapes), from the shapes propagated into its nodes."""
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return fx.node.map_arg(output, lambda n: tuple(getattr(n.meta.get("val"), "shape", ())))
