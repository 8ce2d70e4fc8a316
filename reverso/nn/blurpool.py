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

    On the CPU, when a gradient is recorded, the blur's backward is computed on the unpadded map
    (a transposed conv plus the padding's few border rows and columns) instead of through the
    padded copy, which is then no longer kept for the backward either (docs/benchmarks.md has the
    train-step figures). The forward is the same computation in every mode.
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
        if not self.max_kernel:
            return self._blur(x)
        if self.filter_size == 1:  # no blur: the stride-1 max-pool subsampled is the strided one
            return F.max_pool2d(
                x, self.max_kernel, self.stride, self.max_padding, self.max_dilation
            )
        y = to_layout(x, torch.channels_last) if x.device.type == "cpu" else x
        y = F.max_pool2d(y, self.max_kernel, 1, self.max_padding, self.max_dilation)
        return contiguous_like(self._blur(y), x)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter_size == 1:
            return contiguous_like(x[..., :: self.stride, :: self.stride], x)
        mode = self.pad_mode
        if mode == "reflect" and (self.padding[1] >= x.shape[-1] or self.padding[3] >= x.shape[-2]):
            mode = "replicate"
        mode = "constant" if mode == "zeros" else mode
        filt = self.filt.to(x.dtype)
        recorded = x.requires_grad and torch.is_grad_enabled()
        if x.device.type == "cpu" and recorded and not torch.compiler.is_compiling():
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


class _BlurWithBorderBackward(torch.autograd.Function):
    """:func:`_padded_blur` with its backward computed on the unpadded map.

    Along one axis the blur is a matrix ``R`` (outputs x inputs); with zero padding it would be
    ``Z``, and ``E = R - Z`` is non-zero only where an output reads a padded row. In 2-D the blur
    is ``R_h X R_w^T = Z_h X Z_w^T + Z_h X E_w^T + E_h X R_w^T``, so the input's gradient is the
    transposed conv of the output's gradient (the first term's adjoint, on the unpadded map) plus
    the two thin border terms. Autograd's backward instead goes through the padded copy: a
    transposed conv on the larger map, then folding the padding back, a full extra pass."""

    @staticmethod
    def forward(ctx, x, filt, padding, stride, mode):
        ctx.save_for_backward(filt)
        ctx.geometry = (x.shape, memory_format_of(x), padding, stride, mode)
        return _padded_blur(x, filt, padding, stride, mode)

    @staticmethod
    def backward(ctx, grad):
        (filt,) = ctx.saved_tensors
        shape, layout, (left, right, top, bottom), s, mode = ctx.geometry
        (h, w), f = shape[-2:], filt.shape[-1]
        grad = grad.contiguous(memory_format=layout)
        rows = _axis(h, f, top, bottom, s, mode, grad.dtype, grad.device)
        cols = _axis(w, f, left, right, s, mode, grad.dtype, grad.device)
        # the transposed conv's size is (out - 1) * s - 2 * pad + f + output_padding; where that
        # exceeds the map with no output padding, the rows past it adjoin the right padding: crop
        missing = (
            max(h - ((grad.shape[-2] - 1) * s - 2 * top + f), 0),
            max(w - ((grad.shape[-1] - 1) * s - 2 * left + f), 0),
        )
        gx = F.conv_transpose2d(
            grad,
            filt.contiguous(memory_format=layout),
            stride=s,
            padding=(top, left),
            output_padding=missing,
            groups=shape[1],
        )
        gx = gx[..., :h, :w].contiguous(memory_format=layout)
        for i0, i1, j0, j1, e in rows.blocks:  # E_h^T G R_w
            part = _mm_last(grad[:, :, i0:i1, :], cols.full)
            gx[:, :, j0:j1, :] += _mm_last(part.transpose(-1, -2), e).transpose(-1, -2)
        for i0, i1, j0, j1, e in cols.blocks:  # Z_h^T G E_w
            part = _mm_last(grad[..., i0:i1].transpose(-1, -2), rows.zero).transpose(-1, -2)
            gx[..., j0:j1] += _mm_last(part, e)
        return gx, None, None, None, None


class _Axis:
    """One axis of a padded blur as matrices: ``full`` (with the padding mode) and ``zero`` (with
    zero padding), outputs x inputs, and ``blocks``: (i0, i1, j0, j1, E[i0:i1, j0:j1]) covering
    the non-zeros of ``E = full - zero`` (the outputs that read padded rows)."""

    def __init__(self, full: torch.Tensor, zero: torch.Tensor):
        self.full, self.zero = full, zero
        e = full - zero
        touched = e.abs().sum(1).nonzero().flatten().tolist()
        self.blocks = []
        for run in _runs(touched):
            i0, i1 = run[0], run[-1] + 1
            cols = e[i0:i1].abs().sum(0).nonzero().flatten()
            j0, j1 = int(cols.min()), int(cols.max()) + 1
            self.blocks.append((i0, i1, j0, j1, e[i0:i1, j0:j1].contiguous()))


@functools.lru_cache(maxsize=64)
def _axis(n: int, f: int, lo: int, hi: int, stride: int, mode: str, dtype, device) -> _Axis:
    taps = binomial_taps(f).view(1, 1, -1)
    eye = torch.eye(n, dtype=torch.float64)[:, None, :]
    mats = [
        F.conv1d(F.pad(eye, (lo, hi), mode=m), taps, stride=stride)[:, 0].T
        for m in (mode, "constant")
    ]
    return _Axis(*(m.to(dtype=dtype, device=device) for m in mats))


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
