"""Closed-form shape rules for the layers and functions most graphs are made of.

:class:`~reverso.ir.shapes.ShapeProp` calls them instead of running a meta copy of the layer:
they give the same shapes and make the same channel checks, in a fraction of the time (a norm's
decomposition on meta tensors costs more than the rest of a model). A layer without a rule runs
on meta tensors. Rules are keyed by exact class; :func:`register_shape_rule` adds one.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import nn

from reverso.ir import activations
from reverso.ir.windows import module_window, pair
from reverso.nn.pyramid import ImagePyramid

META = torch.device("meta")


def _conv_out(size: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _window_rule(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Output size of a conv or pool from its window; convs also check their input channels."""
    w = module_window(m)
    if w.kind == "conv" and (x.dim() != 4 or x.shape[1] != m.in_channels):
        raise RuntimeError(
            f"{type(m).__name__} expects {m.in_channels} input channels, got input of shape {tuple(x.shape)}"
        )
    size = x.shape[-2:]
    if w.padding == "same":
        h, wd = size
    else:
        p = (0, 0) if w.padding == "valid" else w.padding
        h, wd = (
            _conv_out(size[i], w.kernel[i], w.stride[i], p[i], w.dilation[i], w.ceil_mode)
            for i in range(2)
        )
    if h < 1 or wd < 1:
        raise RuntimeError(f"output size {h}x{wd} is too small for input {tuple(x.shape)}")
    if w.kind == "conv":
        return x.new_empty((x.shape[0], m.out_channels, h, wd))
    return _with_indices(m, x.new_empty((*x.shape[:-2], h, wd)))


def _with_indices(m: nn.Module, out: torch.Tensor):
    """A max-pool built with ``return_indices=True`` returns the indices beside its output."""
    if getattr(m, "return_indices", False):
        return out, out.new_empty(out.shape, dtype=torch.long)
    return out


def channel_norm_rule(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A norm over channels-first maps (BatchNorm, GroupNorm, a channels-first LayerNorm, and
    timm's norm-act layers, whose activations keep the shape): the same shape, after the channel
    checks the real layer makes."""
    expected, groups = _norm_channels(m), getattr(m, "num_groups", 1)
    if x.dim() < 2 or (expected is not None and x.shape[1] != expected) or x.shape[1] % groups:
        raise RuntimeError(
            f"{type(m).__name__} expects {expected or f'a multiple of {groups}'} channels, got "
            f"input of shape {tuple(x.shape)}"
        )
    return x.new_empty(x.shape)


def _norm_channels(m: nn.Module) -> int | None:
    """The channel count the norm checks: only when it has per-channel weights or statistics."""
    if hasattr(m, "normalized_shape"):  # a LayerNorm over the channel dim checks its shape
        return m.normalized_shape[0]
    per_channel = (
        getattr(m, "weight", None) is not None or getattr(m, "running_mean", None) is not None
    )
    if not per_channel:
        return None
    return getattr(m, "num_features", None) or m.num_channels


def _pyramid_rule(m: ImagePyramid, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h, w = x.shape[-2:]
    return tuple(
        x.new_empty((*x.shape[:-2], -(-h // 2**level), -(-w // 2**level))) for level in m.levels
    )


def _linear_rule(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] != m.in_features:
        raise RuntimeError(f"Linear expects {m.in_features} input features, got {tuple(x.shape)}")
    return x.new_empty((*x.shape[:-1], m.out_features))


def _same_shape(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape)


def _adaptive_rule(m: nn.AdaptiveAvgPool2d, x: torch.Tensor) -> torch.Tensor:
    h, w = pair(m.output_size)
    h = x.shape[-2] if h is None else h
    w = x.shape[-1] if w is None else w
    return _with_indices(m, x.new_empty((*x.shape[:-2], h, w)))


def _flatten_rule(m: nn.Flatten, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x, m.start_dim, m.end_dim)


SHAPE_RULES: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    nn.Conv2d: _window_rule,
    nn.BatchNorm2d: channel_norm_rule,
    nn.GroupNorm: channel_norm_rule,
    ImagePyramid: _pyramid_rule,
    nn.Linear: _linear_rule,
    nn.MaxPool2d: _window_rule,
    nn.AvgPool2d: _window_rule,
    nn.AdaptiveAvgPool2d: _adaptive_rule,
    nn.AdaptiveMaxPool2d: _adaptive_rule,
    nn.Flatten: _flatten_rule,
    nn.Identity: _same_shape,
    nn.Dropout: _same_shape,
    nn.Dropout2d: _same_shape,
    **{act: _same_shape for act in activations.TORCH_TYPES},
}


def register_shape_rule(cls: type, rule: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
    """Give ``cls`` (exactly that class, not its subclasses) a closed-form shape rule: the
    propagation calls ``rule(module, x)`` instead of running a meta copy of the module."""
    SHAPE_RULES[cls] = rule


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy's broadcasting of two shapes, in plain Python (``torch.broadcast_shapes`` takes a
    millisecond a call); a RuntimeError as torch raises it when they do not broadcast."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y and 1 not in (x, y):
            raise RuntimeError(
                f"The size of tensor a ({x}) must match the size of tensor b ({y}) at "
                f"non-singleton dimension {i}"
            )
        out.append(y if x == 1 else x)
    return tuple(out)


def _broadcast(a, b) -> torch.Tensor:
    ta, tb = isinstance(a, torch.Tensor), isinstance(b, torch.Tensor)
    if ta and tb:
        shape = broadcast_shape(tuple(a.shape), tuple(b.shape))
        return torch.empty(shape, device=META, dtype=torch.promote_types(a.dtype, b.dtype))
    return (a if ta else b).new_empty((a if ta else b).shape)


def _elementwise(x, *args, **kwargs) -> torch.Tensor:
    return x.new_empty(x.shape)


def _cat(tensors, dim=0, **kwargs) -> torch.Tensor:
    shape = list(tensors[0].shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return tensors[0].new_empty(shape)


#: shape rules for the functions most graphs are made of (everything else runs on meta tensors)
FUNCTION_RULES = {
    operator.add: _broadcast,
    operator.iadd: _broadcast,
    operator.mul: _broadcast,
    operator.imul: _broadcast,
    operator.sub: _broadcast,
    torch.add: _broadcast,
    torch.mul: _broadcast,
    torch.cat: _cat,
    torch.relu: _elementwise,
    torch.sigmoid: _elementwise,
    torch.nn.functional.relu: _elementwise,
    torch.nn.functional.silu: _elementwise,
}
METHOD_RULES = {"sigmoid": _elementwise, "relu": _elementwise, "add": _broadcast, "mul": _broadcast}
