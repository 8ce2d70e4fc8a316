"""Space-to-depth (the i-RevNet paper's psi) and its inverse: downsampling without losing a value.

``SpaceToDepth(b)`` turns (B, C, H, W) into (B, C b^2, H/b, W/b) by moving every b x b block of
pixels into channels, in the channel order of the i-RevNet code and TensorFlow's
``space_to_depth`` (NCHW), which timm's TResNet stem shares::

    out[n, (hi * b + wi) * C + c, h, w] = x[n, c, h * b + hi, w * b + wi]

It is a permutation of the values, so :meth:`SpaceToDepth.inverse` (``DepthToSpace``) undoes it
exactly. Its ``stride`` is the block size, which is how the compiler sees it as a downsampling;
at stride 1 (:meth:`SpaceToDepth.at_stride_one`, what a top-down net runs where the bottom-up
net downsampled) every pixel gets its b x b neighbourhood stacked into channels, in that order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import InputSizeError, OptionError


def _check_block(block_size: int) -> int:
    if not isinstance(block_size, int) or block_size < 1:
        raise OptionError(f"block_size must be a positive int, got {block_size!r}")
    return block_size


class SpaceToDepth(nn.Module):
    """(B, C, H, W) -> (B, C b^2, H/b, W/b); H and W must be multiples of b."""

    def __init__(self, block_size: int = 2):
        super().__init__()
        self.block_size = self.stride = _check_block(block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        b = self.block_size
        if h % b or w % b:
            raise InputSizeError(
                f"SpaceToDepth({b}) needs a height and width divisible by {b}, got {h}x{w}"
            )
        x = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return x.reshape(n, b * b * c, h // b, w // b)

    def inverse(self) -> DepthToSpace:
        return DepthToSpace(self.block_size)

    def at_stride_one(self, padding: str = "same") -> NeighbourhoodToDepth:
        return NeighbourhoodToDepth(self.block_size)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}"


class DepthToSpace(nn.Module):
    """(B, C b^2, H, W) -> (B, C, H b, W b): the exact inverse of :class:`SpaceToDepth`."""

    def __init__(self, block_size: int = 2):
        super().__init__()
        self.block_size = _check_block(block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, cb, h, w = x.shape
        b = self.block_size
        if cb % (b * b):
            raise InputSizeError(f"DepthToSpace({b}) needs channels divisible by {b * b}, got {cb}")
        c = cb // (b * b)
        x = x.reshape(n, b, b, c, h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(n, c, h * b, w * b)

    def inverse(self) -> SpaceToDepth:
        return SpaceToDepth(self.block_size)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}"


class NeighbourhoodToDepth(nn.Module):
    """Space-to-depth at stride 1: (B, C, H, W) -> (B, C b^2, H, W), each pixel's b x b
    neighbourhood (zero-padded [floor((b-1)/2), ceil((b-1)/2)]) stacked into channels:
    ``out[..., p::b, p::b] == SpaceToDepth(b)(x)`` with p = floor((b-1)/2).

    ``order="tf"`` is :class:`SpaceToDepth`'s channel order (block position outer, channel
    inner); ``order="torch"`` is ``F.pixel_unshuffle``'s (channel outer), so that
    ``out[..., p::b, p::b] == F.pixel_unshuffle(x, b)``."""

    def __init__(self, block_size: int = 2, order: str = "tf"):
        super().__init__()
        if order not in ("tf", "torch"):
            raise OptionError(f"order must be 'tf' or 'torch', got {order!r}")
        self.block_size = _check_block(block_size)
        self.order = order
        self.stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        b = self.block_size
        lo = (b - 1) // 2
        patches = F.unfold(F.pad(x, (lo, b - 1 - lo, lo, b - 1 - lo)), b)  # (n, c*b*b, h*w)
        if self.order == "torch":
            return patches.reshape(n, c * b * b, h, w)
        return patches.reshape(n, c, b * b, h, w).transpose(1, 2).reshape(n, b * b * c, h, w)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, order={self.order!r}"
