"""Rotation steering of Gaussian-derivative blocks (docs/methods/structured.md, section 3).

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
from torch.autograd.function import once_differentiable

from reverso.errors import OptionError


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
        raise OptionError(f"order must be >= 0, got {order}")
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


@functools.cache
def nonzero_terms(order: int) -> tuple[tuple[tuple[int, int, float], ...], ...]:
    """Per row a of ``R_n``: the ``(k, b, A_{n,k}[a, b])`` with a non-zero entry (Python
    constants, so that ``torch.compile`` reads them without a graph break)."""
    matrices = _monomial_matrices(order)
    return tuple(
        tuple(
            (k, b, float(matrices[k, a, b]))
            for k in range(order + 1)
            for b in range(order + 1)
            if matrices[k, a, b] != 0
        )
        for a in range(order + 1)
    )


def steering_terms(min_order: int, order: int) -> tuple:
    """The plan :func:`steer_responses` follows for the blocks ``min_order..order``: per steered
    order ``(n, offset of its block on dim 2, nonzero_terms(n))``. Plain Python constants: a
    module computes it once and ``torch.compile`` reads it without a graph break."""
    start = min_order * (min_order + 1) // 2
    return tuple(
        (n, n * (n + 1) // 2 - start, nonzero_terms(n)) for n in range(max(1, min_order), order + 1)
    )


def steer_responses(z: torch.Tensor, gates: list[torch.Tensor], plan: tuple) -> torch.Tensor:
    """``z~[c, n] = sum_k a_{n,k} A_{n,k} z[c, n]`` per pixel for the steered orders of ``plan``
    (:func:`steering_terms`); the responses outside them (order 0) pass unchanged.

    ``z`` is ``(B, C, M, H, W)``, the blocks of orders ``min_order..order`` stacked on dim 2;
    ``gates[i]`` is ``(B, G, n + 1, H, W)`` for the i-th steered order, G = C or 1 (broadcast over
    the channels). The ``A_{n,k}`` are sparse integer matrices, so every steered response is a short
    sum of gated responses, and the backward is the same sums transposed: one pass over the maps
    per term, none of autograd's per-slice bookkeeping."""
    return _Steer.apply(z, plan, *gates)


def rotate_responses(z: torch.Tensor, theta: torch.Tensor, plan: tuple) -> torch.Tensor:
    """:func:`steer_responses` with the gates of an angle field ``theta`` of shape ``(B, G, H, W)``
    (``a_{n,k} = cos^(n-k) theta sin^k theta``), differentiable in ``z`` and ``theta``.

    The backward uses the group law instead of the gates' chain rule: ``R(theta + e) = R(e)
    R(theta)``, so ``d z~ / d theta = A_{n,1} z~`` (the generator ``dR/dtheta`` at 0 is ``A_{n,1}``)
    and ``grad theta = sum_n <grad z~_n, A_{n,1} z~_n>``: a few passes over the steered maps."""
    return _Rotate.apply(z, theta, plan)


def _gated_sums(out, sources, gates, terms, offset, transpose):
    """``out[offset + a] += sum coeff gates[k] sources[offset + b]`` over the terms of row a with
    ``k >= 1`` (with ``transpose``: the transposed matrices). One fused multiply-add pass per term."""
    for a, row_terms in enumerate(terms):
        for k, b, coeff in row_terms:
            if k == 0:
                continue  # A_{n,0} = I: the identity term started the row (_steered)
            dst, src = (b, a) if transpose else (a, b)
            out[:, :, offset + dst].addcmul_(gates[k], sources[:, :, offset + src], value=coeff)


