"""Stage 5, stages: stem, groups, transitions and head, and the report that holds them.

A unit whose output level is above its input level holds a *transition*: *standalone* if the
unit is a bare pool, *inside* otherwise. Units between transitions form *groups*; in nets with
residual units, the non-residual units before the first residual unit (up to the first
transition after the first layer) form the *stem*.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from reverso.analysis.probe import Probe
from reverso.analysis.report import Group, StageReport, Transition, Unit
from reverso.errors import NoDownsamplingError, UnsupportedTopologyError
from reverso.ir import (
    by_name,
    describe,
    feature_input,
    is_activation,
    is_conv,
    is_norm,
    is_spatial_conv,
    module_of,
    stride_of,
)
from reverso.ir.shapes import is_feature_map, spatial
from reverso.rewrite.classifier import classifier_node
from reverso.rewrite.widths import REGISTRY


def build_report(gm, input_size, probe: Probe, levels, units: list[Unit], preact) -> StageReport:
    body, head = units[:-1], units[-1]
    _check_something_to_reverse(gm, body, head)
    _check_head_is_global(gm, probe, levels, body, head)
    stem = _stem(body)
    items = _groups_and_transitions(body, len(stem))
    _name_roles(units, stem, items)
    named = by_name(gm)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    body_nodes = sorted((named[name] for u in body for name in u.nodes), key=order.__getitem__)
    return StageReport(
        input_size=tuple(input_size),
        units=units,
        stem=[u.index for u in stem],
        items=items,
        head=[head.index],
        num_classes=probe.num_classes,
        preact=preact,
        levels=max(u.out_level for u in body),
        opening=_opening_convs(gm, body_nodes, levels),
        prototypes=_prototypes(gm, body_nodes),
    )


def _check_something_to_reverse(gm: fx.GraphModule, body: list[Unit], head: Unit) -> None:
    transitions = [u for u in body if u.is_transition]
    named = by_name(gm)
    internal = [n for u in body for n in u.nodes if stride_of(gm, named[n]) > 1]
    if not transitions and internal:
        ups = [n for u in body for n in u.nodes if _upsamples(named[n])]
        back = f" and back up at {describe(gm, named[ups[0]])}" if ups else ""
        raise NoDownsamplingError(
            f"the model downsamples only inside blocks that come back to their input's "
            f"resolution (down at {describe(gm, named[internal[0]])}{back}), as a U-Net does: such "
            "cross-resolution paths cannot be reversed into a single coarse-to-fine path, and no "
            "downsampling between stages is left to mirror"
        )
    if not transitions:
        raise NoDownsamplingError(
            "the model has no spatial downsampling to mirror: every layer of its convolutional "
            f"body (from '{body[0].nodes[0]}' to '{body[-1].exit}') keeps the input resolution. "
            "A top-down network needs a bottom-up model with strides or pooling."
        )
    stem = next((i for i, u in enumerate(body) if not u.is_transition), len(body))
    if stem == 0 or any(u.is_transition for u in body[stem:]):
        return
    if stem > 1 and any(u.kind == "block" for u in body[:stem]):
        return  # strided blocks, one per stage (a small ResNet), not a patch embedding
    if any(stride_of(gm, named[n]) > 1 for n in head.nodes):
        return  # the head downsamples further: the head check names what reverso cannot place
    # every downsampling happens in the first layers (a patch embedding), then one resolution
    later = [named[n] for u in [*body[stem:], head] for n in u.nodes]
    tokens = any(isinstance(v := n.meta.get("val"), torch.Tensor) and v.dim() == 3 for n in later)
    if stem > 1 and not tokens:
        return  # two or more strided layers, then feature maps: a CNN with levels to reverse
    where = (
        f"its first layer ('{body[0].exit}', x{body[0].factor})"
        if stem == 1
        else f"its first layers ('{body[0].nodes[0]}' .. '{body[stem - 1].exit}', a patch embedding)"
    )
    raise NoDownsamplingError(
        f"the model's only downsampling is {where}; the top-down network reads that level "
        f"directly, so nothing is left to reverse. The body ends at '{body[-1].exit}', after "
        f"which the head starts at '{head.nodes[0]}'"
        + (" and works on tokens rather than feature maps (a transformer)." if tokens else ".")
    )


def _upsamples(n: fx.Node) -> bool:
    """A feature map larger than the feature map it is made from."""
    source = feature_input(n)
    if source is None or not is_feature_map(n) or not is_feature_map(source):
        return False
    return spatial(n)[0] > spatial(source)[0] or spatial(n)[1] > spatial(source)[1]


def _check_head_is_global(
    gm: fx.GraphModule, probe: Probe, levels, body: list[Unit], head: Unit
) -> None:
    """The head may hold no layer that works on values still growing with the input (feature
    maps, tokens, reshaped maps) but its norms, activations and a 1x1 conv classifier: the
    top-down net would run such a layer at its finest level instead of where it ran."""
    named = by_name(gm)
    nodes = [named[name] for name in head.nodes]
    n = next((n for n in nodes if _works_on_scaling_values(gm, probe, n)), None)
    if n is None:
        return
    for m in nodes:
        ins = {levels[a] for a in m.all_input_nodes if a in levels}
        if len(ins) > 1:
            raise UnsupportedTopologyError(
                f"node {describe(gm, m)} combines feature maps across resolutions (levels "
                f"{sorted(ins)}) before the head, and the layers from {describe(gm, n)} on feed "
                "it: multi-scale fusion cannot be reversed into a single coarse-to-fine path"
            )
    raise UnsupportedTopologyError(
        f"layer {describe(gm, n)} works on feature maps, tokens or reshaped maps that still "
        f"grow with the input, after the body's last feature map '{body[-1].exit}' (the value "
        "the head starts from no longer scales with the input); a top-down network would run "
        "it at its finest level instead of where it ran. Return to NCHW feature maps before "
        "the global pooling"
    )


def _works_on_scaling_values(gm: fx.GraphModule, probe: Probe, n: fx.Node) -> bool:
    """A layer with parameters that maps a value growing with the input to another one, other
    than a norm, an activation or a 1x1 conv that outputs the class scores."""
    if n.op != "call_module" or is_norm(gm, n) or is_activation(gm, n):
        return False
    module = gm.get_submodule(n.target)
    if not any(True for _ in module.parameters()):
        return False
    if classifier_node(gm, [n], probe.num_classes) is n:
        return False
    # a layer that reduces a growing value to a fixed size (timm's ConvMlp) is the head's start
    return n in probe.scaling and any(a in probe.scaling for a in n.all_input_nodes)


def _stem(body: list[Unit]) -> list[Unit]:
    stem: list[Unit] = []
    if any(u.residual for u in body):
        for u in body:
            if u.residual or (u.is_transition and u is not body[0]):
                break
            stem.append(u)
    return stem


def _groups_and_transitions(body: list[Unit], stem_length: int) -> list[Group | Transition]:
    items: list[Group | Transition] = []
    current: Group | None = None
    for u in body[stem_length:]:
        first = u is body[0]
        n_trans = sum(isinstance(i, Transition) or i.transition is not None for i in items)
        if u.kind == "pool" and u.is_transition:
            items.append(
                Transition(n_trans, u.index, "standalone", u.factor, list(u.strided), first)
            )
            current = None
            continue
        if current is None or u.is_transition:
            t = None
            if u.is_transition:
                t = Transition(n_trans, u.index, "inside", u.factor, list(u.strided), first)
            current = Group(sum(isinstance(i, Group) for i in items), [], u.out_level, t)
            items.append(current)
        current.units.append(u.index)
    return items


def _name_roles(units: list[Unit], stem: list[Unit], items) -> None:
    for u in stem:
        u.role = "stem"
    for item in items:
        if isinstance(item, Group):
            for ui in item.units:
                units[ui].role = f"G{item.index + 1}"
        else:
            units[item.unit].role = f"T{item.index + 1}"
    units[-1].role = "head"


def _opening_convs(gm, body_nodes: list[fx.Node], levels) -> dict[int, str]:
    """For each level, the first spatial conv whose output lies at that level."""
    opening: dict[int, str] = {}
    for n in body_nodes:
        if is_spatial_conv(gm, n) and n in levels:
            opening.setdefault(levels[n], n.name)
    for n in body_nodes:  # levels without a spatial conv fall back to any conv
        if is_conv(gm, n) and n in levels:
            opening.setdefault(levels[n], n.name)
    return opening


def _prototypes(gm, body_nodes: list[fx.Node]) -> dict[str, str]:
    """Layers whose *types* new layers copy (the model's conv, norm and activation)."""
    protos: dict[str, str] = {}
    for n in body_nodes:
        m = module_of(gm, n)
        if isinstance(m, torch.nn.Conv2d) and m.groups == 1:
            protos.setdefault("conv", n.name)
        if n.op == "call_module" and is_norm(gm, n) and is_feature_map(n):
            # a norm of NCHW channels; a LayerNorm of channels-last maps (MambaOut) is kept apart
            rule = REGISTRY.lookup(gm.get_submodule(n.target))
            last = rule is not None and rule.channel_dim == -1
            protos.setdefault("norm_last" if last else "norm", n.name)
        if is_activation(gm, n) and is_feature_map(n):
            protos.setdefault("act", n.name)
    return protos
