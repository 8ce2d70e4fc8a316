"""The frame conv and the angle steering of a dynamic steerable conv, fused in Triton kernels.

PyTorch runs a :class:`~reverso.nn.steerable.DynamicSteerableConv2d` in angle mode as a grouped
conv (the frame responses, M maps per input channel) followed by a dozen elementwise passes over
those maps (the steering). On a GPU each pass reads and writes the M maps again. Here one kernel
computes, per input channel and block of output pixels, the responses in registers, turns them by
the pixel's angle and writes the steered maps once; the backward is two kernels: the steered
maps' gradient turned back (``R^T g``) with the angle's gradient (``g`` against the gates'
derivatives), then the frame conv's transpose. ``A_k z`` comes straight from the input through
the "turned taps" ``A_k phi`` (a table), so each kernel reads each input tap once per k, and no
per-pixel matrix is ever formed (3-D tiles spill registers). The values are those of the
PyTorch route (the same formula, in float32 arithmetic).

The steering matrices enter as tables: ``R(theta) = sum_k c^(n-k) s^k A_k`` per block of order n,
the blocks stacked on the diagonal of ``M x M`` (padded to a power of two), so one kernel serves
every order and frame size. Used for CUDA tensors when Triton is installed (:func:`available`);
``torch.compile`` traces the PyTorch route instead.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math

import torch
from torch.autograd.function import once_differentiable

from .steering import steering_monomials

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK = 64  # pixels per program; with NUM_WARPS, no register spills on sm_90 (ptxas -v)
NUM_WARPS = 4


def available(x: torch.Tensor) -> bool:
    """Whether the fused kernels run for input ``x``: a CUDA tensor of a float type they take,
    Triton installed, and not while ``torch.compile`` traces (it traces the PyTorch route)."""
    return (
        x.is_cuda
        and x.dtype in DTYPES
        and not torch.compiler.is_compiling()
        and _kernels() is not None
    )


@functools.cache
def _kernels():
    """The kernels' module, or None without Triton (the CPU wheels of torch come without it)."""
    try:
        return importlib.import_module("reverso.nn._steer_kernels")
    except ImportError:
        return None


def tables(atoms: torch.Tensor, plan: tuple) -> tuple[torch.Tensor, ...]:
    """The kernels' constants for a frame ``atoms (M, S, S)`` and a steering plan
    (:func:`~reverso.nn.steering.steering_terms`): ``(taps (S S, MP), A (K, MP, MP), turned taps
    (K, S S, MP), row orders (MP,))``, float32 and int32 on the atoms' device. MP is M padded to a
    power of two, and its extra rows have order -1 (gate 0). The turned taps ``A_k phi`` give
    ``A_k z`` straight from the input: ``(A_k z)[a] = sum_tap x[tap] (A_k phi)[a, tap]``."""
    device, m, s = atoms.device, atoms.shape[0], atoms.shape[-1]
    mp = max(2, 1 << (m - 1).bit_length())
    f64 = {"dtype": torch.float64, "device": device}
    taps = torch.zeros(s * s, mp, **f64)
    taps[:, :m] = atoms.detach().to(torch.float64).reshape(m, s * s).T
    a = torch.zeros(plan[-1][0] + 1, mp, mp, **f64)
    rows = torch.full((mp,), -1, dtype=torch.int32, device=device)
    first = plan[0][1]  # responses before the first steered block (order 0) pass unchanged
    a[0, :first, :first] = torch.eye(first, **f64)
    rows[:first] = 0
    for n, offset, _ in plan:
        block = slice(offset, offset + n + 1)
        a[: n + 1, block, block] = steering_monomials(n, **f64)
        rows[block] = n
    turned = torch.einsum("kab,tb->kta", a, taps)
    return taps.float(), a.float(), turned.float().contiguous(), rows


def frame_steer(x, theta, tables: tuple, m: int, stride: int, padding: int) -> torch.Tensor:
    """``(B, C, M, H', W')``: ``rotate_responses(frame_responses(x), theta)`` in fused kernels,
    ``tables`` from :func:`tables`. ``theta`` is ``(B, G, H', W')`` with G = C (a pose per
    channel) or 1 (shared)."""
    # dense arrays, float32 (a model cast to another dtype casts its table buffers too)
    *floats, rows = tables
    tables = (*(t.float().contiguous() for t in floats), rows.contiguous())
    with _on(x.device):  # Triton launches on the current device
        return _FrameSteer.apply(x, theta, tables, m, stride, padding)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _on(device: torch.device):
    """The CUDA device as the current one (Triton launches there); nothing for the interpreter's
    CPU tensors."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _FrameSteer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, tables, m, stride, padding):
        x, theta = x.contiguous(), theta.contiguous()
        b, c, h, w = x.shape
        ho, wo = theta.shape[-2:]
        out = x.new_empty(b, c, m, ho, wo)
        taps, a, turned, rows = tables
        grid = (b * c, _cdiv(ho * wo, BLOCK))
        _kernels()._forward_kernel[grid](
            x,
            theta,
            turned,
            rows,
            out,
            c,
            h,
            w,
            ho,
            wo,
            stride,
            padding,
            PER_CHANNEL=theta.shape[1] == c,
            S=math.isqrt(taps.shape[0]),
            M=m,
            MP=taps.shape[1],
            K=a.shape[0],
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )
        ctx.save_for_backward(x, theta)
        ctx.tables, ctx.m, ctx.stride, ctx.padding = tables, m, stride, padding
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        with _on(grad.device):  # the backward may run on another thread
            return _FrameSteer._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        x, theta = ctx.saved_tensors
        taps, a, turned, rows = ctx.tables
        grad = grad.contiguous()
        b, c, h, w = x.shape
        ho, wo = theta.shape[-2:]
        s, mp = math.isqrt(taps.shape[0]), taps.shape[1]
        grad_z = torch.empty(b, c, ctx.m, ho, wo, device=x.device, dtype=torch.float32)
        grad_theta = torch.empty(b, c, ho, wo, device=x.device, dtype=torch.float32)
        _kernels()._backward_kernel[(b * c, _cdiv(ho * wo, BLOCK))](
            x,
            theta,
            grad,
            a,
            turned,
            rows,
            grad_z,
            grad_theta,
            c,
            h,
            w,
            ho,
            wo,
            ctx.stride,
            ctx.padding,
            PER_CHANNEL=theta.shape[1] == c,
            S=s,
            M=ctx.m,
            MP=mp,
            K=a.shape[0],
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )
        grad_x = torch.empty_like(x)
        _kernels()._transpose_kernel[(b * c, _cdiv(h * w, BLOCK))](
            grad_z,
            taps,
            grad_x,
            h,
            w,
            ho,
            wo,
            ctx.stride,
            ctx.padding,
            S=s,
            M=ctx.m,
            MP=mp,
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )
        grad_theta = grad_theta.sum_to_size(theta.shape).to(theta.dtype)
        return grad_x, grad_theta, None, None, None, None