def _steered(source: torch.Tensor, gates, plan: tuple, transpose: bool = False) -> torch.Tensor:
    """``R source`` (``R^T source`` with ``transpose``) per pixel, the gates per steered order.

    ``R_n(0) = A_{n,0} = I``, so every row of a block starts as ``gates[0] source``: one product
    over the block, written in place (no zero fill, no add)."""
    out = torch.empty_like(source, memory_format=torch.contiguous_format)
    if plan[0][1] > 0:  # the responses before the first steered block (order 0) pass unchanged
        out[:, :, : plan[0][1]].copy_(source[:, :, : plan[0][1]])
    for (n, offset, terms), a in zip(plan, gates, strict=True):
        block = slice(offset, offset + n + 1)
        if torch.compiler.is_compiling():  # dynamo refuses out= on a strided view; fused anyway
            out[:, :, block] = source[:, :, block] * a[0].unsqueeze(2)
        else:
            torch.mul(source[:, :, block], a[0].unsqueeze(2), out=out[:, :, block])
        _gated_sums(out, source, a, terms, offset, transpose)
    return out


class _Steer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, plan, *gates):
        ctx.plan = plan
        ctx.save_for_backward(z, *gates)
        return _steered(z, [a.unbind(2) for a in gates], plan)

    @staticmethod
    @once_differentiable  # the backward is hand-written: no double backward through it
    def backward(ctx, grad):
        z, *gates = ctx.saved_tensors
        grad_z = None
        if ctx.needs_input_grad[0]:
            grad_z = _steered(grad, [a.unbind(2) for a in gates], ctx.plan, transpose=True)
        grad_gates = []
        for i, ((n, offset, terms), a) in enumerate(zip(ctx.plan, gates, strict=True)):
            if not ctx.needs_input_grad[2 + i]:
                grad_gates.append(None)
                continue
            # d out[a] / d gate_k = coeff z[b], so grad gate_k = sum over the terms coeff grad[a] z[b]
            per_channel = grad.new_zeros(z.shape[0], z.shape[1], n + 1, *z.shape[-2:])
            for row, row_terms in enumerate(terms):
                for k, b, coeff in row_terms:
                    per_channel[:, :, k].addcmul_(
                        grad[:, :, offset + row], z[:, :, offset + b], value=coeff
                    )
            grad_gates.append(per_channel.sum_to_size(a.shape))  # G = 1: summed over channels
        return grad_z, None, *grad_gates


def angle_gates(theta: torch.Tensor, plan: tuple) -> list[list[torch.Tensor]]:
    """Per steered order of ``plan`` the maps ``cos^(n-k) theta sin^k theta``, k = 0..n, from
    the powers of cos and sin, each computed once."""
    cos, sin = [None, torch.cos(theta)], [None, torch.sin(theta)]
    for _ in range(2, plan[-1][0] + 1):
        cos.append(cos[-1] * cos[1])
        sin.append(sin[-1] * sin[1])
    return [
        [cos[n] if k == 0 else sin[k] if k == n else cos[n - k] * sin[k] for k in range(n + 1)]
        for n, _, _ in plan
    ]


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, plan):
        ctx.plan = plan
        gates = angle_gates(theta, plan)
        out = _steered(z, gates, plan)
        ctx.save_for_backward(theta, out, *[g for a in gates for g in a])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        theta, out, *flat = ctx.saved_tensors
        plan = ctx.plan
        grad_z = grad_theta = None
        if ctx.needs_input_grad[0]:
            gates, start = [], 0
            for n, _, _ in plan:  # the forward's gates, n + 1 per order
                gates.append(flat[start : start + n + 1])
                start += n + 1
            grad_z = _steered(grad, gates, plan, transpose=True)
        if ctx.needs_input_grad[1]:  # sum_n <grad_n, A_{n,1} out_n> per channel, then per group
            per_channel = grad.new_zeros(out.shape[:2] + out.shape[-2:])
            for _, offset, terms in plan:
                for row, row_terms in enumerate(terms):
                    for k, b, coeff in row_terms:
                        if k == 1:
                            per_channel.addcmul_(
                                grad[:, :, offset + row], out[:, :, offset + b], value=coeff
                            )
            grad_theta = per_channel.sum_to_size(theta.shape)
        return grad_z, grad_theta, None
