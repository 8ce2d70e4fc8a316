"""Stage 3, levels: how many downsamplings deep every feature map is, and where they happen.

A feature map's level is its input's level plus log2 of the stride of the op that made it
(convs and pools say it exactly; a padding keeps it); only ops without a stride fall back to the
ratio of sizes, so that unpadded convs, which shrink maps a little, never count as downsampling. For the
top-down paper's reference models this is l = log2(H / h).
"""

from __future__ import annotations

import math

import torch.fx as fx

from reverso.analysis.probe import Probe
from reverso.analysis.segments import Segments
from reverso.errors import InputSizeError, UnsupportedTopologyError
from reverso.frontend.tracing import size_hint, traced_dtype
from reverso.ir import (
    describe,
    feature_input,
    has_stride,
    is_padding,
    owner_class,
    stalled_stride,
    stride_of,
)
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
    local = local_excursions(levels, segments, body)
    strided: dict[fx.Node, int] = {}
    for n in gm.graph.nodes:
        if n not in body or n not in levels or n in local:
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
            raise _cross_resolution(gm, n, ins, levels)
    return strided


def _cross_resolution(gm, n: fx.Node, ins: list[fx.Node], levels) -> UnsupportedTopologyError:
    """The refusal of a node that leaves its level for good inside the body, naming the
    construct: a reshape of values computed at a pooled resolution, or a branch between levels."""
    lo = min(ins, key=lambda a: levels[a])
    where = f"node {describe(gm, n)}"
    if n.op == "call_method" and n.target in ("view", "reshape", "flatten", "unflatten"):
        err = UnsupportedTopologyError(
            f"{where} reshapes values computed at level {levels[lo]} into a map at level "
            f"{levels[n]}: its block works at a pooled resolution (query pooling, attention "
            "that downsamples its input) and does not come back to the level it started from "
            "before the block ends, so the block has no top-down form"
        )
    else:
        err = UnsupportedTopologyError(
            f"{where} combines or upsamples feature maps of different levels ({levels[lo]} -> "
            f"{levels[n]}, from '{lo.name}'): a branch between two levels of the network (a "
            "cross-resolution fusion as in HRNet, DLA or U-Net) cannot be reversed into a single "
            "coarse-to-fine path"
        )
    err.module_class = owner_class(n)
    return err


def local_excursions(
    levels: dict[fx.Node, int], segments: Segments, body: set[fx.Node]
) -> set[fx.Node]:
    """The nodes of every down-then-up path inside one segment: a gate or an attention that
    pools, works coarser and comes back to the level it left (ghostnetv2's DFC attention, a
    pooled gate) before its block ends. They belong to the block and keep their resolution ratio
    to it in the top-down net. The coarse part must be private to the path (nothing else reads
    it); a path whose ends lie at different levels, or whose coarse part also feeds on (HRNet's
    parallel branches), stays a cross-resolution branch."""
    local: set[fx.Node] = set()
    for up in body:
        ins = [a for a in up.all_input_nodes if a in levels]
        if up not in levels or not ins or levels[up] >= max(levels[a] for a in ins):
            continue  # not an upsampling
        target, segment = levels[up], segments.index.get(up)
        inside, stack, left_from = set(), list(ins), set()
        while stack:
            a = stack.pop()
            if a in inside or a not in levels:
                continue
            if levels[a] <= target:
                left_from.add(levels[a])
                continue
            if segments.index.get(a) != segment:
                left_from.add(None)  # the deeper part began in another segment
                continue
            inside.add(a)
            stack.extend(a.all_input_nodes)
        private = all(set(a.users) <= inside | {up} for a in inside)
        if inside and left_from == {target} and private:
            local |= inside | {up}
    return local


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
