"""Upsampling to the exact size of a reference feature map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError
from reverso.names import UPSAMPLE_MODES

from .filters import FixedBuffers, triangle_taps
from .layout import contiguous_like


class Upsample(FixedBuffers, nn.Module):
    """Upsample ``x`` to the spatial size of ``like`` (``size=``, so odd and non-square inputs work).

    ``"nearest"`` is the top-down paper's default (more robust than bilinear); ``"blur"`` inserts
    zeros and filters with the [1, 2, 1] binomial (a triangle of size 2f-1 for factor f), the
    alias-free choice.
    """

    def __init__(self, mode: str = "nearest", factor: int = 2):
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise OptionError(f"upsample must be one of {UPSAMPLE_MODES}, got {mode!r}")
        self.mode = mode
        self.factor = int(factor)
        self.register_fixed_buffers()

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        return {"taps": triangle_taps(self.factor).float()} if self.mode == "blur" else {}

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        size = like.shape[-2:]
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        if self.mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return blur_upsample(x, self.taps, self.factor, like)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, factor={self.factor}"


@torch.fx.wrap  # one call in a traced graph: the crop and padding read the sizes
def blur_upsample(x: torch.Tensor, taps: torch.Tensor, factor: int, like: torch.Tensor):
    """``x`` upsampled by ``factor`` (zeros inserted, then the separable ``taps``) to the size of
    ``like``."""
    f, c = factor, x.shape[1]
    taps = taps.to(dtype=x.dtype)
    kernel = (taps[:, None] * taps[None, :]).expand(c, 1, -1, -1)
    # one replicated row/column past the end so the last pixel interpolates to itself
    padded = F.pad(x, (0, 1, 0, 1), mode="replicate")
    y = F.conv_transpose2d(padded, kernel, stride=f, padding=f - 1, groups=c)
    h, w = int(like.shape[-2]), int(like.shape[-1])
    if y.shape[-2] < h or y.shape[-1] < w:
        y = F.pad(y, (0, max(0, w - y.shape[-1]), 0, max(0, h - y.shape[-2])), mode="replicate")
    return contiguous_like(y[..., :h, :w], x)
