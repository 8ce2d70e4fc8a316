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

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from reverso.errors import OptionError, check_choice
from reverso.names import NJET_ROUTES, NJET_SIZE_RULES, NJET_SUBSAMPLING_RULES

from .config import Configurable
from .filters import FixedBuffers
from .gaussian import (
    basis_indices,
    basis_size,
    radius_for,
)
from .host_copy import LaggedHostCopy
from .njet_math import SETTINGS, NJetMath, NJetState
from .padding import pad4


class NJetConv2d(Configurable, NJetMath, FixedBuffers, nn.Module):
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
        self.initial_sigmas = tuple(sigmas)  # the config's scales on the meta device (no values)
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

    def config(self) -> dict:
        """The constructor's arguments with the current scale(s) as ``sigma`` (the given ones on
        the meta device), and the grid the layer computes on now: ``radius``, ``padding`` for it
        and ``same_extent`` (set by a conversion for timm's dynamic 'same' padding)."""
        scales = self._sigmas().detach()
        sigmas = self.initial_sigmas if scales.is_meta else tuple(scales.tolist())
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "order": self.order,
            "sigma": sigmas[0] if len(sigmas) == 1 else list(sigmas),
            "learn_sigma": self.learn_sigma,
            "extent": self.extent,
            "size_rule": self.size_rule,
            "stride": self.stride,
            "groups": self.groups,
            "bias": self.bias is not None,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "route": self.route,
            "safe_subsampling": self.safe_subsampling,
            "subsampling_rate": self.subsampling_rate,
            "subsampling_rule": self.subsampling_rule,
            "radius": self.radius,
            "padding": list(self.padding),
            "same_extent": self.same_extent,
        }

    @classmethod
    def from_config(cls, config: dict) -> NJetConv2d:
        """A fresh layer (new ``alpha``) on the grid of ``config``: the same sizes."""
        config = dict(config)
        radius, same_extent = config.pop("radius", None), config.pop("same_extent", None)
        layer = cls(**config)
        if radius is not None:  # the grid, and the padding given for it
            layer.radius = int(radius)
            if config.get("padding") is not None:
                layer.padding = config["padding"]
        layer.same_extent = same_extent
        return layer

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        # the (i, j) of each basis function, kept on the module's device (no copy per forward)
        return {"basis_ij": torch.tensor(basis_indices(self.order))}

    # -- the grid: its radius follows sigma ------------------------------------------------------
    #: shrink the grid only once sigma is this far (relatively) inside the smaller support
    HYSTERESIS = 0.1

    @NJetMath.padding.setter
    def padding(self, value) -> None:
        self._pad_offset = tuple(p - self.radius for p in pad4(value))
        self.same_extent = None

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
    def reset_parameters(self) -> None:
        """alpha ~ N(0, 2 / fan_in), fan_in counting the basis energy (He init for the effective kernel)."""
        with torch.no_grad():  # std as a tensor: no host read, and it works on the meta device
            energy = self.basis().pow(2).sum()
            std = (2.0 / (self.in_channels // self.groups * energy).clamp_min(1e-12)).sqrt()
            self.alpha.normal_(0.0, 1.0).mul_(std.to(self.alpha.dtype))
            if self.bias is not None:
                self.bias.zero_()

    # -- forward -------------------------------------------------------------------------------
    def at_stride_one(self, padding: str = "same") -> NJetConv2d:
        """A copy (same weights and scales) at stride 1; ``padding="same"`` keeps the size."""
        new = copy.deepcopy(self)
        new.stride = 1
        if padding == "same":
            new.padding = (self.radius,) * 4
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.learn_sigma and not is_fx_symbolic_tracing():
            self._track_support(tuple(x.shape[-2:]))  # may move the grid before it is used
        return njet_conv(x, self.alpha, self.scale, self.bias, self.basis_ij, self.settings())

    def settings(self) -> dict:
        """The plain settings the computation reads (:data:`reverso.nn.njet_math.SETTINGS`)."""
        return {name: getattr(self, name) for name in SETTINGS}

    def collapse(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the current kernel, cropped to sigma's support."""
        with torch.no_grad():
            r = min(self.support_radius(), self.radius)
            weight = self.effective_weight()[
                ..., self.radius - r : self.radius + r + 1, self.radius - r : self.radius + r + 1
            ]
            padding = tuple(p - (self.radius - r) for p in self.padding)
            conv = nn.Conv2d(
                self.in_channels,
                self.out_channels,
                2 * r + 1,
                self.stride,
                groups=self.groups,
                bias=self.bias is not None,
                padding=0,
                device=self.alpha.device,
                dtype=self.alpha.dtype,
            )
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


@torch.fx.wrap  # one call in a traced graph: the route and the padding depend on the map's size
def njet_conv(x, alpha, scale, bias, basis_ij, settings: dict) -> torch.Tensor:
    """An N-Jet conv of ``x`` from the layer's tensors and :meth:`NJetConv2d.settings`."""
    return NJetState(settings, alpha, scale, bias, basis_ij).compute(x)


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
