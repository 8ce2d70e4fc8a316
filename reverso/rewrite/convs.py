"""Conv surgery: rebuild a conv at other widths, another kernel size, or stride 1.

The width registry's conv rule, the ``rev`` arrangement (kernels), ``downsample_to_upsample``
and ``antialias`` (strides) all change convs through these functions, so every rewrite reads a
conv's configuration the same way and pads by one documented policy.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from reverso.errors import OptionError, WidthError
from reverso.ir.edit import placed_in
from reverso.ir.nodes import is_depthwise
from reverso.ir.windows import pair
from reverso.nn.padding import SameConv2d


def placed_like(new: nn.Module, old: nn.Module) -> nn.Module:
    """Put ``new`` on the device/dtype of ``old`` (:func:`reverso.ir.placed_in`, the meta device
    included) and in its train/eval mode."""
    return placed_in(old, new).train(old.training)


def _conv_kwargs(conv: nn.Conv2d, **overrides) -> dict:
    """Constructor arguments of ``type(conv)`` read back from the instance, filtered by signature."""
    values = {
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
        "eps": getattr(conv, "eps", None),
    }
    values.update(overrides)
    params = inspect.signature(type(conv).__init__).parameters
    return {k: v for k, v in values.items() if k in params and v is not None}


def conv_groups_for(conv: nn.Conv2d, in_width: int, out_width: int, where: str = "") -> int:
    if conv.groups == 1:
        return 1
    if is_depthwise(conv):
        return in_width
    g = conv.groups
    if in_width % g or out_width % g:
        raise WidthError(
            f"grouped conv{f' at {where!r}' if where else ''} has groups={g} and cannot take "
            f"{in_width} -> {out_width} channels; choose widths divisible by {g} "
            "(for the 'uni' arrangement pass arrangement=<int> with a multiple of it)"
        )
    return g


def rebuild_conv(conv: nn.Conv2d, in_width: int, out_width: int, **overrides) -> nn.Conv2d:
    """A fresh conv of the same type and configuration with new widths (or kernel/stride/padding)."""
    groups = conv_groups_for(conv, in_width, out_width)
    kwargs = _conv_kwargs(conv, groups=groups, **overrides)
    kernel_size = kwargs.pop("kernel_size")
    cls = type(conv)
    if cls is SameConv2d and kwargs.get("padding") != "same":
        cls = nn.Conv2d  # padded otherwise now: torch's own conv pads it
    try:
        new = explicit_same(cls(in_width, out_width, kernel_size, **kwargs))
    except TypeError as err:
        raise WidthError(
            f"could not rebuild {type(conv).__name__} from its attributes ({err}); register a width "
            f"rule for it with reverso.register_width_rule({type(conv).__name__}, ...)"
        ) from err
    return new


def explicit_same(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with an even kernel padded 'same' at stride 1 as a layer that pads it itself, so
    that no forward warns or pads inside torch's conv call: a :class:`~reverso.nn.SameConv2d`
    for a plain ``nn.Conv2d`` (same parameters), timm's own ``same_pad`` for its standardised
    convs. Any other conv is returned as it is."""
    if conv.padding != "same" or all(k % 2 for k in pair(conv.kernel_size)):
        return conv
    if type(conv) is nn.Conv2d:
        with torch.device("meta"):
            new = SameConv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                dilation=conv.dilation,
                groups=conv.groups,
                bias=conv.bias is not None,
                padding_mode=conv.padding_mode,
            )
        new.weight, new.bias = conv.weight, conv.bias
        return new.train(conv.training)
    if getattr(conv, "same_pad", None) is False:  # timm's StdConv2d: pads 'same' per input
        conv.same_pad, conv.padding = True, (0, 0)
    return conv


