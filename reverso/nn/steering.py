"""Rotation steering of Gaussian-derivative blocks (spec dsb.md section 3).

Axis convention, fixed here and everywhere in reverso: x is the column index (to the right), y the
row index (down), and theta turns counter-clockwise *as displayed* (so a quarter turn takes the x
axis to -y, as ``torch.rot90(k=1, dims=(-2, -1))`` turns an image). The order-n block is
``B_n = (G_{x^n}, G_{x^(n-1) y}, ..., G_{y^n})``; the filter ``G_{x^a y^b}`` turned by theta is
``(c d_x - s d_y)^a (s d_x + c d_y)^b G`` with ``c = cos theta, s = sin theta``, and expanding it
in ``B_n`` gives the rows of ``R_n(theta)``:  ``turned B_n = R_n(theta) B_n``.

Every entry of ``R_n`` is a homogeneous polynomial of degree n in (c, s), so
``R_n(theta) = sum_k c^(n-k) s^k A_{n,k}`` with fixed integer matrices ``A_{n,k}``
(:func:`steering_monomials`): steering per pixel is a few fixed linear maps gated by the trig
monomials (:func:`trig_monomials`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.cache
def _monomial_matrices(order: int) -> np.ndarray:
    """``A[k, b, b']``: the coefficient of ``c^(n-k) s^k d_x^(n-b') d_y^b'`` in row b of R_n."""
    # a polynomial in (d_y, s) as an integer array p[d_y power, s power]; d_x and c fill up to n
    turn_x = np.array([[1, 0], [0, -1]])  # c d_x - s d_y
    turn_y = np.array([[0, 1], [1, 0]])  # s d_x + c d_y
    matrices = np.zeros((order + 1, order + 1, order + 1), dtype=np.int64)
    for b in range(order + 1):  # the row: G_{x^(n-b) y^b}
        poly = np.ones((1, 1), dtype=np.int64)
        for factor in [turn_x] * (order - b) + [turn_y] * b:
            poly = _multiply(poly, factor)
        matrices[:, b, :] = poly.T  # [s power k, d_y power b']
    return matrices


def _multiply(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.zeros((p.shape[0] + q.shape[0] - 1, p.shape[1] + q.shape[1] - 1), dtype=np.int64)
    for (i, j), value in np.ndenumerate(q):
        out[i : i + p.shape[0], j : j + p.shape[1]] += value * p
    return out


def steering_monomials(order: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(order + 1, order + 1, order + 1)``: ``A[k]`` with ``R_n(theta) = sum_k c^(n-k) s^k A[k]``."""
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    return torch.as_tensor(_monomial_matrices(order), dtype=dtype, device=device)


def trig_monomials(order: int, theta: torch.Tensor) -> torch.Tensor:
    """``(..., order + 1)``: ``cos(theta)^(n-k) sin(theta)^k`` for k = 0..n (the gates of order n)."""
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([c ** (order - k) * s**k for k in range(order + 1)], dim=-1)


def steering_matrix(order: int, theta) -> torch.Tensor:
    """``R_n(theta)``, the ``(order + 1) x (order + 1)`` matrix that turns the order-n
    Gaussian-derivative block by ``theta`` (counter-clockwise as displayed; see the module).

    ``theta`` is a number or a tensor (a batch of angles gives ``(..., n + 1, n + 1)``);
    differentiable in theta. ``R(0) = R(2 pi) = I``, ``R(a) R(b) = R(a + b)``,
    ``R_n(pi) = (-1)^n I``."""
    theta = torch.as_tensor(theta)  # a Python number: the default dtype
    if not theta.is_floating_point():
        theta = theta.to(torch.get_default_dtype())
    gates = trig_monomials(order, theta)  # (..., k)
    matrices = steering_monomials(order, dtype=theta.dtype, device=theta.device)
    return torch.einsum("...k,kab->...ab", gates, matrices)
