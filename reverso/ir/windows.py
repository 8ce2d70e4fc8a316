"""The one reader of conv and pooling geometry: kernel, stride, padding, dilation.

The analysis (levels), the passes (strides, antialiasing), the receptive-field calculator and the
shape rules all read a layer's window here, for modules and functional pools alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

#: functional (non-adaptive) pools
POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, torch.max_pool2d, torch._C._nn.avg_pool2d}
#: timm's dynamically padded pools
_POOL_SAME = {"MaxPool2dSame", "AvgPool2dSame"}


@dataclass(frozen=True)
class Window:
    """The sliding window of a conv or pool, per axis (height, width)."""

    kind: str  # "conv" | "max" | "avg"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str  # "same"/"valid" for string-padded convs
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True

    @property
    def extent(self) -> int:
        """The largest kernel extent with dilation (what the window covers)."""
        return max(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation, strict=True))

    @property
    def step(self) -> int:
        """The largest stride (the downsampling factor)."""
        return max(self.stride)


def pair(v) -> tuple[int, int]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def module_window(m: nn.Module) -> Window | None:
    """The window of a conv or pool module (timm's MixedConv2d: its largest kernel)."""
    if isinstance(m, nn.Conv2d):
        padding = m.padding if isinstance(m.padding, str) else pair(m.padding)
        return Window("conv", pair(m.kernel_size), pair(m.stride), padding, pair(m.dilation))
    if type(m).__name__ == "MixedConv2d":
        convs = [module_window(c) for c in m.values()]  # None for convs of other kinds
        return None if None in convs else max(convs, key=lambda w: w.extent)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) or type(m).__name__ in _POOL_SAME:
        return Window(
            "max" if isinstance(m, nn.MaxPool2d) or "Max" in type(m).__name__ else "avg",
            pair(m.kernel_size),
            pair(m.stride or m.kernel_size),
            pair(m.padding),
            pair(getattr(m, "dilation", 1)),
            bool(m.ceil_mode),
            bool(getattr(m, "count_include_pad", True)),
        )
    return None


def window_of(gm: fx.GraphModule, node: fx.Node) -> Window | None:
    """The window of a conv or pool node (module or functional pool), None for other nodes."""
    if node.op == "call_function" and node.target in POOL_FUNCTIONS:
        is_max = node.target in (F.max_pool2d, torch.max_pool2d)
        names = ["input", "kernel_size", "stride", "padding"]
        names += ["dilation", "ceil_mode"] if is_max else ["ceil_mode", "count_include_pad"]
        bound = {k: _known(v) for k, v in zip(names, node.args, strict=False)}
        bound |= {k: _known(v) for k, v in node.kwargs.items()}
        if not all(_is_size(bound.get(k, 0)) for k in names[1:4]):
            return None  # a size computed from a shape, not yet propagated
        kernel = pair(bound["kernel_size"])
        return Window(
            "max" if is_max else "avg",
            kernel,
            pair(bound.get("stride") or kernel),
            pair(bound.get("padding", 0)),
            pair(bound.get("dilation", 1)),
            bool(bound.get("ceil_mode", False)),
            bool(bound.get("count_include_pad", True)),
        )
    if node.op == "call_function" and node.target is F.conv2d:
        return _conv2d_window(node)
    return module_window(gm.get_submodule(node.target)) if node.op == "call_module" else None


def _known(v):
    """A size given as a node (``x.size()[2:]``, ``x.size(3)``): its propagated value."""
    return v.meta.get("val") if isinstance(v, fx.Node) else v


def _is_size(v) -> bool:
    """None (a default), an int or a tuple of ints."""
    items = v if isinstance(v, (tuple, list)) else [v]
    return all(x is None or isinstance(x, int) for x in items)


def _conv2d_window(node: fx.Node) -> Window | None:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``: the kernel from the
    weight's shape (known once shapes were propagated)."""
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    bound = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    weight = bound["weight"].meta.get("val") if isinstance(bound["weight"], fx.Node) else None
    if not isinstance(weight, torch.Tensor):
        return None
    padding = bound.get("padding", 0)
    return Window(
        "conv",
        pair(tuple(weight.shape[-2:])),
        pair(bound.get("stride", 1)),
        padding if isinstance(padding, str) else pair(padding),
        pair(bound.get("dilation", 1)),
    )
