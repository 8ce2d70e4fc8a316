"""Theoretical receptive fields of every node of a model (top-down paper, section 3.2).

Per layer with kernel k and stride s: ``r_i = r_{i-1} + (k - 1) m_{i-1}``, ``m_i = m_{i-1} s``
(r: receptive field in input pixels, m: the jump, the input distance between neighbouring
outputs), from ``r_0 = m_0 = 1``. Dilation d counts as ``k_eff = d (k - 1) + 1``; upsampling by u
divides the jump and adds nothing; a Gaussian blur counts as a kernel of width 6 sigma. Where
paths with different receptive fields meet (a merge, a residual add, a concat) the node keeps the
smallest and the largest. Global pooling sees the whole input (infinite receptive field).

Two rule sets:

* ``rule="paper"`` (default): exactly the paper's rules above, which reproduce its worked example.
* ``rule="exact"``: the discrete support of what actually runs. A blur counts with all its taps
  (a sampled Gaussian has ``2 ceil(3 sigma) + 1`` taps, one more than 6 sigma), and an
  interpolating upsampler (bilinear, or reverso's "blur" mode) reads two coarse pixels per axis, so
  it adds one coarse jump before dividing it; a nearest upsampler by f counts as a window of f fine
  pixels (a window downstream can start anywhere inside a repeated pixel). Under these rules no input gradient of a unit falls
  outside its receptive field, which :func:`reverso.testing.check_erf_within_receptive_field`
  checks.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from reverso import ir
from reverso.errors import OptionError
from reverso.frontend.tracing import trace
from reverso.ir.shapes import is_feature_map
from reverso.ir.windows import pair
from reverso.nn import (
    BlurPool2d,
    DynamicSteerableConv2d,
    FrameConv2d,
    GaussianBlur2d,
    HConv2d,
    HLift,
    HReadout,
    ImagePyramid,
    Merge,
    NeighbourhoodToDepth,
    NJetConv2d,
    SamePad2d,
    SpaceToDepth,
    Upsample,
)
from reverso.study.rf_arithmetic import GLOBAL, INPUT, RF, meet, upsampled


@dataclass
class RFReport:
    """Receptive field of every node, in graph order; ``report[name]`` looks one up."""

    rows: dict[str, tuple[str, RF]]  # node name -> (what it is, RF)

    def __getitem__(self, name: str) -> RF:
        if name not in self.rows:
            raise OptionError(
                f"no receptive field for node {name!r}: pass one of the model's feature-map "
                f"nodes, e.g. {', '.join(list(self.rows)[-3:])}"
            )
        return self.rows[name][1]

    def convs(self) -> list[tuple[str, RF]]:
        """The conv layers in order, with their output receptive fields."""
        return [(n, rf) for n, (kind, rf) in self.rows.items() if kind.startswith("conv")]

    def __str__(self) -> str:
        lines = [f"{'node':<36} {'op':<24} {'rf min':>8} {'rf max':>8} {'jump':>6} {'level':>5}"]
        for name, (kind, rf) in self.rows.items():
            if math.isinf(rf.max):
                lines.append(f"{name:<36} {kind:<24} {'all':>8} {'all':>8} {'-':>6} {'-':>5}")
            else:
                lines.append(
                    f"{name:<36} {kind:<24} {rf.min:>8.1f} {rf.max:>8.1f} {rf.jump:>6.3g} {rf.level:>5}"
                )
        return "\n".join(lines)


RULES = ("paper", "exact")


def receptive_fields(
    model: nn.Module | fx.GraphModule | str,
    input_size=None,
    *,
    rule: str = "paper",
    leaf_modules=(),
) -> RFReport:
    """Receptive field, jump and level of every node of ``model`` (traced if needed).

    ``model`` may be a bottom-up model (or timm name), a :class:`~reverso.TopDownNet` (its
    feature nodes, then its head's as ``head.<node>``) or a GraphModule with shapes.
    ``leaf_modules`` are kept whole when tracing, as in :func:`reverso.trace`; a leaf reverso
    does not know counts by its ``kernel_size``/``stride`` attributes.
    """
    from reverso.convert.network import TopDownNet

    if rule not in RULES:
        raise OptionError(f"rule must be one of {RULES}, got {rule!r}")
    if isinstance(model, TopDownNet):
        rows = _walk(model.features, {}, rule).rows
        head = _walk(model.head.pre_logits, {"x": list(rows.values())[-1][1]}, rule).rows
        return RFReport(rows | {f"head.{k}": v for k, v in head.items()})
    gm = (
        model
        if isinstance(model, fx.GraphModule)
        else trace(model, input_size, leaf_modules=leaf_modules)
    )
    return _walk(gm, {}, rule)


def _walk(gm: fx.GraphModule, inputs: dict[str, RF], rule: str) -> RFReport:
    rfs: dict[fx.Node, RF | tuple] = {}
    rows: dict[str, tuple[str, RF]] = {}
    reads_data: dict = {}  # shared by every node's look for parameter-only inputs
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            rfs[n] = inputs.get(n.name, INPUT)
            continue
        if n.op == "output":
            continue
        kind, rf = _node_rf(gm, n, rfs, rule == "exact", reads_data)
        rfs[n] = rf
        if isinstance(rf, RF):
            rows[n.name] = (kind, rf)
    return RFReport(rows)


def _inputs(n: fx.Node, rfs, reads_data: dict) -> list[RF]:
    """The receptive fields of the node's data inputs (values computed from the model's own
    parameters alone, such as a reshaped layer-scale gain, see no pixel)."""
    constant = set(ir.fixed_inputs(n, reads_data))
    return [
        rfs[a]
        for a in n.all_input_nodes
        if isinstance(rfs.get(a), RF)
        and a.op != "get_attr"
        and a not in constant
        and not _is_size(a)  # x.shape[-2:] handed to an interpolation carries no pixel
    ]


def _is_size(a: fx.Node) -> bool:
    value = a.meta.get("val")
    return isinstance(value, (int, torch.Size)) or (
        isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)
    )


def _node_rf(
    gm: fx.GraphModule, n: fx.Node, rfs, exact: bool, reads_data: dict
) -> tuple[str, RF | tuple]:
    ins = _inputs(n, rfs, reads_data)
    if n.op == "get_attr":
        return "parameter", RF(0.0, 0.0, 1.0)
    if (
        n.op == "call_function"
        and n.target is operator.getitem
        and isinstance(rfs.get(n.args[0]), tuple)
    ):
        return "pyramid level", rfs[n.args[0]][n.args[1]]
    if not ins:
        return "constant", RF(0.0, 0.0, 1.0)
    base = meet(ins)
    m = ir.module_of(gm, n)
    if m is not None:
        return _module_rf(m, n, base, rfs, exact)
    if n.op == "call_function":
        window = ir.window_of(gm, n)
        if window is not None:
            kind = "pool" if window.kind != "conv" else f"conv {window.extent}x{window.extent}"
            return kind, base.through(window.extent, window.step)
        if n.target is F.interpolate:
            return "upsample", _interpolated(n, base, exact)
        if n.target in (F.pixel_unshuffle, torch.pixel_unshuffle):
            block = int(n.args[1] if len(n.args) > 1 else n.kwargs["downscale_factor"])
            return "space-to-depth", base.through(block, block)
        step = ir.slice_step(n)
        if step > 1:  # one of the k^2 offsets a patch merging concatenates: its k x k window
            return "strided slice", base.through(step, step)
        if n.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            return "global", GLOBAL
    source = ir.feature_input(n)
    value = n.meta.get("val")
    if _pools_to_a_point(source, value):  # x.mean((2, 3), keepdim=True): a 1x1 "map"
        return "global", GLOBAL
    if source is not None and not is_feature_map(n) and isinstance(value, torch.Tensor):
        if value.dim() > 4 and tuple(value.shape[-2:]) == tuple(source.meta["val"].shape[-2:]):
            return "reshaped", base  # a channel shuffle's 5D view keeps every pixel in place
        return "global", GLOBAL  # flatten, a spatial mean: every input pixel counts (a split
    # of a map into a tuple of maps is no such value)
    return ("join" if len(ins) > 1 else "pointwise"), base


def _pools_to_a_point(source: fx.Node | None, value) -> bool:
    """A reduction over the whole map that keeps its dims (a selective kernel's attention input)."""
    if source is None or not isinstance(value, torch.Tensor) or value.dim() != 4:
        return False
    before = source.meta.get("val")
    return (
        tuple(value.shape[-2:]) == (1, 1)
        and isinstance(before, torch.Tensor)
        and before.dim() == 4
        and tuple(before.shape[-2:]) != (1, 1)
    )


def _module_rf(m: nn.Module, n: fx.Node, base: RF, rfs, exact: bool) -> tuple[str, RF | tuple]:
    if isinstance(m, NJetConv2d):
        support = 2 * m.support_radius() + 1
        return f"conv {support}x{support} (N-Jet)", base.through(support, m.stride)
    if isinstance(m, nn.Conv2d):
        w = ir.module_window(m)
        return f"conv {m.kernel_size[0]}x{m.kernel_size[1]}", base.through(w.extent, w.step)
    if isinstance(m, FrameConv2d):
        extent = max(d * (k - 1) + 1 for k, d in zip(m.kernel_size, m.dilation, strict=True))
        return f"conv {m.kernel_size[0]}x{m.kernel_size[1]} (frame)", base.through(
            extent, max(m.stride)
        )
    if isinstance(m, DynamicSteerableConv2d):  # the frame, then the pose net's 5x5 context
        k = m.kernel_size
        return f"steerable conv {k}x{k}", base.through(k, m.stride).through(5)
    if isinstance(m, (HConv2d, HLift)):
        return f"hierarchical conv {m.kernel}x{m.kernel}", base.through(
            m.kernel, getattr(m, "stride", 1)
        )
    if isinstance(m, HReadout):
        return "global", GLOBAL
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        w = ir.module_window(m)
        return "pool", base.through(w.extent, w.step)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return "global", GLOBAL
    if isinstance(m, (SpaceToDepth, NeighbourhoodToDepth)):  # a b x b window, stride b or 1
        return "space-to-depth", base.through(m.block_size, m.stride)
    if isinstance(m, GaussianBlur2d):
        return "gaussian blur", base.through(m.taps.numel() if exact else m.width)
    if isinstance(m, BlurPool2d) or hasattr(m, "filt_size"):  # reverso's or timm's BlurPool2d
        size = getattr(m, "filter_size", getattr(m, "filt_size", 1))
        if getattr(m, "max_kernel", 0):  # the stride-1 max-pool before the blur
            base = base.through(m.max_dilation * (m.max_kernel - 1) + 1, 1)
        return "blurpool", base.through(size, _first(m.stride))
    if isinstance(m, Upsample):  # upsample(x, like): only x's pixels flow through
        return "upsample", upsampled(rfs[n.args[0]], m.factor, m.mode, exact)
    if isinstance(m, nn.Upsample):
        factor = float(_first(m.scale_factor or 1))
        return "upsample", upsampled(base, factor, m.mode, exact)
    if isinstance(m, ImagePyramid):
        return "pyramid", tuple(_pyramid_level(m, level, exact) for level in m.levels)
    if isinstance(m, Merge):
        return "merge", _merge_rf(m, rfs[n.args[0]], rfs[n.args[1]], exact)
    if isinstance(m, nn.Linear):
        return "linear", GLOBAL if base.max == math.inf else base
    if any(isinstance(c, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) for c in m.modules()):
        return "block (its convs in order)", _sequence_rf(m, base)
    if isinstance(m, SamePad2d):  # padding only: the window after it reads the same pixels
        return "same padding", base
    window = _declared_window(m)
    if window is not None:  # timm's CondConv2d, a user's own conv-like leaf
        extent, step = window
        return f"conv-like {type(m).__name__}", base.through(extent, step)
    if _has_a_spatial_extent(m, n):
        warnings.warn(
            f"receptive_fields: {n.target} ({type(m).__name__}) is a module reverso does not know, "
            "and it has a spatial kernel or changes the map's size; it is counted as pointwise, so "
            "the receptive fields from here on may be too small. Give the module kernel_size and "
            "stride attributes (as nn.Conv2d has), or trace it through instead of keeping it a leaf",
            stacklevel=4,
        )
    return "layer", base


def _declared_window(m: nn.Module) -> tuple[int, int] | None:
    """``(extent, step)`` from a module's own ``kernel_size``/``stride``(/``dilation``) attributes."""
    kernel, stride = getattr(m, "kernel_size", None), getattr(m, "stride", None)
    if not all(isinstance(v, (int, tuple, list)) for v in (kernel, stride)):
        return None
    try:
        kernel, stride = pair(kernel), pair(stride)
        dilation = pair(getattr(m, "dilation", 1))
    except (TypeError, ValueError):  # attributes of another meaning
        return None
    extent = max(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    return extent, max(stride)


def _has_a_spatial_extent(m: nn.Module, n: fx.Node) -> bool:
    """A weight with a spatial window (4-D, k x k > 1), or an output map of another size."""
    spatial = any(
        t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1
        for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]
    )
    source, value = ir.feature_input(n), n.meta.get("val")
    before = source.meta.get("val") if source is not None else None
    resized = (
        isinstance(value, torch.Tensor)
        and isinstance(before, torch.Tensor)
        and value.dim() == before.dim() == 4
        and value.shape[-2:] != before.shape[-2:]
    )
    return spatial or resized


def _pyramid_level(pyramid: ImagePyramid, level: int, exact: bool) -> RF:
    """A pyramid level's receptive field: its blur as a kernel, at the level's jump."""
    if level == 0:
        return INPUT
    if pyramid.kind == "cascade":  # per x2 step: blur (sigma 2/3, 6 sigma = 4 wide), subsample
        rf = INPUT
        for _ in range(level):
            rf = rf.through(pyramid.taps_step.numel() if exact else 6 * 2 / 3, 2)
        return rf
    factor = 2**level
    if pyramid.kind == "gaussian":  # TF's resize: taps within 1.5 f of the centre, 3 f wide
        return INPUT.through(3 * factor, factor)
    taps = getattr(pyramid, f"taps_{level}").numel()
    width = 6 * factor / 2 if pyramid.kind == "gaussian_reflect" and not exact else taps
    return INPUT.through(width, factor)


def _merge_rf(merge: Merge, coarse: RF, image: RF, exact: bool) -> RF:
    lateral = _sequence_rf(merge.lateral, image)
    if merge.project is not None:
        coarse = _sequence_rf(merge.project, coarse)
    if merge.upsample is not None:
        up = merge.upsample
        coarse = upsampled(coarse, up.factor, up.mode, exact)
    joined = meet([coarse, lateral])
    return _sequence_rf(merge.fuse, joined) if merge.fuse is not None else joined


def _sequence_rf(block: nn.Module, rf: RF) -> RF:
    """The convs and pools of a block applied one after the other, in registration order."""
    inside_window: set[int] = set()  # the parallel convs of a MixedConv2d count once
    for m in block.modules():
        if id(m) in inside_window:
            continue
        window = ir.module_window(m)
        if window is not None:
            rf = rf.through(window.extent, window.step)
            inside_window.update(id(c) for c in m.modules())
    return rf


def _interpolated(n: fx.Node, base: RF, exact: bool) -> RF:
    mode = n.kwargs.get("mode", n.args[3] if len(n.args) > 3 else "nearest")
    source = n.args[0]
    scale = n.kwargs.get("scale_factor") or (n.args[2] if len(n.args) > 2 else None)
    if scale:
        factor = float(_first(scale))
    elif is_feature_map(source) and is_feature_map(n):  # size=: the ratio of the sizes
        factor = n.meta["val"].shape[-1] / source.meta["val"].shape[-1]
    else:
        return base
    return upsampled(base, factor, mode, exact)


def _first(v):
    return v[0] if isinstance(v, (tuple, list)) else v
