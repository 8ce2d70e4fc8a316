"""steerable: dynamic steerable convs or blocks swapped into a model (docs/methods/structured.md,
sections 4 and 7).

``unit="conv"``: a spatial conv (groups 1, square odd kernel, no dilation) becomes a
:class:`~reverso.nn.DynamicSteerableConv2d` with the same widths, stride and padding, its frame
sampled on the conv's own grid and ``W`` the least-squares projection of the conv's kernels (sigma
by a small search, as the N-Jet pass does); the pose network starts at zero, so the converted
model starts from the projected function (the report gives each layer's projection error).
Grouped and depthwise convs are kept (no per-channel canonical feature to steer, an inferred
rule), as are dilated, non-square and forward-overriding convs; the report says why.

``unit="block"``: a residual unit ``F(x) + P(x)`` becomes the two-factor block
``steer(Phi(x); pose) W``: the shortcut becomes the 1x1 ``W`` on the steered frame (the identity's
projection for an identity shortcut, fresh weights where widths change) and the residual branch
is replaced by the small pose network (the thesis's interpolator). The result trains from there.

``every=n`` converts every n-th candidate (convs in module order, units in graph order), from the first
(the thesis alternates dynamic and static blocks, which "stabilizes training considerably").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import UnsupportedTopologyError
from reverso.ir.shapes import channels
from reverso.nn.steerable import DynamicSteerableConv2d, steerable_frame
from reverso.options import SteerableOptions
from reverso.rewrite.convs import placed_like
from reverso.rewrite.residuals import residual_units
from reverso.rewrite.swaps import overrides_forward, refuse_if_nothing_swapped, spatial_convs

#: scales tried when projecting a kernel on the frame
SIGMA_SEARCH = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5)


@dataclass
class SteerableReport:
    layers: list[tuple[str, float, float | None]] = field(
        default_factory=list
    )  # name, sigma, error
    kept: list[tuple[str, str]] = field(default_factory=list)  # name, why

    def __str__(self) -> str:
        lines = [f"{'layer':<40} {'sigma':>6} {'rel. error':>10}"]
        for name, sigma, error in self.layers:
            lines.append(f"{name:<40} {sigma:>6.2f} {'-' if error is None else f'{error:.4f}':>10}")
        lines += [f"{n:<40} kept: {why}" for n, why in self.kept]
        return "\n".join(lines)


class Steerable(Pass):
    name = "steerable"

    Options = SteerableOptions  # unit, order, sigma, pose, mode, every

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        settings = self.options()
        unit = settings.pop("unit")
        swap = swap_convs_for_steerable if unit == "conv" else swap_units_for_steerable
        report = swap(gm, **settings)
        ctx.results.steerable_report = report
        return PassResult(gm, True)


def swap_convs_for_steerable(root: nn.Module, *, every=2, **settings) -> SteerableReport:
    """Replace, in place, every ``every``-th eligible spatial conv under ``root``."""
    report, candidates = SteerableReport(), 0
    for slot in spatial_convs(root):
        why = _why_kept(slot.conv)
        if why is None:
            why = f"every={every}: left static" if candidates % every else None
            candidates += 1
        if why:
            report.kept.append((slot.name, why))
            continue
        layer, sigma, error = steerable_from_conv(slot.conv, **settings)
        slot.replace(layer)
        report.layers.append((slot.name, sigma, error))
    refuse_if_nothing_swapped(
        report.layers,
        report.kept,
        root,
        "steerable: no conv to make steerable",
        "it needs spatial nn.Conv2d layers with groups=1",
    )
    return report


def _why_kept(conv: nn.Conv2d) -> str | None:
    k = conv.kernel_size
    if overrides_forward(conv):
        return overrides_forward(conv)
    if conv.groups != 1:
        return f"groups={conv.groups}: no canonical feature per channel to steer"
    if k[0] != k[1] or k[0] % 2 == 0 or conv.dilation != (1, 1):
        return f"a {k[0]}x{k[1]} kernel with dilation {conv.dilation}: needs a square odd one"
    if (
        isinstance(conv.padding, str)
        or conv.padding[0] != conv.padding[1]
        or conv.padding_mode != "zeros"
    ):
        return "its padding is not the same zero padding on every side"
    return None


def steerable_from_conv(conv: nn.Conv2d, *, order, sigma, pose, mode):
    """A steerable conv that can replace ``conv``, W projected from its kernels with the scale that
    fits them best (``sigma`` is the first scale tried); ``(layer, sigma, relative error)``."""

    def build(s):
        return DynamicSteerableConv2d(
            conv.in_channels,
            conv.out_channels,
            order=order,
            sigma=s,
            kernel_size=conv.kernel_size[0],
            stride=conv.stride[0],
            padding=conv.padding[0],
            bias=conv.bias is not None,
            pose=pose,
            mode=mode,
        )

    from reverso.nn.frames import kernel_gram, projection_error

    if conv.weight.is_meta:  # a model's structure only: nothing to fit, the given scale
        best = sigma
    else:  # the weights read once; each scale's frame alone (its atoms, no layer) tried on them
        gram, size = kernel_gram(conv.weight), conv.kernel_size[0]
        scales = (sigma, *(s for s in SIGMA_SEARCH if s != sigma))
        errors = {
            s: projection_error(steerable_frame(order, s, size), gram, conv.kernel_size)
            for s in scales
        }
        best = min(errors, key=errors.get)
    layer = build(best)
    error = layer.load_kernels(conv.weight, conv.bias)
    return placed_like(layer, conv), best, error


def swap_units_for_steerable(
    gm: fx.GraphModule, *, every=2, order, sigma, pose, mode
) -> SteerableReport:
    """Replace every ``every``-th residual unit of ``gm`` by a steerable block."""
    units = residual_units(gm)
    if not units:
        raise UnsupportedTopologyError(
            f"steerable(unit='block'): {type(gm).__name__} has no residual units (additions "
            "s + F(s) or P(s) + F(s)); use unit='conv' for a plain CNN"
        )
    report, replaced = SteerableReport(), {}
    for index, unit in enumerate(units):
        if index % every:
            report.kept.append((unit.add.name, f"every={every}: left static"))
            continue
        entry = _entry(gm, replaced.get(unit.shortcut, unit.shortcut), set(unit.branch))
        c_in, c_out = channels(entry), channels(unit.add)
        block = DynamicSteerableConv2d(
            c_in, c_out, order=order, sigma=sigma, stride=unit.stride, pose=pose, mode=mode
        )
        error = None
        if not unit.projection and c_in == c_out and unit.stride == 1:  # W starts as the identity
            eye = torch.zeros(c_out, c_in, block.kernel_size, block.kernel_size)
            eye[:, :, block.kernel_size // 2, block.kernel_size // 2] = torch.eye(c_out)
            error = block.load_kernels(eye)
        target = ir.unique_name(gm, f"steerable_{unit.add.name}")
        gm.add_submodule(target, ir.placed_in(gm, block))
        with gm.graph.inserting_before(unit.add):
            node = gm.graph.call_module(target, (entry,))
        node.meta = dict(unit.add.meta)
        unit.add.replace_all_uses_with(node)
        replaced[unit.add] = node
        for old in reversed(unit.nodes):
            if not old.users:  # the entry's norm and activation still feed the block
                gm.graph.erase_node(old)
        report.layers.append((target, sigma, error))
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return report


def _entry(gm: fx.GraphModule, shortcut: fx.Node, branch: set[fx.Node]) -> fx.Node:
    """The map both sides of a unit read: past a norm or activation they share (a
    pre-activation, or the trunk's activation), which stays in front of the block."""
    entry = shortcut
    while len(entry.users) == 1:
        (user,) = entry.users
        if user not in branch or not (ir.is_norm(gm, user) or ir.is_activation(gm, user)):
            break
        entry = user
    return entry
