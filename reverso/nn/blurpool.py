"""Anti-aliased downsampling: blur with a fixed binomial filter, then subsample.

"Making Convolutional Networks Shift-Invariant Again" (R. Zhang, ICML 2019).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError
from reverso.names import PAD_MODES

from .config import Configurable
from .filters import FixedBuffers, binomial_taps
from .layout import contiguous_like, memory_format_of, to_layout

#: antialiased-cnns' ``pad_type`` names -> ``pad_mode``
OFFICIAL_PAD_TYPES = {
    "refl": "reflect", "reflect": "reflect", "repl": "replicate", "replicate": "replicate",
    "zero": "zeros",
}  # fmt: skip


class BlurPool2d(Configurable, FixedBuffers, nn.Module):
    """Blur each channel with the outer product of the binomial taps of ``filter_size`` (1: [1],
    2: [1, 1], 3: [1, 2, 1], 4: [1, 3, 3, 1], ... 7), then subsample by ``stride``.

    Padding is [floor((f-1)/2), ceil((f-1)/2)] per axis, ``reflect`` by default (``replicate`` and
    ``zeros`` as options; ``pad_type=`` takes the official antialiased-cnns names, ``"zero"``,
    ``"refl"``, ``"repl"``); reflect falls back to replicate on maps too small to reflect. For an
    input of size H the output has ceil(H / stride) rows. ``filter_size=1`` is plain subsampling.
    The filter is a fixed buffer, never trained or re-initialised, and not part of the state_dict.

    ``max_kernel`` > 0 puts a stride-1 max-pool (``max_kernel``, ``max_padding``,
    ``max_dilation``) before the blur: an anti-aliased max-pool (the paper's MaxBlurPool) as one
    layer. On the CPU that pair runs on channels-last tensors, where the stride-1 max-pool and its
    backward are several times faster, and hands on its output (and its input's gradient) in its
    input's layout.

    On the CPU, when autograd records a gradient, the blur's backward is computed on the unpadded
    map (a transposed conv plus the padding's few border rows and columns) instead of through the
    padded copy, which is then no longer kept for the backward either (docs/benchmarks.md has the
    train-step figures). On GPUs (not yet timed there), without gradients, and while
    torch.compile, torch.jit.trace or a torch.func transform traces the call, autograd
    differentiates the padded blur as before. The forward is the same computation in every case.
    """

    def __init__(
        self,
        channels: int,
        filter_size: int = 4,
        stride: int = 2,
        pad_mode: str = "reflect",
        *,
        pad_type: str | None = None,
        max_kernel: int = 0,
        max_padding: int = 0,
        max_dilation: int = 1,
    ):
        super().__init__()
        if pad_type is not None:  # the official antialiased-cnns spelling: refl, repl, zero, ...
            if pad_type not in OFFICIAL_PAD_TYPES:
                raise OptionError(
                    f"pad_type must be one of {tuple(OFFICIAL_PAD_TYPES)}, got {pad_type!r}"
                )
            pad_mode = OFFICIAL_PAD_TYPES[pad_type]
        if not 1 <= filter_size <= 7:
            raise OptionError(f"filter_size must be between 1 and 7, got {filter_size}")
        if pad_mode not in PAD_MODES:
            raise OptionError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if stride < 1:
            raise OptionError(f"stride must be at least 1, got {stride}")
        if max_kernel < 0 or not 0 <= 2 * max_padding <= max_kernel or max_dilation < 1:
            raise OptionError(
                f"max_kernel={max_kernel}, max_padding={max_padding}, max_dilation={max_dilation}: "
                "the max-pool needs a kernel >= 0, padding at most half the kernel, dilation >= 1"
            )
        self.max_kernel, self.max_padding, self.max_dilation = (
            max_kernel,
            max_padding,
            max_dilation,
        )
        self.channels, self.filter_size, self.stride, self.pad_mode = (
            channels,
            filter_size,
            stride,
            pad_mode,
        )
        left = (filter_size - 1) // 2
        self.padding = (left, filter_size - 1 - left) * 2  # (left, right, top, bottom)
        self.register_fixed_buffers()

    def config(self) -> dict:
        """``channels``, ``filter_size``, ``stride``, ``pad_mode`` (``pad_type`` named one) and
        the max-pool's ``max_kernel``, ``max_padding`` and ``max_dilation``."""
        return {
            "channels": self.channels,
            "filter_size": self.filter_size,
            "stride": self.stride,
            "pad_mode": self.pad_mode,
            "max_kernel": self.max_kernel,
            "max_padding": self.max_padding,
            "max_dilation": self.max_dilation,
        }

    def at_stride_one(self, padding: str = "same") -> BlurPool2d:
        """The blur alone (its padding keeps the size at stride 1): what is left of this
        downsampling when a rewrite runs it at stride 1."""
        return self.from_config({**self.config(), "stride": 1})

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        taps = binomial_taps(self.filter_size).float()
        return {"filt": (taps[:, None] * taps[None, :]).expand(self.channels, 1, -1, -1).clone()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # one unbatched map (C, H, W), as torch's conv and pooling layers take
            return self.forward(x[None])[0]
        own_backward = _custom_backward(x)  # decided once: the max-pool keeps x's requirements
        if not self.max_kernel:
            return self._blur(x, own_backward)
        if self.filter_size == 1:  # no blur: the stride-1 max-pool subsampled is the strided one
            return F.max_pool2d(
                x, self.max_kernel, self.stride, self.max_padding, self.max_dilation
            )
        y = x
        if x.device.type == "cpu" and not _transforms_active():  # vmap has no channels-last
            cl = torch.channels_last  # with our backward, the gradient goes back in x's layout
            y = to_layout(x, cl) if own_backward else x.contiguous(memory_format=cl)
        y = F.max_pool2d(y, self.max_kernel, 1, self.max_padding, self.max_dilation)
        return contiguous_like(self._blur(y, own_backward), x)

    def _blur(self, x: torch.Tensor, own_backward: bool) -> torch.Tensor:
        if self.filter_size == 1:
            return contiguous_like(x[..., :: self.stride, :: self.stride], x)
        mode = self.pad_mode
        if mode == "reflect" and (self.padding[1] >= x.shape[-1] or self.padding[3] >= x.shape[-2]):
            mode = "replicate"
        mode = "constant" if mode == "zeros" else mode
        filt = self.filt.to(x.dtype)
        if own_backward:
            return _BlurWithBorderBackward.apply(x, filt, self.padding, self.stride, mode)
        return _padded_blur(x, filt, self.padding, self.stride, mode)

    def extra_repr(self) -> str:
        text = f"{self.channels}, filter_size={self.filter_size}, stride={self.stride}, pad_mode={self.pad_mode!r}"
        if self.max_kernel:
            text += f", max_kernel={self.max_kernel}, max_padding={self.max_padding}"
            text += f", max_dilation={self.max_dilation}" if self.max_dilation != 1 else ""
        return text


def _padded_blur(x: torch.Tensor, filt: torch.Tensor, padding, stride: int, mode: str):
    """The blur as the paper's code computes it: pad, then a depthwise conv at ``stride``."""
    return F.conv2d(F.pad(x, padding, mode=mode), filt, stride=stride, groups=x.shape[1])


#: the longest axis whose blur matrices the backward builds (dense, outputs x inputs: their
#: products cost that much); longer maps take autograd's backward of the padded blur
MAX_BORDER_AXIS = 512


def _custom_backward(x: torch.Tensor) -> bool:
    """Whether BlurPool2d runs its own backward for ``x``: on the CPU (where it is measured
    faster), when plain autograd records (a gradient is wanted), on maps of at most
    ``MAX_BORDER_AXIS`` per side, and not while torch.compile, torch.jit.trace or a torch.func
    transform (grad, vmap, jacrev) traces the call: those take the padded blur, which every one
    of them handles."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _transforms_active():
        return False
    recorded = x.requires_grad and torch.is_grad_enabled()
    return x.device.type == "cpu" and recorded and max(x.shape[-2:]) <= MAX_BORDER_AXIS


def _transforms_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...) is tracing the call (assumed so
    where torch no longer says)."""
    return getattr(torch._C, "_are_functorch_transforms_active", lambda: True)()


class _BlurWithBorderBackward(torch.autograd.Function):
    """:func:`_padded_blur` with its input's gradient computed on the unpadded map.

    Along one axis the padded blur is a matrix ``R`` (outputs x inputs); with zero padding it
    would be ``Z``, and ``E = R - Z`` is non-zero only in a few border rows (the outputs that
    read the padding). In 2-D the blur is ``R_h X R_w^T = Z_h X Z_w^T + Z_h X E_w^T + E_h X
    R_w^T``, so the input's gradient ``Z_h^T G Z_w + Z_h^T G E_w + E_h^T G R_w`` is a transposed
    conv of the output's gradient ``G`` on the unpadded map plus two thin border terms.
    Autograd's backward instead runs the transposed conv on the padded map and then folds the
    padding back, a full extra pass, and keeps the padded copy alive until the backward."""

    @staticmethod
    def forward(ctx, x, filt, padding, stride, mode):
        ctx.save_for_backward(filt)
        ctx.save_for_forward(filt)
        ctx.geometry = (x.shape, memory_format_of(x), padding, stride, mode)
        return _padded_blur(x, filt, padding, stride, mode)

    @staticmethod
    def jvp(ctx, x_tangent, *_):  # forward-mode AD: the blur is linear
        (filt,) = ctx.saved_tensors
        _, _, padding, stride, mode = ctx.geometry
        return _padded_blur(x_tangent, filt.to(x_tangent.dtype), padding, stride, mode)

    @staticmethod
    def backward(ctx, grad):
        (filt,) = ctx.saved_tensors
        shape, layout, padding, s, mode = ctx.geometry
        grad = grad.contiguous(memory_format=layout)  # dtype: autocast may have lowered it
        return _blur_input_grad(grad, filt.to(grad.dtype), shape, padding, s, mode), *[None] * 4


def _blur_input_grad(grad, filt, shape, padding, s: int, mode: str) -> torch.Tensor:
    """``Z_h^T G Z_w + E_h^T G R_w + Z_h^T G E_w`` (see :class:`_BlurWithBorderBackward`), in
    ``grad``'s layout; ``padding`` is (left, right, top, bottom) as ``F.pad`` takes it."""
    left, right, top, bottom = padding
    h, w = shape[-2:]
    rows = _axis(h, filt.shape[-1], top, bottom, s, mode, grad.dtype, grad.device)
    cols = _axis(w, filt.shape[-1], left, right, s, mode, grad.dtype, grad.device)
    gx = _transposed_conv(grad, filt, (s, s), (top, left), (h, w))  # Z_h^T G Z_w
    for i0, i1, j0, j1, e in rows.blocks:  # E_h^T G R_w
        part = _mm_last(grad[:, :, i0:i1, :], cols.full)
        gx[:, :, j0:j1, :] += _mm_last(part.transpose(-1, -2), e).transpose(-1, -2)
    for i0, i1, j0, j1, e in cols.blocks:  # Z_h^T G E_w
        part = _mm_last(grad[..., i0:i1].transpose(-1, -2), rows.zero).transpose(-1, -2)
        gx[..., j0:j1] += _mm_last(part, e)
    return gx


def _transposed_conv(grad, kernel, stride, padding, size) -> torch.Tensor:
    """The adjoint of the depthwise ``conv2d(x, kernel, stride, padding)`` for an ``x`` of
    spatial ``size``: ``conv_transpose2d``, with ``output_padding`` where its natural size
    ``(out - 1) * stride - 2 * padding + k`` falls short of ``size``, cropped where it exceeds it
    (the outputs then read zero padding past the map's end, which the crop drops)."""
    layout = memory_format_of(grad)
    natural = [
        (out - 1) * st - 2 * pad + k
        for out, st, pad, k in zip(grad.shape[-2:], stride, padding, kernel.shape[-2:], strict=True)
    ]
    out = F.conv_transpose2d(
        grad,
        kernel.contiguous(memory_format=layout),
        stride=stride,
        padding=padding,
        output_padding=tuple(max(n - m, 0) for n, m in zip(size, natural, strict=True)),
        groups=grad.shape[1],
    )
    return out[..., : size[0], : size[1]].contiguous(memory_format=layout)


class _Axis:
    """One axis of a padded blur as matrices, outputs x inputs: ``full`` (with the padding
    mode) and ``zero`` (with zero padding); ``blocks``: (i0, i1, j0, j1, E[i0:i1, j0:j1]) cover
    the non-zeros of ``E = full - zero``, the outputs that read the padding (a few rows)."""

    def __init__(self, full: torch.Tensor, zero: torch.Tensor):
        self.full, self.zero = full, zero
        e = full - zero
        self.blocks = []
        for run in _runs(e.abs().sum(1).nonzero().flatten().tolist()):
            i0, i1 = run[0], run[-1] + 1
            inputs = e[i0:i1].abs().sum(0).nonzero().flatten()
            j0, j1 = int(inputs.min()), int(inputs.max()) + 1
            self.blocks.append((i0, i1, j0, j1, e[i0:i1, j0:j1].contiguous()))


@functools.lru_cache(maxsize=32)  # a model has a few map sizes; a few MB at most per entry
def _axis(n: int, f: int, lo: int, hi: int, stride: int, mode: str, dtype, device) -> _Axis:
    """The blur of ``f`` binomial taps along an axis of ``n`` (``n <= MAX_BORDER_AXIS``), with
    ``lo`` and ``hi`` rows of ``mode`` padding, as an :class:`_Axis`: the blur applied to the
    identity."""
    taps = binomial_taps(f).view(1, 1, -1)
    eye = torch.eye(n, dtype=torch.float64)[:, None, :]
    full, zero = (
        F.conv1d(F.pad(eye, (lo, hi), mode=m), taps, stride=stride)[:, 0].T
        for m in (mode, "constant")
    )
    return _Axis(full.to(dtype=dtype, device=device), zero.to(dtype=dtype, device=device))


def _runs(indices: list[int]) -> list[list[int]]:
    """Consecutive runs of sorted ``indices``: [0, 1, 5] -> [[0, 1], [5]]."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _mm_last(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x @ m`` over ``x``'s last axis as one 2-D matmul (a batched matmul over a strided view
    runs one small product per batch on the CPU)."""
    return (x.reshape(-1, x.shape[-1]) @ m).view(*x.shape[:-1], m.shape[1])


class CeilModePad(nn.Module):
    """Extend a map by ``extra`` rows/columns of -inf at the bottom/right: a ceil_mode max-pool
    equals a floor-mode one on the extended map (when it has no padding and kernel >= stride)."""

    def __init__(self, extra: int):
        super().__init__()
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, self.extra, 0, self.extra), value=float("-inf"))


class ValidAvgPool2d(nn.Module):
    """Stride-1 average pooling with PyTorch's divisor rules: padding counts only with
    ``count_include_pad``, the ``extra`` rows/columns that emulate ceil_mode never count."""

    def __init__(
        self, kernel_size: int, padding: int = 0, extra: int = 0, count_include_pad: bool = True
    ):
        super().__init__()
        self.kernel_size, self.padding, self.extra, self.count_include_pad = (
            kernel_size,
            padding,
            extra,
            count_include_pad,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, e, k = self.padding, self.extra, self.kernel_size
        sums = F.avg_pool2d(F.pad(x, (p, p + e, p, p + e)), k, 1)
        mask = x.new_ones((1, 1, *x.shape[-2:]))
        mask = F.pad(mask, (p, p, p, p), value=1.0 if self.count_include_pad else 0.0)
        counts = F.avg_pool2d(F.pad(mask, (0, e, 0, e)), k, 1)
        return sums / counts

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, padding={self.padding}, extra={self.extra}, count_include_pad={self.count_include_pad}"
