"""A fixed Gaussian blur (stride 1), the building block of image pyramids."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .filters import gaussian_taps


class GaussianBlur2d(nn.Module):
    """Separable Gaussian blur with half-width ceil(3 sigma), reflect padding, taps summing to 1.

    For receptive fields it counts as a kernel of width 6 sigma (top-down paper, section 3.2).
    """

    def __init__(self, sigma: float):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.register_buffer("taps", gaussian_taps(self.sigma).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, r = x.shape[1], (self.taps.numel() - 1) // 2
        mode = "reflect" if r < x.shape[-1] and r < x.shape[-2] else "replicate"
        x = F.pad(x, (r, r, r, r), mode=mode)
        taps = self.taps.to(x.dtype)
        x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    @property
    def width(self) -> float:
        return 6 * self.sigma

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g} (width {math.ceil(6 * self.sigma)})"
