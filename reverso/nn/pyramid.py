"""The image pyramid that feeds a top-down network: one blurred, subsampled copy per level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError
from reverso.names import PYRAMIDS

from .filters import FixedBuffers, binomial_taps, gaussian_taps


def gaussian_resize_weights(
    n_in: int, n_out: int, *, dtype=torch.float32, device=None
) -> torch.Tensor:
    """``(n_out, n_in)``: TensorFlow's ``resize(method="gaussian", antialias=True)`` along one axis
    when shrinking (docs/methods/topdown.md, section 4). With f = n_in / n_out, output pixel i
    is centred at (i + 0.5) f; input pixel j (centre j + 0.5) weighs exp(-d^2 / (2 * 0.5^2))
    with d = (j + 0.5 - centre) / f, for |d| < 1.5; each row is divided by its own sum (no
    padding: fewer taps at the borders)."""
    f = n_in / n_out
    centres = (torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * f
    d = (
        (torch.arange(n_in, dtype=torch.float64, device=device) + 0.5)[None, :] - centres[:, None]
    ) / f
    w = torch.exp(-(d**2) / (2 * 0.5**2)) * (d.abs() < 1.5)
    return (w / w.sum(1, keepdim=True)).to(dtype)


def gaussian_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` shrunk to ``size`` as ``tf.image.resize(x, size, "gaussian", antialias=True)``."""
    h, w = x.shape[-2:]
    rows = gaussian_resize_weights(h, size[0], dtype=x.dtype, device=x.device)
    cols = gaussian_resize_weights(w, size[1], dtype=x.dtype, device=x.device)
    return rows @ x @ cols.T


def pyramid_taps(kind: str, factor: int) -> torch.Tensor:
    """1D low-pass taps used before subsampling by ``factor`` (direct pyramids)."""
    if kind == "gaussian_reflect":
        return gaussian_taps(factor / 2)  # sigma = f/2 input pixels, half-width ceil(3 sigma)
    if kind == "binomial":
        return binomial_taps(factor * factor + 1)  # same variance f^2/4 as the Gaussian
    raise OptionError(f"unknown pyramid kind {kind!r}")


@torch.fx.wrap  # one call in a traced graph: its choice of padding reads the map's size
def blur_subsample(x: torch.Tensor, taps: torch.Tensor, factor: int) -> torch.Tensor:
    """Separable blur with reflect padding (replicate on maps too small to reflect), then x[::f, ::f].

    Blur and subsampling are fused into strided depthwise convs, so only kept pixels are computed.
    """
    c = x.shape[1]
    r = (taps.numel() - 1) // 2
    mode = "reflect" if r < x.shape[-1] and r < x.shape[-2] else "replicate"
    x = F.pad(x, (r, r, r, r), mode=mode)
    taps = taps.to(dtype=x.dtype)
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), stride=(1, factor), groups=c)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), stride=(factor, 1), groups=c)


class ImagePyramid(FixedBuffers, nn.Module):
    """Blurred and subsampled copies of the input, one per level (level l = factor 2**l), of
    size ceil(H / f) x ceil(W / f).

    ``kind="gaussian"`` (the top-down paper's code, the default): every level made directly from
    the input by TensorFlow's Gaussian resize (:func:`gaussian_resize`: taps between input
    pixels on half-pixel centres, sigma = f/2, radius 1.5 f, renormalised at the borders; the
    scale is input size / output size, so odd sizes work). ``"gaussian_reflect"``: an odd
    Gaussian of sigma f/2 (half-width ceil(3 sigma)) with reflect padding, then x[::f, ::f] (the
    pyramid reverso used before; it samples 0.5 px (x2) and 1.5 px (x4) off TF's positions).
    ``"binomial"``: the same with binomial taps of equal variance. ``"cascade"``: each level from
    the previous one with sigma = 2/3 per x2 step. Filters are fixed buffers (TF's weights depend
    on the input size and are made in forward). Level 0 is the input itself.
    """

    def __init__(self, levels: Sequence[int], kind: str = "gaussian"):
        super().__init__()
        if kind not in PYRAMIDS:
            raise OptionError(f"pyramid must be one of {PYRAMIDS}, got {kind!r}")
        levels = tuple(int(v) for v in levels)
        if not levels or min(levels) < 0 or len(set(levels)) != len(levels):
            raise OptionError(f"levels must be distinct non-negative integers, got {levels}")
        self.levels = levels
        self.kind = kind
        self.register_fixed_buffers()

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        if self.kind == "cascade":
            return {"taps_step": gaussian_taps(2 / 3).float()}
        if self.kind == "gaussian":
            return {}  # TF's resize weights depend on the input size: made in forward
        return {
            f"taps_{level}": pyramid_taps(self.kind, 2**level).float()
            for level in self.levels
            if level > 0
        }

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.kind == "cascade":
            steps, current = [x], x
            for _ in range(max(self.levels)):
                current = blur_subsample(current, self.taps_step, 2)
                steps.append(current)
            return tuple(steps[level] for level in self.levels)
        if self.kind == "gaussian":
            h, w = x.shape[-2:]
            return tuple(
                x if level == 0 else gaussian_resize(x, (-(-h // 2**level), -(-w // 2**level)))
                for level in self.levels
            )
        return tuple(
            x if level == 0 else blur_subsample(x, getattr(self, f"taps_{level}"), 2**level)
            for level in self.levels
        )

    def extra_repr(self) -> str:
        return f"levels={self.levels}, kind={self.kind!r}"
