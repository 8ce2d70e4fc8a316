"""njet: swap every spatial conv for an N-Jet conv (Gaussian-derivative basis, learned scale).

Every ``nn.Conv2d`` with a kernel larger than 1x1 anywhere in the module tree (graph nodes, and
convs inside merges or other leaf modules) becomes an :class:`~reverso.nn.NJetConv2d` with the
same widths, stride, groups and bias; 1x1 convs stay. Padding is chosen so every output keeps
its size; a dilated conv becomes an N-Jet conv without dilation whose scale is multiplied by the
dilation (the scale replaces it).

``init="random"``: fresh alpha (fan-in aware). ``init="project"``: each kernel is fitted by least
squares in the basis, with a small search over sigma, so a trained model keeps working; the
relative reconstruction error of every layer is in the report.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from tqdm.auto import tqdm

from reverso.compiler.base import Pass, PassResult
from reverso.errors import WidthError
from reverso.ir import module_window
from reverso.nn.frames import kernel_gram, project_kernels, projection_error
from reverso.nn.njet import NJetConv2d
from reverso.options import NJetOptions
from reverso.rewrite.convs import placed_like
from reverso.rewrite.swaps import overrides_forward, refuse_if_nothing_swapped, spatial_convs

#: scales tried when projecting a kernel (times the conv's dilation)
SIGMA_SEARCH = (0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.7, 2.0, 2.5, 3.0)


@dataclass
class NJetLayerReport:
    name: str
    kernel_size: int
    sigma: float
    relative_error: float | None  # of the projected kernel (init="project")


@dataclass
class NJetReport:
    layers: list[NJetLayerReport] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (conv, why it stays)

    def __str__(self) -> str:
        lines = [f"{'layer':<40} {'kernel':>6} {'sigma':>6} {'rel. error':>10}"]
        for r in self.layers:
            err = "-" if r.relative_error is None else f"{r.relative_error:.4f}"
            lines.append(f"{r.name:<40} {r.kernel_size:>6} {r.sigma:>6.2f} {err:>10}")
        lines += [f"{name:<40} kept: {why}" for name, why in self.kept]
        return "\n".join(lines)

    @property
    def max_error(self) -> float:
        errors = [r.relative_error for r in self.layers if r.relative_error is not None]
        return max(errors, default=0.0)


class NJet(Pass):
    name = "njet"

    Options = NJetOptions  # order, sigma, learn_sigma, init, and the layers' settings

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        report = swap_spatial_convs(gm, **self.options())
        ctx.results.njet_report = report
        return PassResult(gm, bool(report.layers))

    def ensures(self, gm, ctx) -> None:
        left = [slot.name for slot in spatial_convs(gm) if type(slot.conv) is nn.Conv2d]
        if left:
            raise AssertionError(f"spatial convs left: {left}")


def swap_spatial_convs(root: nn.Module, **options) -> NJetReport:
    """Replace, in place, every spatial ``nn.Conv2d`` under ``root`` by an ``NJetConv2d``
    (``options``: those of :class:`~reverso.options.NJetOptions`)."""
    settings = NJetOptions.from_dict(options)
    report = NJetReport()
    slots = []
    for slot in spatial_convs(root):
        why = _kept_because(slot.conv)
        if why:
            report.kept.append((slot.name, why))
        else:
            slots.append(slot)
    if report.kept:
        _tell_about_kept(report, slots, root)
    projecting = settings.init == "project"
    bar = tqdm(slots, desc="projecting convs", unit="conv", disable=not projecting, leave=False)
    for slot in bar:
        layer, row = njet_from_conv(slot.conv, slot.name, settings)
        slot.replace(layer)
        report.layers.append(row)
    return report


#: timm's convs whose forward differs from Conv2d's only by a dynamic 'same' padding, which the
#: N-Jet conv reproduces (:func:`_size_preserving_padding`)
PADDING_ONLY = ("Conv2dSame",)
KEPT_REMEDY = (
    "an N-Jet conv computes F.conv2d of its own kernel, pads with zeros and has one stride and "
    "dilation for both axes, so it would drop what such a conv does (weight standardisation, "
    "reflect padding, for example); to convert them anyway, replace them by nn.Conv2d layers "
    "that compute the same with zero padding, then call reverso.njet"
)


def _kept_because(conv: nn.Conv2d) -> str | None:
    """Why a conv stays as it is: what the N-Jet conv cannot reproduce."""
    window = module_window(conv)
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    if len(set(window.stride)) != 1 or len(set(window.dilation)) != 1:
        return f"stride {window.stride}, dilation {window.dilation} differ per axis"
    if type(conv).__name__ in PADDING_ONLY:
        return None
    return overrides_forward(conv)


def _tell_about_kept(report: NJetReport, swappable: list, root: nn.Module) -> None:
    """Refuse when no conv can be swapped; otherwise warn which convs stay and why."""
    refuse_if_nothing_swapped(
        swappable, report.kept, root, "njet: no spatial nn.Conv2d it can replace", KEPT_REMEDY
    )
    names = ", ".join(f"{name} ({why})" for name, why in report.kept)
    warnings.warn(
        f"njet keeps {len(report.kept)} conv(s) as they are: {names}; {KEPT_REMEDY}", stacklevel=4
    )


def njet_from_conv(
    conv: nn.Conv2d, name: str, settings: NJetOptions
) -> tuple[NJetConv2d, NJetLayerReport]:
    """An N-Jet conv that can replace ``conv``: same widths, stride, groups, bias and output size."""
    layer_kwargs = settings.layer_kwargs()
    sigma = layer_kwargs.pop("sigma")
    if conv.padding_mode != "zeros":
        raise WidthError(
            f"conv '{name}' pads with {conv.padding_mode!r}; N-Jet convs pad with zeros"
        )
    window = module_window(conv)
    if len(set(window.stride)) != 1 or len(set(window.dilation)) != 1:
        raise WidthError(
            f"conv '{name}' has different strides or dilations per axis; N-Jet convs need equal ones"
        )
    dilation, footprint = window.dilation[0], window.extent
    if settings.init == "project":  # the scale whose basis fits the kernel best, then alpha
        gram = kernel_gram(conv.weight)  # the weights read once for the whole search
        errors = {}
        for scale in (base * dilation for base in SIGMA_SEARCH):
            basis = _layer_like(conv, scale, footprint, probe=True, **layer_kwargs).basis()
            errors[scale] = projection_error(basis, gram, conv.kernel_size, conv.dilation)
        chosen = min(errors, key=errors.get)
        layer = _layer_like(conv, chosen, footprint, **layer_kwargs)
        alpha, error = _projection(layer, conv)
        with torch.no_grad():
            layer.alpha.copy_(alpha.reshape(layer.alpha.shape).to(layer.alpha.dtype))
    else:
        chosen, error = sigma * dilation, None
        layer = _layer_like(conv, chosen, footprint, **layer_kwargs)
    if conv.bias is not None:
        with torch.no_grad():
            layer.bias.copy_(conv.bias)
    layer = placed_like(layer, conv)
    return layer, NJetLayerReport(name, footprint, chosen, error)


def _layer_like(
    conv: nn.Conv2d, sigma: float, footprint: int, *, probe: bool = False, **kwargs
) -> NJetConv2d:
    """An NJetConv2d whose grid holds at least the conv's (dilated) kernel (the kernel is masked to
    sigma's support inside it), padded to keep sizes; ``probe``: one input and output channel, only
    to read the basis."""
    layer = NJetConv2d(
        1 if probe else conv.in_channels,
        1 if probe else conv.out_channels,
        sigma=sigma,
        stride=module_window(conv).step,
        groups=1 if probe else conv.groups,
        bias=conv.bias is not None,
        padding=0,
        **kwargs,
    )
    layer.radius = max(layer.radius, math.ceil((footprint - 1) / 2))
    layer.padding = _size_preserving_padding(conv, layer.kernel_size[0])
    if type(conv).__name__ in PADDING_ONLY:  # its padding depends on the input size: per forward
        layer.same_extent = footprint
    return layer


def _size_preserving_padding(conv: nn.Conv2d, size: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding giving the conv's output size for every input size.

    Per axis, a conv with footprint k_eff and padding p outputs floor((H + 2p - k_eff)/s) + 1
    rows; an odd kernel of ``size`` with padding l + r outputs the same for every H exactly when
    l + r = 2p - k_eff + size. l centres the new kernel on the old one (half a pixel to the right
    for even kernels).
    """
    if type(conv).__name__ in PADDING_ONLY:  # timm's dynamic 'same' padding: the nominal value,
        return ((size - 1) // 2, size // 2) * 2  # the layer pads per input size (same_extent)
    window, pads = module_window(conv), []
    for axis in (1, 0):  # x (left/right), then y (top/bottom)
        k_eff = window.dilation[axis] * (window.kernel[axis] - 1) + 1
        if isinstance(window.padding, str):  # "same" (stride 1) or "valid"
            low = (k_eff - 1) // 2 if window.padding == "same" else 0
            total = size - 1 if window.padding == "same" else size - k_eff
        else:
            low = window.padding[axis]
            total = 2 * low - k_eff + size
        left = low + (size - 1) // 2 - k_eff // 2
        pads += [left, total - left]
    return tuple(pads)


def _projection(layer: NJetConv2d, conv: nn.Conv2d) -> tuple[torch.Tensor, float]:
    """Least-squares coefficients (C_out * C_in/g, F) for which the layer's basis reproduces the
    conv's kernel (zero outside it) on the layer's grid, and their relative error (the frame
    projection of :func:`reverso.nn.frames.project_kernels`)."""
    return project_kernels(layer.basis(), conv.weight, conv.dilation)
