"""Memory layouts: what a layer hands on is dense in the layout it was given.

A crop (``y[..., :h, :w]``) or a strided slice (``x[..., ::2, ::2]``) is a view whose strides
skip elements; a model that goes on with ``x.view(n, -1)`` (a flatten head written by hand)
cannot read it. Layers that end on such a view return it dense, in their input's layout
(channels-last stays channels-last).
"""

from __future__ import annotations

import torch


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D tensor stored channels-last (and not also NCHW-dense,
    as maps with one channel or one pixel are), ``torch.contiguous_format`` otherwise."""
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def contiguous_like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` dense in ``x``'s layout (no copy when it already is)."""
    return y.contiguous(memory_format=memory_format_of(x))


def to_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` dense in ``memory_format``, with its gradient handed back in ``x``'s own layout.

    ``x.contiguous(memory_format=...)`` passes the gradient through unchanged: a layer that works
    on channels-last copies of NCHW maps would hand channels-last gradients to the layers before
    it, whose backward kernels then run on mixed layouts (several times slower on the CPU)."""
    return _ToLayout.apply(x, memory_format)


class _ToLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        ctx.source, ctx.target = memory_format_of(x), memory_format
        return x.contiguous(memory_format=memory_format)

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor, _):  # forward-mode AD
        return tangent.contiguous(memory_format=ctx.target)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.contiguous(memory_format=ctx.source), None
