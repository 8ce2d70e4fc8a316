"""N-Jet convolutions: kernels learned as Gaussian-derivative expansions with a learned scale.

"Resolution learning in deep convolutional networks using scale-space theory" (Pintea, Tomen,
Goes, Loog, van Gemert, IEEE TIP 2021). With several fixed scales the same layer is a
structured receptive field layer (Jacobsen et al., RFNN).
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError, check_choice
from reverso.names import NJET_ROUTES, NJET_SIZE_RULES, NJET_SUBSAMPLING_RULES

from .filters import FixedBuffers
from .gaussian import (
    basis_indices,
    basis_size,
    gaussian_basis_2d,
    gaussian_derivatives_1d,
    grid,
    radius_for,
    radius_tensor,
)
from .host_copy import LaggedHostCopy
from .layout import memory_format_of
from .padding import crop_unreached_taps, even_padding, pad4, reached_taps, same_padding


class NJetConv2d(FixedBuffers, nn.Module):
    """A conv whose kernel is ``W[o, c] = sum_{i+j<=N} alpha[o, c, (i,j)] s^(i+j) G^{i,j}(s)``.

    The kernel's *shape* is learned through ``alpha`` (one vector per output/input channel pair)
    and its *size* through one continuous scale ``sigma`` per layer (``sigma = 2^scale``, at least
    ``sigma_min``; no upper bound unless ``sigma_max`` is given). The spatial size follows sigma
    (``size_rule``: ``"paper"``, 2 ceil(k sigma) + 1, or ``"reference"``, 2 ceil(k sigma + 0.5) + 1,
    with ``k = extent``).

    The support follows sigma without host synchronisation: the layer computes on a grid of
    ``radius`` (a host integer) and masks the kernel to sigma's exact support inside it. In
    training the host learns sigma one step late (on CUDA through a non-blocking copy into pinned
    memory, read once it has landed), grows the grid as soon as the support needs it and shrinks
    it only once sigma is 10% inside a smaller support (hysteresis). ``eval()``, loading a
    state_dict and :meth:`follow_support` fit the grid to the exact support. ``padding`` is given
    for the initial grid and moves with it, so output sizes never change. A warning says once
    when the support grows past the layer's input. ``sigma`` may be a sequence of scales (a
    multi-scale basis, as in structured receptive fields).

    Two compute routes give the same output: ``"dense"`` builds the kernel and runs one conv;
    ``"separable"`` filters each input channel with the 1D derivatives along x, mixes them with a
    1x1 conv holding alpha, and filters along y (cost linear, not quadratic, in the kernel size).
    ``route="auto"`` picks the cheaper one from a cost model.

    Optional "safe subsampling" (learned resolution): the input is resized by (1/2)^(sigma/r)
    (the paper) or by 1 / max(1, 2^sigma / r) (``subsampling_rule="code"``, the authors' code)
    before the conv; the size depends on sigma's value, so this option reads sigma on the host.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        order: int = 3,
        sigma: float | Sequence[float] = 1.0,
        learn_sigma: bool = True,
        extent: float = 2,
        size_rule: str = "paper",
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        sigma_min: float = 0.3,
        sigma_max: float | None = None,
        padding: int | tuple[int, int, int, int] | None = None,
        route: str = "auto",
        safe_subsampling: bool = False,
        subsampling_rate: float = 4.0,
        subsampling_rule: str = "paper",
    ):
        super().__init__()
        _run_support_tracking_eagerly()
        sigmas = [float(s) for s in (sigma if isinstance(sigma, Sequence) else [sigma])]
        if order < 0 or order > 8:
            raise OptionError(f"order must be between 0 and 8, got {order}")
        if not sigmas or min(sigmas) <= 0:
            raise OptionError(f"sigma must be positive, got {sigma!r}")
        check_choice("size_rule", size_rule, NJET_SIZE_RULES)
        check_choice("subsampling_rule", subsampling_rule, NJET_SUBSAMPLING_RULES)
        check_choice("route", route, NJET_ROUTES)
        if in_channels % groups or out_channels % groups:
            raise OptionError(
                f"channels {in_channels}->{out_channels} are not divisible by groups={groups}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.order, self.extent, self.size_rule = order, float(extent), size_rule
        self.stride, self.groups = int(stride), int(groups)
        self.learn_sigma = learn_sigma
        self.sigma_min = float(min(sigma_min, *sigmas))
        self.sigma_max = None if sigma_max is None else float(max(sigma_max, *sigmas))
        self.radius = radius_for(max(sigmas), self.extent, size_rule)  # of the grid, follows sigma
        self.initial_sigma = min(max(max(sigmas), self.sigma_min), self.sigma_max or math.inf)
        # the padding relative to the grid's radius: it moves with the grid, sizes stay
        self._pad_offset = (
            (0,) * 4 if padding is None else tuple(p - self.radius for p in pad4(padding))
        )
        self.same_extent: int | None = None  # set: timm's dynamic 'same' padding (padding_for)
        self._host_sigma = LaggedHostCopy()
        self._warned = False
        self.safe_subsampling, self.subsampling_rate = safe_subsampling, float(subsampling_rate)
        self.subsampling_rule = subsampling_rule
        self.num_basis = basis_size(order) * len(sigmas)

        scale = torch.log2(torch.tensor(sigmas))
        if learn_sigma:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_fixed_buffers()
        self.alpha = nn.Parameter(torch.empty(out_channels, in_channels // groups, self.num_basis))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.route = route
        if route == "separable" and (groups != 1 or len(sigmas) != 1):
            raise OptionError(
                "the separable route needs groups=1 and a single sigma; use route='dense'"
            )
        self.register_load_state_dict_post_hook(_refit_support)
        self.reset_parameters()

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        # the (i, j) of each basis function, kept on the module's device (no copy per forward)
        return {"basis_ij": torch.tensor(basis_indices(self.order))}

    # -- the grid: its radius follows sigma ------------------------------------------------------
    #: shrink the grid only once sigma is this far (relatively) inside the smaller support
    HYSTERESIS = 0.1

    @property
    def kernel_size(self) -> tuple[int, int]:
        """The size of the grid the layer computes on now (the kernel is masked to sigma's
        support inside it)."""
        return (2 * self.radius + 1,) * 2

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) for the current grid."""
        return tuple(self.radius + o for o in self._pad_offset)

    @padding.setter
    def padding(self, value) -> None:
        self._pad_offset = tuple(p - self.radius for p in pad4(value))
        self.same_extent = None

    def padding_for(self, input_size) -> tuple[int, int, int, int]:
        """The padding for an input of ``input_size`` (H, W): :attr:`padding`, or, for a layer
        that stands for a conv of extent ``same_extent`` with timm's dynamic 'same' padding,
        that conv's padding for this size, widened to the grid."""
        if self.same_extent is None:
            return self.padding
        return same_padding(input_size, self.same_extent, self.stride, self.kernel_size[0])

    def support_radius(self) -> int:
        """Half-width of the current kernel's support: the largest over the scales (reads sigma on
        the host). A non-finite sigma (a diverged step, memory from ``to_empty``) keeps the grid."""
        sigma = float(self._sigmas().detach().max())
        return (
            radius_for(sigma, self.extent, self.size_rule) if math.isfinite(sigma) else self.radius
        )

    def follow_support(self) -> NJetConv2d:
        """Fit the grid to sigma's exact support now (reads sigma on the host: a sync on CUDA)."""
        if self.scale.device.type != "meta":
            self.radius = self.support_radius()
        self._host_sigma.forget()
        return self

    def train(self, mode: bool = True) -> NJetConv2d:
        super().train(mode)
        if not mode and self.learn_sigma:
            self.follow_support()  # the last optimiser step may have moved sigma
        return self

    def __setstate__(self, state) -> None:  # unpickled or deep-copied layers skip __init__
        super().__setstate__(state)
        _run_support_tracking_eagerly()

    def _track_support(self, size: tuple[int, int]) -> None:
        """Training: grow the grid when sigma's support outgrows it, shrink it with hysteresis."""
        sigma = self._host_sigma.read(self._sigmas().max())  # CPU: now; CUDA: one step late
        if sigma is None or not math.isfinite(sigma):  # NaN or inf: the outputs will say so
            return
        need = radius_for(sigma, self.extent, self.size_rule)
        relaxed = radius_for(sigma * (1 + self.HYSTERESIS), self.extent, self.size_rule)
        if need > self.radius or relaxed < self.radius:
            self.radius = max(need, min(relaxed, self.radius))
        if 2 * need + 1 > max(size) and not self._warned:
            self._warned = True
            warnings.warn(
                f"NJetConv2d({self.in_channels}, {self.out_channels}): sigma {sigma:.3g} has a "
                f"{2 * need + 1}-pixel support, larger than its {size[0]}x{size[1]} input; pass "
                "sigma_max= to bound it",
                stacklevel=3,
            )

    # -- parameters ---------------------------------------------------------------------------
    @property
    def sigma(self) -> torch.Tensor:
        """The current scale(s): a 0-d tensor, or one per scale for a multi-scale basis."""
        s = self._sigmas()
        return s[0] if s.numel() == 1 else s

    def reset_parameters(self) -> None:
        """alpha ~ N(0, 2 / fan_in), fan_in counting the basis energy (He init for the effective kernel)."""
        with torch.no_grad():  # std as a tensor: no host read, and it works on the meta device
            energy = self.basis().pow(2).sum()
            std = (2.0 / (self.in_channels // self.groups * energy).clamp_min(1e-12)).sqrt()
            self.alpha.normal_(0.0, 1.0).mul_(std.to(self.alpha.dtype))
            if self.bias is not None:
                self.bias.zero_()

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

    # -- forward -------------------------------------------------------------------------------
    def at_stride_one(self, padding: str = "same") -> NJetConv2d:
        """A copy (same weights and scales) at stride 1; ``padding="same"`` keeps the size."""
        new = copy.deepcopy(self)
        new.stride = 1
        if padding == "same":
            new.padding = (self.radius,) * 4
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.safe_subsampling:
            x = self._subsample(x)
        if self.training and self.learn_sigma:
            self._track_support(tuple(x.shape[-2:]))
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
            sigma, self.order, grid(self.radius, dtype=x.dtype, device=x.device),
            radius=radius_tensor(sigma, self.extent, self.size_rule), scale_normalize=True,
        )  # fmt: skip
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
        if self.subsampling_rule == "code":
            factor = 1 / max(1.0, 2**sigma / self.subsampling_rate)
        else:
            factor = 0.5 ** (sigma / self.subsampling_rate)
        size = (max(1, round(x.shape[-2] * factor)), max(1, round(x.shape[-1] * factor)))
        return F.interpolate(x, size=size, mode="nearest") if size != tuple(x.shape[-2:]) else x

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
            (x0, x1), (y0, y1) = (reached_taps(input_size[1], s, self.stride, left, right),
                                  reached_taps(input_size[0], s, self.stride, top, bottom))  # fmt: skip
            taps = (x1 - x0 + 1) * (y1 - y0 + 1)
        dense = self.out_channels * self.in_channels * taps
        separable = (
            self.in_channels + self.out_channels
        ) * n1 * s + self.out_channels * self.in_channels * n1 * n1
        efficiency = self.SEPARABLE_EFFICIENCY.get(torch.device(device).type, 4.0)
        return "separable" if efficiency * separable < dense else "dense"

    def collapse(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the current kernel, cropped to sigma's support."""
        with torch.no_grad():
            r = min(self.support_radius(), self.radius)
            weight = self.effective_weight()[
                ..., self.radius - r : self.radius + r + 1, self.radius - r : self.radius + r + 1
            ]
            padding = tuple(p - (self.radius - r) for p in self.padding)
            conv = nn.Conv2d(
                self.in_channels, self.out_channels, 2 * r + 1, self.stride, groups=self.groups,
                bias=self.bias is not None, padding=0, device=self.alpha.device, dtype=self.alpha.dtype,
            )  # fmt: skip
            conv.weight.copy_(weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        if padding[0] == padding[1] == padding[2] == padding[3]:
            conv.padding = (padding[0], padding[0])
            return conv
        return nn.Sequential(nn.ZeroPad2d(padding), conv)

    def extra_repr(self) -> str:
        sigmas = ", ".join(f"{s:.3g}" for s in self._sigmas().tolist())
        return (
            f"{self.in_channels}, {self.out_channels}, order={self.order}, sigma=({sigmas}), "
            f"learn_sigma={self.learn_sigma}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}, route={self.route!r}"
            + (f", sigma_max={self.sigma_max:g}" if self.sigma_max is not None else "")
        )


def structured_receptive_field(
    in_channels: int,
    out_channels: int,
    *,
    order: int = 2,
    sigmas: Sequence[float] = (1.0, 2.0),
    **kwargs,
) -> NJetConv2d:
    """A structured receptive field layer (RFNN): a fixed multi-scale Gaussian-derivative basis
    combined by a learned 1x1 conv (``alpha``); ``.collapse()`` gives the plain conv after training."""
    return NJetConv2d(
        in_channels, out_channels, order=order, sigma=tuple(sigmas), learn_sigma=False, **kwargs
    )


def _refit_support(module: NJetConv2d, _incompatible_keys) -> None:
    module.follow_support()  # the loaded sigma may need another grid


@functools.cache
def _run_support_tracking_eagerly() -> None:
    """Make ``NJetConv2d._track_support`` a graph break that runs eagerly under ``torch.compile``
    (it reads sigma on the host). Done when the first layer is built or unpickled, not at import:
    ``torch.compiler.disable`` imports torch._dynamo, about 2 s that ``import reverso`` need not pay."""
    NJetConv2d._track_support = torch.compiler.disable(NJetConv2d._track_support)
