"""What an N-Jet conv computes, from its tensors and its settings.

:class:`NJetMath` holds the computation of :class:`~reverso.nn.NJetConv2d` (the basis, the kernel,
the two compute routes and the cost model that picks one, safe subsampling) as methods that read
only the layer's tensors (``alpha``, ``scale``, ``bias``, ``basis_ij``) and the plain settings of
:data:`SETTINGS`. The layer inherits it, and so does :class:`NJetState`, the same computation
rebuilt from those tensors and settings: :func:`reverso.nn.njet.njet_conv` runs it as one call
that a torch.fx graph can hold (the routes and paddings depend on the map's size).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from .gaussian import (
    basis_size,
    gaussian_basis_2d,
    gaussian_derivatives_1d,
    grid,
    radius_tensor,
)
from .layout import memory_format_of
from .padding import crop_unreached_taps, even_padding, reached_taps, same_padding

#: the plain settings the computation reads (besides the tensors)
SETTINGS = (
    "in_channels", "out_channels", "order", "radius", "extent", "size_rule", "stride", "groups",
    "_pad_offset", "same_extent", "route", "sigma_min", "sigma_max", "num_basis",
    "safe_subsampling", "subsampling_rate", "subsampling_rule", "initial_sigma",
)  # fmt: skip
#: the tensors it reads
TENSORS = ("alpha", "scale", "bias", "basis_ij")


class NJetMath:
    """The computation of an N-Jet conv (see the module)."""

    @property
    def kernel_size(self) -> tuple[int, int]:
        """The size of the grid the layer computes on now (the kernel is masked to sigma's
        support inside it)."""
        return (2 * self.radius + 1,) * 2

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) for the current grid."""
        return tuple(self.radius + o for o in self._pad_offset)

    def padding_for(self, input_size) -> tuple[int, int, int, int]:
        """The padding for an input of ``input_size`` (H, W): :attr:`padding`, or, for a layer
        that stands for a conv of extent ``same_extent`` with timm's dynamic 'same' padding,
        that conv's padding for this size, widened to the grid."""
        if self.same_extent is None:
            return self.padding
        return same_padding(input_size, self.same_extent, self.stride, self.kernel_size[0])

    @property
    def sigma(self) -> torch.Tensor:
        """The current scale(s): a 0-d tensor, or one per scale for a multi-scale basis."""
        s = self._sigmas()
        return s[0] if s.numel() == 1 else s

    def _sigmas(self) -> torch.Tensor:
        return torch.exp2(self.scale).clamp(self.sigma_min, self.sigma_max)  # max None: unbounded

    # -- the basis and the kernel --------------------------------------------------------------
    def basis(self) -> torch.Tensor:
        """``(num_basis, s, s)``: the scale-normalised 2D basis at the current sigma(s)."""
        x = grid(self.radius, dtype=self.alpha.dtype, device=self.alpha.device)
        return torch.cat(
            [
                gaussian_basis_2d(
                    s, self.order, x, radius=radius_tensor(s, self.extent, self.size_rule)
                )
                for s in self._sigmas().to(x.dtype)
            ]
        )

    def effective_weight(self) -> torch.Tensor:
        """The current kernel, ``(C_out, C_in / groups, s, s)``."""
        return torch.einsum("ocf,fyx->ocyx", self.alpha, self.basis())

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for ``x`` (after safe subsampling, on the current grid)."""
        if self.safe_subsampling:
            x = self._subsample(x)
        size = x.shape[-2:]
        pads = self.padding_for(size)
        if self.active_route(x.device, size) == "dense":
            # on a small map, only the taps that meet it (reverso.nn.padding)
            weight, pads = crop_unreached_taps(self.effective_weight(), pads, size, self.stride)
            x, pad = even_padding(x, pads)
            return F.conv2d(x, weight, self.bias, self.stride, pad, 1, self.groups)
        return self._separable(*even_padding(x, pads))

    def _separable(self, x: torch.Tensor, pad: int) -> torch.Tensor:
        """x-derivatives per input channel, a 1x1 conv mixing (c, i) into (o, j), y-derivatives."""
        n1, c_in, c_out = self.order + 1, self.in_channels, self.out_channels
        sigma = self._sigmas()[0].to(x.dtype)
        g = gaussian_derivatives_1d(
            sigma,
            self.order,
            grid(self.radius, dtype=x.dtype, device=x.device),
            radius=radius_tensor(sigma, self.extent, self.size_rule),
            scale_normalize=True,
        )
        s = g.shape[-1]
        layout = memory_format_of(x)
        # the grouped 1D passes and the 1x1 mixing run much faster on channels-last tensors
        x = x.contiguous(memory_format=torch.channels_last)
        wx = g.view(1, n1, 1, 1, s).expand(c_in, n1, 1, 1, s).reshape(c_in * n1, 1, 1, s)
        h = F.conv2d(x, wx, None, (1, self.stride), (0, pad), 1, c_in)  # (B, c_in * n1, H, W')
        h = F.conv2d(h, self._mixing_weight())  # (B, c_out * n1, H, W'): channel (o, j)
        wy = g.view(1, n1, s, 1).expand(c_out, n1, s, 1)
        out = F.conv2d(h, wy, self.bias, (self.stride, 1), (pad, 0), 1, c_out)
        return out.contiguous(memory_format=layout)

    def _mixing_weight(self) -> torch.Tensor:
        """``(C_out * (N+1), C_in * (N+1), 1, 1)``: W[(o, j), (c, i)] = alpha[o, c, (i, j)] for i + j <= N."""
        n1 = self.order + 1
        dense = self.alpha.new_zeros(self.out_channels, n1, self.in_channels, n1)
        index = self.basis_ij
        dense[:, index[:, 1], :, index[:, 0]] = self.alpha.permute(2, 0, 1)
        return dense.reshape(self.out_channels * n1, self.in_channels * n1, 1, 1)

    def _subsample(self, x: torch.Tensor) -> torch.Tensor:
        """Safe subsampling: resize by (1/2)^(sigma / r) (``subsampling_rule="paper"``) or by
        1 / max(1, 2^sigma / r) (``"code"``, the authors' code); nearest, and the size is not
        differentiable."""
        scales = self._sigmas()
        # reads sigma on the host; a layer on the meta device (built without weights) has none to
        # read: its initial scale, as a layer built for real has before it learns
        sigma = float(scales.max()) if scales.device.type != "meta" else self.initial_sigma
        size = self.subsampled_size(tuple(x.shape[-2:]), sigma)
        return F.interpolate(x, size=size, mode="nearest") if size != tuple(x.shape[-2:]) else x

    def subsampled_size(self, size: tuple[int, int], sigma: float) -> tuple[int, int]:
        """The size safe subsampling resizes a map of ``size`` to at scale ``sigma``."""
        if self.subsampling_rule == "code":
            factor = 1 / max(1.0, 2**sigma / self.subsampling_rate)
        else:
            factor = 0.5 ** (sigma / self.subsampling_rate)
        return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))

    # -- cost model ------------------------------------------------------------------------------
    #: per device type: how many times fewer multiply-adds per second the separable route's small
    #: grouped convs reach than the dense conv, from the forced-route rows of benchmarks/njet.py
    #: (CPU: 2 cores; CUDA: an H100 at batch 128, where cuDNN's dense conv won up to 17x17)
    SEPARABLE_EFFICIENCY: ClassVar[dict[str, float]] = {"cpu": 4.0, "cuda": 40.0}

    def active_route(self, device: torch.device | None = None, input_size=None) -> str:
        """The route of the next forward: ``route`` unless "auto", else the cheaper one for the
        current grid on ``device``: multiply-adds per output pixel, the separable route's weighted
        by its efficiency. With ``input_size`` (H, W) the dense route counts only the taps that
        meet the map (:mod:`reverso.nn.padding`)."""
        if self.route != "auto":
            return self.route
        if self.groups != 1 or self.num_basis != basis_size(self.order):
            return "dense"
        device = device or self.alpha.device
        n1, s = self.order + 1, self.kernel_size[0]
        taps = s * s
        if input_size is not None:
            left, right, top, bottom = self.padding_for(input_size)
            (x0, x1), (y0, y1) = (
                reached_taps(input_size[1], s, self.stride, left, right),
                reached_taps(input_size[0], s, self.stride, top, bottom),
            )
            taps = (x1 - x0 + 1) * (y1 - y0 + 1)
        dense = self.out_channels * self.in_channels * taps
        separable = (
            self.in_channels + self.out_channels
        ) * n1 * s + self.out_channels * self.in_channels * n1 * n1
        efficiency = self.SEPARABLE_EFFICIENCY.get(torch.device(device).type, 4.0)
        return "separable" if efficiency * separable < dense else "dense"


class NJetState(NJetMath):
    """An N-Jet conv's computation rebuilt from its tensors and :data:`SETTINGS`."""

    def __init__(self, settings: dict, alpha, scale, bias, basis_ij):
        for name in SETTINGS:
            setattr(self, name, settings[name])
        self.alpha, self.scale, self.bias, self.basis_ij = alpha, scale, bias, basis_ij
