"""A fixed Gaussian blur (stride 1): the image pyramid's blur without the subsampling."""

from __future__ import annotations

import math

import torch
from torch import nn

from reverso.errors import OptionError

from .filters import FixedBuffers, gaussian_taps
from .pyramid import blur_subsample


class GaussianBlur2d(FixedBuffers, nn.Module):
    """Separable Gaussian blur with half-width ceil(3 sigma), reflect padding, taps summing to 1.

    For receptive fields it counts as a kernel of width 6 sigma (top-down paper, section 3.2).
    """

    def __init__(self, sigma: float):
        super().__init__()
        if sigma <= 0:
            raise OptionError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.register_fixed_buffers()

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        return {"taps": gaussian_taps(self.sigma).float()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur_subsample(x, self.taps, 1)

    @property
    def width(self) -> float:
        return 6 * self.sigma

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g} (width {math.ceil(6 * self.sigma)})"
