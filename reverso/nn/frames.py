"""Frame convolutions (docs/methods/structured.md, sections 1-2): a k x k kernel written in a
fixed frame.

``W[o, c] = sum_m coeff[o, c, m] phi_m``: the layer learns the frame coefficients, the frame
``phi`` is fixed. A complete frame (rank k*k) spans every kernel, so the function class is the
plain conv's and only the optimisation geometry changes (a gradient step on the coefficients moves
the kernel by ``Phi Phi^T`` times the pixel gradient; weight decay acts on the coefficients).
After training :meth:`FrameConv2d.collapse` gives the plain conv back: no inference cost.

Frames (the thesis names 3 x 3 ones; the rules below hold for any kernel size, inferred):

- ``"pixel"``: the deltas (the plain conv's own parametrisation).
- ``"gauss9"``: ``G^i(x) G^j(y)`` for ``i < k_x, j < k_y`` at ``sigma`` (1 by default, inferred;
  the thesis gives none): on 3 x 3 the nine products of G, G', G'' (the jet ``i + j <= 3`` has
  rank 8 on 3 x 3 and does not qualify). Complete for every size: polynomials of degree < k
  times a positive Gaussian, on k distinct points.
- ``"framelet"``: tensor products of the piecewise-linear B-spline framelet filters
  ``h0 = [1, 2, 1] / 4``, ``h1 = (sqrt 2 / 4) [1, 0, -1]``, ``h2 = [-1, 2, -1] / 4``
  (non-orthogonal, not overcomplete); sides of 1 or 3 only.
- ``"naive"``: the monomials ``x^p y^q`` (``p < k_x, q < k_y``) on the centred grid, no image prior.

Every atom is scaled to unit norm (inferred: the thesis does not say; with the raw scales a
scale-normalised third derivative or a framelet product has a norm of 0.1-0.4, which acts as a
10-100x smaller learning rate and a stronger weight decay on that atom).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError
from reverso.names import FRAMES

from .config import Configurable, conv2d_config
from .filters import FixedBuffers
from .gaussian import gaussian_derivatives_1d

_FRAMELET = (
    (0.25, 0.5, 0.25),
    (math.sqrt(2) / 4, 0.0, -math.sqrt(2) / 4),
    (-0.25, 0.5, -0.25),
)


def frame_atoms(frame: str, kernel_size, *, sigma: float = 1.0) -> torch.Tensor:
    """``(M, k_y, k_x)`` float64 atoms of a named frame for a kernel of ``kernel_size``."""
    ky, kx = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if frame not in FRAMES:
        raise OptionError(f"frame must be one of {FRAMES}, got {frame!r}")
    if frame == "framelet" and not {ky, kx} <= {1, 3}:
        raise OptionError(f"the framelet frame is defined for sides of 1 or 3, not {ky}x{kx}")
    rows, cols = _axis_atoms(frame, ky, sigma), _axis_atoms(frame, kx, sigma)
    rows = rows / rows.norm(dim=1, keepdim=True)  # unit atoms: the frame sets the directions of
    cols = cols / cols.norm(dim=1, keepdim=True)  # the geometry, not one learning rate per atom
    if not (torch.isfinite(rows).all() and torch.isfinite(cols).all()):
        raise OptionError(
            f"sigma={sigma:g} is too small for a Gaussian frame on a {ky}x{kx} kernel: its "
            "derivatives vanish on the grid (use a sigma of at least 0.05; 1 is the thesis's)"
        )
    # atom (j, i) = rows[j] (along y) times cols[i] (along x)
    return (rows[:, None, :, None] * cols[None, :, None, :]).reshape(-1, ky, kx)


def _axis_atoms(frame: str, k: int, sigma: float) -> torch.Tensor:
    """``(k, k)``: the 1D atoms of one axis (a complete 1D frame of k samples)."""
    x = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    if frame == "pixel":
        return torch.eye(k, dtype=torch.float64)
    if frame == "gauss9":
        return gaussian_derivatives_1d(sigma, k - 1, x, scale_normalize=True)
    if frame == "naive":
        return torch.stack([x**p for p in range(k)])
    return torch.tensor(_FRAMELET if k == 3 else ((1.0,),), dtype=torch.float64)


def frame_rank(atoms: torch.Tensor) -> int:
    """The dimension of the kernels the atoms span."""
    return int(torch.linalg.matrix_rank(atoms.reshape(atoms.shape[0], -1).double()))


def project_kernels(
    atoms: torch.Tensor, weight: torch.Tensor, dilation=(1, 1)
) -> tuple[torch.Tensor, float]:
    """Least-squares coefficients ``(N, M)`` for which the atoms ``(M, S_y, S_x)`` reproduce the
    kernels ``weight (..., k_y, k_x)`` (centred on the atoms' grid, ``dilation`` apart, zero
    elsewhere), and the relative error over all kernels.

    With A = U S V^T the atoms on the grid (pixels x M, thin SVD, rank r) and T the target, the
    minimum-norm solution is V S^-1 U^T T and ``|A c - T|^2 = |T|^2 - |U^T T|^2``: only the
    footprint's rows of U are needed, so no grid-sized copy of the kernels is built. A complete
    frame reproduces the kernels exactly; an overcomplete one gives the minimum-norm coefficients.
    """
    with torch.no_grad():
        u, sv, vh = _footprint_svd(atoms, weight.shape[-2:], dilation)
        target = weight.detach().double().cpu().reshape(-1, u.shape[0]).T  # (k*k, N)
        ut = u.T @ target  # U^T T, (r, N)
        coeff = vh.T @ (ut / sv[:, None])  # (M, N)
        total = target.square().sum()
        error = (total - ut.square().sum()).clamp_min(0).sqrt() / total.sqrt().clamp_min(1e-12)
    return coeff.T, float(error)


def kernel_gram(weight: torch.Tensor) -> torch.Tensor:
    """``T T^T`` (k*k x k*k, float64) of the kernels ``weight (..., k_y, k_x)``: all that
    :func:`projection_error` needs of them, read once for any number of frames."""
    with torch.no_grad():
        target = weight.detach().reshape(-1, weight.shape[-2] * weight.shape[-1]).double().cpu()
        return target.T @ target


def projection_error(atoms: torch.Tensor, gram: torch.Tensor, kernel_size, dilation=(1, 1)):
    """The relative error of :func:`project_kernels` from the kernels' Gram matrix
    (:func:`kernel_gram`): ``|T|^2 - |U^T T|^2 = tr G - tr(U^T G U)``. A search over frames
    (the N-Jet and steerable passes' search over sigma) costs one pass over the weights."""
    with torch.no_grad():
        u, _, _ = _footprint_svd(atoms, kernel_size, dilation)
        total = gram.trace()
        kept = (u * (gram @ u)).sum()
        return float((total - kept).clamp_min(0).sqrt() / total.sqrt().clamp_min(1e-12))


def _footprint_svd(atoms: torch.Tensor, kernel_size, dilation):
    """The thin SVD of the atoms on the grid (rank r), U restricted to the footprint of a
    ``kernel_size`` kernel centred on the grid, ``dilation`` apart: ``(U_fp, S, V^T)``."""
    basis = atoms.detach().double().cpu()
    sy, sx = basis.shape[-2:]
    ky, kx = kernel_size
    dy, dx = dilation
    oy, ox = (sy - (dy * (ky - 1) + 1)) // 2, (sx - (dx * (kx - 1) + 1)) // 2
    if oy < 0 or ox < 0:
        raise OptionError(f"a {ky}x{kx} kernel (dilation {dilation}) is larger than the frame")
    rows = torch.arange(oy, oy + dy * (ky - 1) + 1, dy)
    cols = torch.arange(ox, ox + dx * (kx - 1) + 1, dx)
    footprint = (rows[:, None] * sx + cols[None, :]).reshape(-1)
    u, sv, vh = torch.linalg.svd(basis.reshape(basis.shape[0], -1).T, full_matrices=False)
    rank = int((sv > sv[0] * 1e-10).sum())
    return u[footprint, :rank], sv[:rank], vh[:rank]


class FrameConv2d(Configurable, FixedBuffers, nn.Module):
    """A conv whose kernels are ``sum_m coeff[o, c, m] atoms[m]`` in a fixed frame.

    The settings are ``nn.Conv2d``'s (stride, padding including ``"same"``, dilation, groups, bias,
    padding_mode); ``frame`` is a name of :data:`FRAMES` or an ``(M, k_y, k_x)`` tensor of atoms
    (an incomplete one warns: such a layer spans fewer kernels than a conv).
    :meth:`from_conv` projects an existing conv's kernels; :meth:`collapse` returns the plain
    ``nn.Conv2d`` holding the current kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        frame: str | torch.Tensor = "gauss9",
        sigma: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        # the conv settings, validated and normalised by nn.Conv2d itself (on the meta device)
        ref = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device="meta",
        )
        for name in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "groups",
            "padding_mode",
            "_reversed_padding_repeated_twice",
        ):
            setattr(self, name, getattr(ref, name))
        self.sigma = float(sigma)
        if isinstance(frame, str):
            self.frame = frame
            self.register_fixed_buffers()
        else:
            self.frame = "custom"
            self.register_buffer("atoms", frame.detach().to(torch.float32).clone())
        if tuple(self.atoms.shape[-2:]) != self.kernel_size:
            raise OptionError(
                f"atoms of size {tuple(self.atoms.shape[-2:])} for a {self.kernel_size} kernel"
            )
        rank, pixels = frame_rank(self.atoms), self.kernel_size[0] * self.kernel_size[1]
        if rank < pixels:
            warnings.warn(
                f"FrameConv2d: the frame spans {rank} of the {pixels} dimensions of a "
                f"{self.kernel_size[0]}x{self.kernel_size[1]} kernel; kernels outside it are "
                "projected by least squares",
                stacklevel=2,
            )
        factory = {"device": device, "dtype": dtype}
        self.coeff = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, self.atoms.shape[0], **factory)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def config(self) -> dict:
        """``nn.Conv2d``'s arguments but ``device`` and ``dtype``, ``frame`` (a name, or the atoms
        of a custom frame as nested lists) and ``sigma``."""
        return {
            **conv2d_config(self),
            "frame": self.atoms.tolist() if self.frame == "custom" else self.frame,
            "sigma": self.sigma,
        }

    @classmethod
    def from_config(cls, config: dict) -> FrameConv2d:
        """A fresh layer (new coefficients) with the settings of ``config``."""
        frame = config["frame"]
        if not isinstance(frame, (str, torch.Tensor)):
            frame = torch.tensor(frame)  # a custom frame's atoms
        return cls(**{**config, "frame": frame})

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        return {"atoms": frame_atoms(self.frame, self.kernel_size, sigma=self.sigma).float()}

    def reset_parameters(self) -> None:
        """Kaiming-uniform kernels as ``nn.Conv2d`` draws them, written in the frame (nothing to
        draw on the meta device)."""
        if self.coeff.is_meta:
            return
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            groups=self.groups,
            bias=self.bias is not None,
        )
        self.load_kernels(conv.weight, conv.bias)

    def load_kernels(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> float:
        """Set the coefficients to the least-squares projection of ``weight``; the relative error
        (NaN for a weight on the meta device, which has no values to project)."""
        if weight.is_meta:
            return float("nan")
        coeff, error = project_kernels(self.atoms, weight)
        with torch.no_grad():
            self.coeff.copy_(coeff.reshape(self.coeff.shape))
            if self.bias is not None:
                self.bias.copy_(bias if bias is not None else torch.zeros_like(self.bias))
        return error

    @property
    def weight(self) -> torch.Tensor:
        """The current kernels, ``(C_out, C_in / groups, k_y, k_x)``."""
        return torch.einsum("ocm,myx->ocyx", self.coeff, self.atoms.to(self.coeff.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, frame="gauss9", *, sigma: float = 1.0
    ) -> tuple[FrameConv2d, float]:
        """A frame conv with ``conv``'s settings and its kernels projected on the frame, and the
        relative error of the projection (0 up to rounding for a complete frame)."""
        ref = conv.weight
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            frame=frame,
            sigma=sigma,
            device="meta",
        )
        # no random kernels drawn and projected first: the parameters are allocated empty on the
        # conv's device (the frame's atoms are real already), then the projection fills them
        for name, p in list(layer.named_parameters(recurse=False)):
            setattr(
                layer, name, nn.Parameter(torch.empty_like(p, device=ref.device, dtype=ref.dtype))
            )
        error = layer.load_kernels(conv.weight, conv.bias)
        return layer.to(device=ref.device, dtype=ref.dtype).train(conv.training), error

    def collapse(self) -> nn.Conv2d:
        """The plain ``nn.Conv2d`` with the current kernels (same outputs, a conv's cost)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device=self.coeff.device,
            dtype=self.coeff.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, frame={self.frame!r}"
            + (f", groups={self.groups}" if self.groups != 1 else "")
        )