def same_padding(kernel_size, dilation) -> tuple[int, int] | str:
    """Symmetric padding that keeps the size at stride 1, or 'same' for even kernels."""
    k = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
    d = dilation if isinstance(dilation, tuple) else (dilation, dilation)
    if all(ki % 2 == 1 for ki in k):
        return tuple(di * (ki - 1) // 2 for ki, di in zip(k, d, strict=True))
    return "same"


#: how a conv made stride 1 pads: "same" keeps the map size (the top-down net, whose maps must
#: match the pyramid's); "keep" keeps the conv's own padding, so that a stride-s blur after it
#: gives exactly the strided conv's output size (antialiasing, as the reference code does)
STRIDE_ONE_PADDING = ("same", "keep")


#: timm's layers that pad for each input size as TensorFlow's 'SAME' does (``ceil(n / stride)``
#: outputs, :func:`reverso.nn.padding.strided_same_pads`)
SAME_PADDING = ("Conv2dSame", "MaxPool2dSame", "AvgPool2dSame")


def pads_same(module: nn.Module) -> bool:
    """timm's 'SAME' padding per input size: a layer of :data:`SAME_PADDING`, or one that says so
    with ``same_pad = True`` (``StdConv2dSame``, ``ScaledStdConv2dSame``)."""
    return type(module).__name__ in SAME_PADDING or getattr(module, "same_pad", None) is True


def unpadded_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` at stride 1 without its 'SAME' padding (:func:`pads_same`), with a copy of its
    parameters, for a conv whose padding now comes from a layer before it: a plain ``nn.Conv2d``
    for ``Conv2dSame``, the conv itself with ``same_pad = False`` for the others."""
    if getattr(conv, "same_pad", None) is True:  # its forward does more (weight standardisation)
        new = conv_at_stride_one(conv, padding="keep")
        new.same_pad = False
        return new
    with torch.device("meta"):
        new = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            1,
            0,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
        )
    new.weight, new.bias = copy.deepcopy(conv.weight), copy.deepcopy(conv.bias)
    return new.train(conv.training)


def conv_at_stride_one(conv: nn.Conv2d, *, padding: str = "same") -> nn.Conv2d:
    """A copy of ``conv`` (same weights) at stride 1, padded by the ``padding`` policy."""
    if padding not in STRIDE_ONE_PADDING:
        raise OptionError(f"padding must be one of {STRIDE_ONE_PADDING}, got {padding!r}")
    new = copy.deepcopy(conv)
    new.stride = (1, 1)
    # timm's Conv2dSame pads dynamically, which keeps the size by itself
    if padding == "same" and type(conv).__name__ != "Conv2dSame":
        new.padding = same_padding(conv.kernel_size, conv.dilation)
        if isinstance(new.padding, tuple):
            new._reversed_padding_repeated_twice = [
                p for p in reversed(new.padding) for _ in range(2)
            ]
        else:  # torch's split of an even kernel's padding, the larger half after
            new._reversed_padding_repeated_twice = _same_pads(new.kernel_size, new.dilation)
            return explicit_same(new)
    return new


def _same_pads(kernel_size, dilation) -> list[int]:
    """``(left, right, top, bottom)`` of padding='same' at stride 1, as torch splits it."""
    pads = []
    for k, d in zip(reversed(pair(kernel_size)), reversed(pair(dilation)), strict=True):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return pads


def at_stride_one(module: nn.Module, *, padding: str = "same") -> nn.Module | None:
    """A copy of a conv, of a conv-like module (timm's MixedConv2d) whose strided convs run at
    stride 1 (see :func:`conv_at_stride_one`), or what a layer's own ``at_stride_one(padding)``
    gives (reverso's BlurPool2d and NJetConv2d; your layers can define it too); None if it holds
    no strided conv."""
    if callable(getattr(module, "at_stride_one", None)):
        return module.at_stride_one(padding)
    if isinstance(module, nn.Conv2d):
        return conv_at_stride_one(module, padding=padding)
    strided = [
        name for name, m in module.named_modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1
    ]
    if not strided:
        return None
    new = copy.deepcopy(module)
    for name in strided:
        parent, _, leaf = name.rpartition(".")
        owner = new.get_submodule(parent) if parent else new
        setattr(owner, leaf, conv_at_stride_one(getattr(owner, leaf), padding=padding))
    return new


def conv_with_kernel(conv: nn.Conv2d, kernel_size: int) -> nn.Conv2d:
    """A fresh conv like ``conv`` with another kernel size and 'same' padding (for an even
    kernel on a strided conv, which torch cannot pad 'same', (k - 1) // 2 on each side)."""
    k, d = (kernel_size, kernel_size), pair(conv.dilation)
    padding = same_padding(k, d)
    if padding == "same" and max(pair(conv.stride)) > 1:
        padding = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d, strict=True))
    return placed_like(
        rebuild_conv(conv, conv.in_channels, conv.out_channels, kernel_size=k, padding=padding),
        conv,
    )
