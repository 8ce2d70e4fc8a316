"""Gaussian derivatives: the basis of N-Jet convolutions and structured receptive fields.

1D: ``G^m(x; s) = (-1 / (s sqrt 2))^m H_m(x / (s sqrt 2)) G(x; s)`` with physicists' Hermite
polynomials ``H_0 = 1, H_1 = 2t, H_m = 2t H_{m-1} - 2(m-1) H_{m-2}``. The sampled Gaussian is
normalised to sum 1 on its grid before the Hermite factor is applied (the reference code), or
left analytic (``normalize=False``, for the heat-equation property). Scale normalisation
multiplies ``G^m`` by ``s^m``.

2D: ``G^{i,j}(x, y) = G^i(x) G^j(y)`` for ``i + j <= N``: ``i`` counts derivatives along x (image
columns, increasing to the right), ``j`` along y (image rows, increasing downwards); a kernel is
indexed ``[y, x]``. Basis order: by total order, then decreasing ``i``:
(0,0), (1,0), (0,1), (2,0), (1,1), (0,2), (3,0), ...

Everything is differentiable in sigma and free of host synchronisation: sizes that depend on
sigma are realised by masking a grid allocated for the largest allowed sigma.
"""

from __future__ import annotations

import functools
import math

import torch

from reverso.errors import OptionError
from reverso.names import NJET_SIZE_RULES


def basis_indices(order: int) -> list[tuple[int, int]]:
    """(i, j) derivative orders of the 2D basis, i + j <= order: (N+1)(N+2)/2 of them."""
    return [(i, n - i) for n in range(order + 1) for i in range(n, -1, -1)]


@functools.cache
def _pair_index(order: int, device: torch.device) -> torch.Tensor:
    """The flat [j, i] positions of :func:`basis_indices`, made once per device (no copy per call)."""
    return torch.tensor([j * (order + 1) + i for i, j in basis_indices(order)], device=device)


def basis_size(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def radius_for(sigma: float, extent: float = 2.0, size_rule: str = "paper") -> int:
    """Half-width of the kernel: ceil(k sigma) (paper: size 2 ceil(k sigma) + 1) or
    ceil(k sigma + 0.5) (reference code: size 2 ceil(k sigma + 0.5) + 1)."""
    if size_rule not in NJET_SIZE_RULES:
        raise OptionError(f"size_rule must be one of {NJET_SIZE_RULES}, got {size_rule!r}")
    return math.ceil(extent * sigma + (0.5 if size_rule == "reference" else 0.0) - 1e-9)


def radius_tensor(sigma: torch.Tensor, extent: float, size_rule: str) -> torch.Tensor:
    """The same half-width, as a tensor (no host synchronisation)."""
    offset = 0.5 if size_rule == "reference" else 0.0
    return torch.ceil(extent * sigma + offset - 1e-6)


def hermite(order: int, t: torch.Tensor) -> list[torch.Tensor]:
    """Physicists' Hermite polynomials H_0..H_order at t."""
    h = [torch.ones_like(t)]
    if order >= 1:
        h.append(2 * t)
    for m in range(2, order + 1):
        h.append(2 * t * h[m - 1] - 2 * (m - 1) * h[m - 2])
    return h


def gaussian_derivatives_1d(
    sigma: torch.Tensor | float,
    order: int,
    x: torch.Tensor,
    *,
    radius: torch.Tensor | None = None,
    normalize: bool = True,
    scale_normalize: bool = False,
) -> torch.Tensor:
    """``(order + 1, len(x))``: G^0..G^order sampled at ``x``.

    ``radius`` masks taps with |x| > radius (the kernel's support for this sigma) before the
    Gaussian is normalised, so a grid allocated once for the largest sigma serves every sigma.
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    if radius is not None:
        g = g * (x.abs() <= radius).to(x.dtype)
    g = g / g.sum() if normalize else g / (sigma * math.sqrt(2 * math.pi))
    t = x / (sigma * math.sqrt(2))
    rows = []
    for m, h in enumerate(hermite(order, t)):
        factor = (-1 / math.sqrt(2)) ** m if scale_normalize else (-1 / (sigma * math.sqrt(2))) ** m
        rows.append(factor * h * g)
    return torch.stack(rows)


def gaussian_basis_2d(
    sigma: torch.Tensor | float,
    order: int,
    x: torch.Tensor,
    *,
    radius: torch.Tensor | None = None,
    normalize: bool = True,
    scale_normalize: bool = True,
) -> torch.Tensor:
    """``(F, len(x), len(x))``: the scale-normalised 2D basis G^{i,j}, F = (N+1)(N+2)/2."""
    g = gaussian_derivatives_1d(
        sigma, order, x, radius=radius, normalize=normalize, scale_normalize=scale_normalize
    )
    outer = g[:, None, :, None] * g[None, :, None, :]  # [j, i, y, x]: one product for every pair
    return outer.flatten(0, 1).index_select(0, _pair_index(order, x.device))


def grid(radius: int, dtype=torch.float32, device=None) -> torch.Tensor:
    return torch.arange(-radius, radius + 1, dtype=dtype, device=device)
