"""Hierarchical attribute convolutions (HCNN; Jacobsen, Oyallon, Mallat, Smeulders, arXiv 2017;
docs/methods/hcnn.md).

A layer's channels are an ordered grid of *attributes* ``(v_{j-1}, v_j)`` instead of an unordered
index, and every linear map is a convolution along space *and* along the attributes, so weights
are shared along the attribute axes as along space: shifts along attributes commute with the
layers and sums along them are invariants.

Layout: the stored tensor of a layer is ``(B, A, K, H, W)`` (A = K/2 positions of the older
attribute, K of the newer); inside an fx graph it travels flattened as ``(B, A K, H, W)``
(A-major), and :class:`HConv2d` takes either form and returns the same form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError
from reverso.names import HCNN_VARIANTS

from .config import Configurable
from .filters import FixedBuffers

PADDINGS = ("zeros", "circular")


class HConv2d(Configurable, FixedBuffers, nn.Module):
    """One factorised hierarchical layer (docs/methods/hcnn.md, sections 4 and 9),
    ``(B, a_in, k_in, H, W) -> (B, ceil(k_in / 2), k_out, H / stride, W / stride)``:

    1. every attribute position through the same ``Q`` spatial filters ``h`` (one input channel,
       ``kernel`` x ``kernel``, spatial ``stride``), BatchNorm per q (statistics shared over
       positions), ELU (``variant="plus"``);
    2. a convolution along the two attribute axes with ``Q -> k_out`` filters ``g`` of size
       ``attr_kernel``, stride ``attr_stride`` along both, BatchNorm per output, ELU;
    3. the marginal over the oldest attribute (``marginal="mean"``, the authors' code, or
       ``"sum"``, the thesis), which the next layer no longer depends on (thesis eq. 35).

    ``variant="linear"``: the thesis's linear HCNN layer ``rho(x * w)`` with the full filters
    ``w_{v_j}(u, a, b)`` as parameters, computed through the same route with ``h`` fixed to the
    ``kernel^2`` pixel deltas (exact: any 3x3-supported filter bank is a rank-9 sum), so ``Q`` is
    ``kernel^2`` and ``g`` holds ``w``. The normalisations have no affine parameters (eq. 37
    normalises and adds nothing); the counts then match the thesis's exactly.
    ``padding="circular"`` wraps space and both attributes (the covariance experiments).
    """

    def __init__(
        self,
        a_in: int,
        k_in: int,
        k_out: int,
        Q: int = 32,
        kernel: int = 3,
        attr_kernel: tuple[int, int] = (7, 11),
        stride: int = 1,
        attr_stride: int = 2,
        padding: str = "zeros",
        variant: str = "plus",
        marginal: str = "mean",
    ):
        super().__init__()
        if (
            padding not in PADDINGS
            or variant not in HCNN_VARIANTS
            or marginal not in ("mean", "sum")
        ):
            raise OptionError(
                f"padding must be one of {PADDINGS}, variant one of {HCNN_VARIANTS}, marginal mean or sum"
            )
        if kernel % 2 == 0 or attr_kernel[0] % 2 == 0 or attr_kernel[1] % 2 == 0:
            raise OptionError(f"kernels must be odd, got {kernel} and {attr_kernel}")
        self.a_in, self.k_in, self.k_out = a_in, k_in, k_out
        self.kernel, self.attr_kernel = kernel, tuple(attr_kernel)
        self.stride, self.attr_stride = stride, attr_stride
        self.padding, self.variant, self.marginal = padding, variant, marginal
        if variant == "linear":
            self.Q = kernel * kernel
            self.register_fixed_buffers()  # h: the pixel deltas
        else:
            self.Q = Q
            self.h = nn.Parameter(torch.empty(Q, 1, kernel, kernel))
            nn.init.kaiming_normal_(self.h)
        self.g = nn.Parameter(torch.empty(k_out, self.Q, *self.attr_kernel))
        nn.init.kaiming_normal_(self.g)
        self.norm_h = nn.BatchNorm2d(self.Q, affine=False) if variant == "plus" else None
        self.norm_g = nn.BatchNorm2d(k_out, affine=False)

    def config(self) -> dict:
        """The constructor's arguments (``Q`` is ``kernel^2`` for the linear variant)."""
        return {
            "a_in": self.a_in,
            "k_in": self.k_in,
            "k_out": self.k_out,
            "Q": self.Q,
            "kernel": self.kernel,
            "attr_kernel": self.attr_kernel,
            "stride": self.stride,
            "attr_stride": self.attr_stride,
            "padding": self.padding,
            "variant": self.variant,
            "marginal": self.marginal,
        }

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        if self.variant != "linear":
            return {}
        return {"h": torch.eye(self.Q).view(self.Q, 1, self.kernel, self.kernel)}

    @property
    def out_attributes(self) -> tuple[int, int]:
        """``(A', K')`` of the output: ``(ceil(k_in / attr_stride), k_out)``."""
        return -(-self.k_in // self.attr_stride), self.k_out

    def filters(self) -> torch.Tensor:
        """``w_{v_j}(u, a, b) = sum_q h_q(u) g_{v_j, q}(a, b)``: ``(k_out, k, k, A_k, B_k)``."""
        return torch.einsum("qyx,oqab->oyxab", self.h[:, 0].to(self.g.dtype), self.g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 4
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        x = x.reshape(b * self.a_in * self.k_in, 1, h, w)
        # 1. the spatial filters, shared by every attribute position
        y = F.conv2d(
            _pad(x, self.kernel // 2, self.kernel // 2, self.padding),
            self.h.to(x.dtype),
            stride=self.stride,
        )
        if self.norm_h is not None:
            y = F.elu(self.norm_h(y))
        q, h2, w2 = y.shape[1:]
        # 2. the attribute convolution, at every position (u) alike
        y = y.view(b, self.a_in, self.k_in, q, h2, w2).permute(0, 4, 5, 3, 1, 2)
        y = y.reshape(b * h2 * w2, q, self.a_in, self.k_in)
        pa, pk = self.attr_kernel[0] // 2, self.attr_kernel[1] // 2
        y = F.conv2d(_pad(y, pa, pk, self.padding), self.g, stride=self.attr_stride)
        y = F.elu(self.norm_g(y))  # (B H' W', k_out, A', K')
        # 3. marginalise the oldest attribute
        y = y.view(b, h2, w2, self.k_out, *y.shape[-2:])
        y = y.mean(dim=4) if self.marginal == "mean" else y.sum(dim=4)  # (B, H', W', k_out, K')
        y = y.permute(0, 4, 3, 1, 2)  # (B, K', k_out, H', W')
        return y.flatten(1, 2) if flat else y.contiguous()

    def extra_repr(self) -> str:
        return (
            f"a_in={self.a_in}, k_in={self.k_in}, k_out={self.k_out}, Q={self.Q}, "
            f"attr_kernel={self.attr_kernel}, stride={self.stride}, variant={self.variant!r}, "
            f"padding={self.padding!r}"
        )


class HLift(Configurable, nn.Module):
    """The lift to two attributes (layer 2 of the CIFAR model): a 3-D convolution over
    ``(v_1, u)`` with one input channel, ``k_out`` filters of ``attr_kernel x kernel x kernel``,
    stride ``attr_stride`` along ``v_1``; BatchNorm, ELU. ``(B, K, H, W) -> (B, K', k_out, H, W)``
    (flattened in a graph)."""

    def __init__(
        self,
        k_in: int,
        k_out: int,
        *,
        kernel: int = 3,
        attr_kernel: int = 11,
        attr_stride: int = 2,
        padding: str = "zeros",
    ):
        super().__init__()
        self.k_in, self.k_out, self.padding = k_in, k_out, padding
        self.kernel, self.attr_kernel, self.attr_stride = kernel, attr_kernel, attr_stride
        # the conv3d's (k_out, 1, a, k, k) kernel without its unit input dim: a 4-D parameter, so
        # that model.to(memory_format=torch.channels_last) works (torch refuses 5-D tensors there)
        self.weight = nn.Parameter(torch.empty(k_out, attr_kernel, kernel, kernel))
        nn.init.kaiming_normal_(self.weight.unsqueeze(1))
        self.norm = nn.BatchNorm3d(k_out, affine=False)
        self.register_load_state_dict_pre_hook(_squeeze_unit_dim)

    def config(self) -> dict:
        """The constructor's arguments."""
        return {
            "k_in": self.k_in,
            "k_out": self.k_out,
            "kernel": self.kernel,
            "attr_kernel": self.attr_kernel,
            "attr_stride": self.attr_stride,
            "padding": self.padding,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 4
        x = x.reshape(x.shape[0], 1, self.k_in, *x.shape[-2:])
        pads = (self.kernel // 2,) * 4 + (self.attr_kernel // 2,) * 2
        mode = "circular" if self.padding == "circular" else "constant"
        kernel = self.weight.unsqueeze(1)
        y = F.conv3d(F.pad(x, pads, mode=mode), kernel, stride=(self.attr_stride, 1, 1))
        y = F.elu(self.norm(y)).transpose(1, 2)  # (B, K', k_out, H, W)
        return y.flatten(1, 2) if flat else y.contiguous()


def _squeeze_unit_dim(_module, state_dict, prefix, *_args) -> None:
    """An HLift weight saved with its unit input dim (k_out, 1, a, k, k) loads as (k_out, a, k, k)."""
    weight = state_dict.get(prefix + "weight")
    if weight is not None and weight.dim() == 5 and weight.shape[1] == 1:
        state_dict[prefix + "weight"] = weight.squeeze(1)


class HReadout(Configurable, nn.Module):
    """Readout (thesis eq. 36, as the mean): the last attribute's values averaged over space and
    the older attribute. ``(B, A, classes, H, W)`` (or flattened) ``-> (B, classes)``."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def config(self) -> dict:
        """The constructor's argument, ``classes``."""
        return {"classes": self.classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, self.classes, *x.shape[-2:])
        return x.mean(dim=(1, 3, 4))


def _pad(x: torch.Tensor, py: int, px: int, padding: str) -> torch.Tensor:
    """Pad the last two axes by (py, px) on both sides: zeros or wrapped around."""
    return F.pad(x, (px, px, py, py), mode="circular" if padding == "circular" else "constant")


def factorise(filters: torch.Tensor, Q: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Spatial filters ``h (Q, 1, k, k)`` and attribute filters ``g (k_out, Q, A_k, B_k)`` whose
    sum of products best approximates ``filters (k_out, k, k, A_k, B_k)`` (truncated SVD of the
    ``k^2 x (k_out A_k B_k)`` matrix), and the relative error. With ``Q >= k^2`` it is exact."""
    k_out, k, _, ak, bk = filters.shape
    matrix = filters.permute(1, 2, 0, 3, 4).reshape(k * k, k_out * ak * bk)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(Q, s.numel())
    h = (u[:, :r] * s[:r]).T.reshape(r, 1, k, k)
    g = vh[:r].reshape(r, k_out, ak, bk).transpose(0, 1)
    if r < Q:  # more terms than the rank: the rest are zero
        h = torch.cat([h, h.new_zeros(Q - r, 1, k, k)])
        g = torch.cat([g, g.new_zeros(k_out, Q - r, ak, bk)], dim=1)
    error = s[r:].square().sum().sqrt() / s.square().sum().sqrt().clamp_min(1e-30)
    return h, g, float(error)
