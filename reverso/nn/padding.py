"""Padding of N-Jet kernels: per-side paddings, timm's dynamic 'same' padding, and the kernel taps
that never meet the input, cropped away exactly; :class:`SamePad2d`, timm's 'same' padding of a
strided window as a layer of its own; and :class:`SameConv2d`, a stride-1 conv padded 'same'
for even kernels too, without torch's warning.

On a small map a large kernel reads mostly padding: with stride s and left padding p, tap t of
an axis meets input pixel ``o s + t - p`` for the outputs o = 0..n_out - 1, so only the taps
``p - (n_out - 1) s <= t <= p + n - 1`` ever touch one of the n input pixels. The others multiply
zeros. Cropping them, and the padding with them, leaves every output as it was and the output
size too (a learned N-Jet scale whose support outgrows a deep layer's 4x4 map pays for the map,
not for the support).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError

from .config import Configurable, conv2d_config


def output_size(size: int, kernel: int, stride: int, low: int, high: int) -> int:
    """The outputs of a window of ``kernel`` taps along an axis of ``size`` pixels, padded ``low``
    before and ``high`` after (as ``F.conv2d`` counts them)."""
    return (size + low + high - kernel) // stride + 1


def reached_taps(size: int, kernel: int, stride: int, low: int, high: int) -> tuple[int, int]:
    """``(first, last)`` tap of one axis that meets an input of ``size`` pixels, padded ``low``
    before and ``high`` after."""
    outputs = output_size(size, kernel, stride, low, high)
    return max(0, low - (outputs - 1) * stride), min(kernel - 1, low + size - 1)


def crop_unreached_taps(
    weight: torch.Tensor, pads: tuple[int, int, int, int], input_size, stride: int
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """``weight (..., k_y, k_x)`` and its ``(left, right, top, bottom)`` padding with the taps no
    output reads from the input removed; the same outputs, the same output size. The new padding
    may be negative (an input border no tap reaches), as ``F.pad`` takes it."""
    (height, width), (left, right, top, bottom) = input_size, pads
    x0, x1 = reached_taps(width, weight.shape[-1], stride, left, right)
    y0, y1 = reached_taps(height, weight.shape[-2], stride, top, bottom)
    if (x0, y0) == (0, 0) and (x1, y1) == (weight.shape[-1] - 1, weight.shape[-2] - 1):
        return weight, pads
    cropped = (
        left - x0,
        right - (weight.shape[-1] - 1 - x1),
        top - y0,
        bottom - (weight.shape[-2] - 1 - y1),
    )
    return weight[..., y0 : y1 + 1, x0 : x1 + 1], cropped


def even_padding(x: torch.Tensor, pads) -> tuple[torch.Tensor, int]:
    """The input and the conv's padding: one number when the four sides agree, else ``x`` padded
    (or cropped, for negative sides) by ``F.pad`` and 0."""
    if pads[0] == pads[1] == pads[2] == pads[3] >= 0:
        return x, pads[0]
    return F.pad(x, pads), 0


def pad4(padding) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) like F.pad, from an int or a 4-tuple."""
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) != 4:
        raise OptionError(f"padding must be an int or (left, right, top, bottom), got {padding!r}")
    return tuple(int(p) for p in padding)


def same_padding(input_size, extent: int, stride: int, size: int) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` for a ``size``-wide kernel centred where a conv of
    ``extent`` with timm's dynamic 'same' padding (``Conv2dSame``: ``ceil(n / stride)`` outputs,
    the odd pixel of padding after) centres its kernel, for this input size."""
    pads = []
    for n in (input_size[1], input_size[0]):  # x, then y
        total = max((-(-n // stride) - 1) * stride + extent - n, 0)
        left = total // 2 + (size - 1) // 2 - extent // 2
        pads += [left, total + size - extent - left]
    return tuple(pads)


def strided_same_pads(input_size, kernel, stride, dilation=1) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` for a window (``kernel``, ``stride``, ``dilation``: ints or
    (y, x) pairs) run at stride 1 on an input of ``input_size`` (H, W): the left and top padding
    timm's dynamic 'same' padding (``pad_same``) gives the strided window, so that every
    ``stride``-th output sees the strided window's pixels, and the right and bottom padding that
    keeps the size (H, W)."""
    pads = []
    for axis in (1, 0):  # x, then y
        n, k, s, d = (
            int(v if isinstance(v, int) else v[axis])
            for v in (input_size, kernel, stride, dilation)
        )
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [total // 2, (k - 1) * d - total // 2]
    return tuple(pads)


class SamePad2d(nn.Module):
    """The padding a strided window with timm's dynamic 'same' padding (``Conv2dSame``,
    ``MaxPool2dSame``, ``AvgPool2dSame``) applies before the map, as a layer of its own: the
    window then runs at stride 1 with no padding, keeps the map's size (:func:`strided_same_pads`)
    and every ``stride``-th output of it is the strided window's output (the antialias pass blurs
    before subsampling there). ``value``: -inf before a max-pool.

    It pads only: the window it pads for is kept as ``window`` = (kernel_size, stride, dilation),
    not as a ``stride`` attribute, which would declare a downsampling (``reverso.ir.stride_of``).
    Its padding depends on the input's size, so it is traced as a leaf."""

    def __init__(self, kernel_size, stride, dilation=1, value: float = 0.0):
        super().__init__()
        self.window, self.value = (kernel_size, stride, dilation), value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, strided_same_pads(x.shape[-2:], *self.window), value=self.value)

    def extra_repr(self) -> str:
        kernel, stride, dilation = self.window
        return f"kernel_size={kernel}, stride={stride}, dilation={dilation}, value={self.value}"


class SameConv2d(Configurable, nn.Conv2d):
    """``nn.Conv2d(..., padding="same")`` at stride 1 that pads even kernels itself.

    torch pads an even kernel (a 2x2 or 4x4 patchify conv made stride 1) 'same' by padding the
    input inside the conv call and warns on every forward that it does. This conv computes the
    same values (torch's split of the ``dilation (k - 1)`` padded pixels: the larger half after)
    with one explicit ``F.pad`` and a padding-free conv. Its attributes, parameters and
    state_dict keys are ``nn.Conv2d``'s (``padding`` stays ``"same"``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding="same",
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        if self.padding != "same" or self.stride != (1, 1):
            raise OptionError(
                f"SameConv2d pads 'same' at stride 1 only, got padding={self.padding!r}, "
                f"stride={self.stride}"
            )

    def config(self) -> dict:
        """``nn.Conv2d``'s arguments but ``device`` and ``dtype`` (a rebuild places the layer)."""
        return conv2d_config(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # nn.Conv2d already pads these explicitly
            return super().forward(x)
        padded = F.pad(x, self._reversed_padding_repeated_twice)
        return F.conv2d(padded, self.weight, self.bias, 1, 0, self.dilation, self.groups)
