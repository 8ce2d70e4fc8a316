"""Merging an upsampled coarse path with a lateral branch read from the image pyramid."""

from __future__ import annotations

import torch
from torch import nn

from reverso.errors import OptionError
from reverso.names import MERGES

from .upsample import Upsample


class Merge(nn.Module):
    """Re-inject the image's detail at a finer level (top-down paper, section 3.1).

    ``s = lateral(image)``; the coarse path ``x`` is optionally projected by a 1x1 conv block *at
    the low resolution* and upsampled to the lateral's exact size, then

    * ``"add"``: ``x + s``
    * ``"concat"``: ``fuse(cat(x, s))``
    * ``"add_concat"`` (the paper's choice): ``fuse(cat(x + s, s))``

    where ``fuse`` is a 3x3 conv block (2C -> C) that enlarges the receptive field. Inside an
    up-unit, ``x`` already has the lateral's width, so there is no projection or upsampling; if
    unpadded ("valid") convs trimmed it, the lateral is cropped to its centre (as U-Net crops its
    skip connections).
    """

    def __init__(
        self,
        variant: str,
        lateral: nn.Module,
        *,
        project: nn.Module | None = None,
        upsample: Upsample | None = None,
        fuse: nn.Module | None = None,
    ):
        super().__init__()
        if variant not in MERGES:
            raise OptionError(f"merge must be one of {MERGES}, got {variant!r}")
        if (fuse is None) != (variant == "add"):
            raise OptionError(
                f"merge {variant!r} {'needs' if variant != 'add' else 'takes no'} a fuse block"
            )
        self.variant = variant
        self.lateral = lateral
        self.project = project
        self.upsample = upsample
        self.fuse = fuse

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        s = self.lateral(image)
        if self.project is not None:
            x = self.project(x)
        if self.upsample is not None:
            x = self.upsample(x, s)
        s = _crop_to(s, x.shape[-2:])
        if self.variant == "add":
            return x + s
        if self.variant == "concat":
            return self.fuse(torch.cat([x, s], dim=1))
        return self.fuse(torch.cat([x + s, s], dim=1))

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


@torch.fx.wrap  # a call in the traced graph: its test on the sizes is not traced
def _crop_to(s: torch.Tensor, size) -> torch.Tensor:
    """The centre of ``s`` at ``size`` when ``s`` is larger in both dims; ``s`` otherwise."""
    h, w = s.shape[-2:]
    if (h, w) == tuple(size) or h < size[0] or w < size[1]:
        return s
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return s[..., top : top + size[0], left : left + size[1]]
