"""Stage 3, levels: how many downsamplings deep every feature map is, and where they happen.

A feature map's level is its input's level plus log2 of the stride of the op that made it
(convs and pools say it exactly; a padding keeps it); only ops without a stride fall back to the
ratio of sizes, so that unpadded convs, which shrink maps a little, never count as downsampling. For the
spec's nets this is l = log2(H / h).
"""

from __future__ import annotations

import math

import torch.fx as fx

from reverso.analysis.probe import Probe
from reverso.analysis.segments import Segments
from reverso.errors import InputSizeError, UnsupportedTopologyError
from reverso.frontend.tracing import size_hint, traced_dtype
from reverso.ir import describe, feature_input, has_stride, is_padding, stalled_stride, stride_of
from reverso.ir.shapes import level_of, spatial


def measure_levels(gm: fx.GraphModule, probe: Probe, input_hw) -> dict[fx.Node, int]:
    """The level of every feature map, NCHW or channels-last."""
    levels = {probe.input: 0}
    for n in gm.graph.nodes:
        if n not in probe.maps | probe.channels_last or n is probe.input:
            continue
        sources = [a for a in n.all_input_nodes if a in levels]
        if not sources:  # e.g. a map rebuilt from token values: measure it
            levels[n] = level_of(probe.hw(n), input_hw)
            continue
        base = max(sources, key=lambda a: levels[a])
        levels[n] = levels[base] + _step(gm, n, probe.hw(n), probe.hw(base))
    return levels


def _step(gm: fx.GraphModule, n: fx.Node, size, base_size) -> int:
    if is_padding(gm, n):  # a border, however wide against a small map, is no upsampling
        return 0
    ratio = (base_size[0] / size[0] + base_size[1] / size[1]) / 2
    if ratio < 0.75:  # an upsampling by its factor (interpolation, a transposed conv's stride)
        return -max(1, round(math.log2(1 / ratio)))
    stride = stride_of(gm, n)
    if stride > 1 or has_stride(gm, n):
        return round(math.log2(stride)) if size != base_size else 0
    return math.floor(math.log2(ratio) + 0.4) if ratio > 1 else 0


def downsampling_nodes(
    gm: fx.GraphModule, levels: dict[fx.Node, int], segments: Segments
) -> dict[fx.Node, int]:
    """The body's nodes that raise the level, with their factor. Refuses nodes that combine or
    upsample maps across resolutions."""
    body = segments.body()
    strided: dict[fx.Node, int] = {}
    for n in gm.graph.nodes:
        if n not in body or n not in levels:
            continue
        ins = [a for a in n.all_input_nodes if a in levels]
        if not ins:
            continue
        step = levels[n] - max(levels[a] for a in ins)
        exit_level = levels.get(segments.chain[segments.index[n]])
        if exit_level is not None and max(levels[a] for a in [n, *ins]) > exit_level:
            # an internal reduction: deeper than the map its segment ends on (attention that
            # reduces its keys and values, a gate that pools and comes back), not a transition
            continue
        if step > 0:
            strided[n] = 2**step
        elif step < 0 or any(levels[a] != levels[ins[0]] for a in ins):
            lo = min(ins, key=lambda a: levels[a])
            raise UnsupportedTopologyError(
                f"node {describe(gm, n)} combines or upsamples feature maps across "
                f"resolutions (level {levels[lo]} -> {levels[n]}, from '{lo.name}'): "
                "cross-resolution branches as in HRNet, DLA or U-Net cannot be reversed "
                "into a single coarse-to-fine path"
            )
    return strided


def check_strides_survive(gm: fx.GraphModule, input_size) -> None:
    """A strided op that no longer shrinks its input means the input is too small for the
    model's depth (checked everywhere: on tiny inputs such layers even look like head)."""
    n = stalled_stride(gm)
    if n is None:
        return
    h, w = spatial(feature_input(n))
    raise InputSizeError(
        f"input_size {tuple(input_size)} is too small for this model: at node "
        f"{describe(gm, n)} (stride {stride_of(gm, n)}) the feature map is already "
        f"{h}x{w} and cannot be downsampled further."
        + size_hint(gm, tuple(input_size), traced_dtype(gm))
    )
