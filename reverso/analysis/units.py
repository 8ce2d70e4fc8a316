"""Stage 4, units: the smallest pieces the compiler moves, measured.

Segments become units: a conv layer takes the norm and activation that follow it
(post-activation) or precede it (pre-activation), a multi-branch block is one unit, and later
segments of the same block module join it. Global pooling and everything after it form the
head, together with trailing 1x1 conv units that output the class scores (a fully
convolutional classifier).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from reverso.analysis.blocks import BlockModules, is_preact, is_residual
from reverso.analysis.probe import Probe
from reverso.analysis.report import Unit
from reverso.analysis.segments import Segments
from reverso.errors import NoDownsamplingError, UnsupportedTopologyError
from reverso.ir import (
    by_name,
    carries_tensor,
    descendants_within,
    describe,
    is_cat,
    is_pointwise,
    is_pool,
    module_of,
)
from reverso.ir.shapes import channels, is_feature_map, spatial
from reverso.rewrite.classifier import classifier_node
from reverso.rewrite.widths import width_defining


class _Builder:
    """Cuts the body's segments into units, in order."""

    def __init__(self, gm: fx.GraphModule, segments: Segments, strided, preact: bool, blocks):
        self.gm, self.segments, self.strided = gm, segments, strided
        self.strided_names = {n.name for n in strided}
        self.preact, self.blocks = preact, blocks
        self.units: list[Unit] = []
        self.owners: list[str | None] = []  # the block module each unit lies in
        self.pending: list[fx.Node] = []  # norm/act nodes waiting to open the next unit
        self.entry = segments.chain[0]

    def new_unit(self, kind: str, nodes, exit_: fx.Node, owner: str | None) -> None:
        names = [n.name for n in self.pending + nodes]
        self.units.append(Unit(len(self.units), kind, names, self.entry.name, exit_.name))
        self.owners.append(owner)
        self.pending, self.entry = [], exit_

    def extend_last(self, nodes, exit_: fx.Node, *, block: bool = False) -> None:
        last = self.units[-1]
        last.nodes += [n.name for n in self.pending + nodes]
        last.exit = exit_.name
        last.kind = "block" if block else last.kind
        self.pending, self.entry = [], exit_

    def same_block(self, owner: str | None) -> bool:
        """A later part of the block module the last unit lies in (its 1x1 conv, SE, act)."""
        last = self.owners[-1] if self.owners else None
        return (
            owner is not None
            and last is not None
            and (owner == last or owner.startswith(last + "."))
            and self.units[-1].kind != "pool"
        )

    def add_segment(self, s: int, levels) -> None:
        gm, nodes, exit_ = self.gm, self.segments.nodes(s), self.segments.chain[s]
        strided_here = any(n in self.strided for n in nodes)
        owner = self.blocks.owner(nodes)
        block = self.segments.is_block(nodes)
        standalone_pool = is_pool(gm, exit_) and strided_here and not block
        # a second downsampling after the one the last unit holds starts a unit of its own: the
        # two become sequential transitions (a stem of two strided convs)
        sequential = strided_here and bool(self.units) and self._strided(self.units[-1])
        if not standalone_pool and not sequential and self.same_block(owner):
            self.extend_last(nodes, exit_, block=block or width_defining(gm, exit_))
            self.units[-1].residual |= block and is_residual(nodes, levels)
        elif block:
            self.new_unit("block", nodes, exit_, owner)
            self.units[-1].residual = is_residual(nodes, levels)
        elif standalone_pool:
            self.new_unit("pool", nodes, exit_, None)
        elif strided_here or _has_weights(gm, exit_):
            self.new_unit("layer", nodes, exit_, owner)
        elif not all(is_pointwise(gm, n) for n in nodes if n in self.segments.dataflow):
            # a pad, a slice, a dense pool: preparing the next layer's input, they open its unit
            self.pending += nodes
        elif self.units and not self.pending and self._attaches_backward(self.units[-1]):
            self.extend_last(nodes, exit_)
        else:
            self.pending += nodes  # attaches forward: the next unit's entry stays where it is

    def _strided(self, unit: Unit) -> bool:
        return any(name in self.strided_names for name in unit.nodes)

    def _attaches_backward(self, previous: Unit) -> bool:
        """Norms/activations after a layer or pool close it (conv-norm-act); after a residual
        block they close it in post-activation nets and open the next one in pre-activation nets."""
        return previous.kind in ("layer", "pool") or not self.preact


def _has_weights(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A layer with parameters that is not a norm/activation: it opens a unit of its own."""
    m = module_of(gm, n)
    return m is not None and not is_pointwise(gm, n) and next(m.parameters(), None) is not None


def build_units(gm, probe: Probe, segments: Segments, levels, strided) -> tuple[list[Unit], bool]:
    """The body's units and the head (last), each measured; and whether the net is pre-activation."""
    preact = is_preact(gm, segments, levels)
    builder = _Builder(gm, segments, strided, preact, BlockModules(gm, segments, levels))
    for s in range(1, segments.head_start):
        builder.add_segment(s, levels)
    units = builder.units
    # head: forward-attached norm/act before the pooling, then everything after
    head_nodes = list(builder.pending)
    for s in range(segments.head_start, len(segments.chain)):
        head_nodes += segments.nodes(s)
    head = Unit(
        len(units), "head", [n.name for n in head_nodes], builder.entry.name, probe.result.name
    )
    units = _move_fc_classifier(gm, units, head, probe.num_classes)
    units.append(head)
    if len(units) < 2:
        _refuse_parallel_paths(gm, segments.chain[1])
        raise NoDownsamplingError(
            "the model has no convolutional body before its head (the first node, "
            f"{describe(gm, segments.chain[1])}, already leaves feature-map form)"
        )
    named = by_name(gm)
    for i, u in enumerate(units):
        u.index = i
        _measure(gm, named, u, levels, strided)
    return units, preact


def _refuse_parallel_paths(gm: fx.GraphModule, first: fx.Node) -> None:
    """A model whose first node on every input-to-output path joins several values: its body is
    one of parallel paths from the image (a head that also reads the image, models side by side)."""
    if sum(carries_tensor(a) for a in first.all_input_nodes) > 1:
        raise UnsupportedTopologyError(
            f"{describe(gm, first)} joins several paths from the input image after they leave "
            "feature-map form (a head that also reads the image, or nets run side by side); "
            "reverso converts one convolutional body followed by its head: convert the CNN "
            "branch on its own"
        )


def _move_fc_classifier(gm, units: list[Unit], head: Unit, num_classes: int) -> list[Unit]:
    """A trailing layer unit that holds the classifier (a 1x1 conv to the classes, by
    :func:`~reverso.rewrite.classifier.classifier_node`) belongs to the head."""
    named = by_name(gm)
    while units and units[-1].kind == "layer":
        unit = units[-1]
        if classifier_node(gm, [named[n] for n in unit.nodes], num_classes) is None:
            break
        units.pop()
        head.nodes = unit.nodes + head.nodes
        head.entry = unit.entry
    return units


def _measure(gm: fx.GraphModule, named, u: Unit, levels, strided) -> None:
    """Levels, widths, size, strided nodes and parameters of a unit; refuses units that
    upsample, downsample twice in sequence, or downsample inside reshaped tensors."""
    nodes, entry, exit_ = [named[n] for n in u.nodes], named[u.entry], named[u.exit]
    u.in_level, u.in_width = levels.get(entry, 0), channels(entry) or 0
    if u.kind == "head":
        u.out_level, u.out_width = u.in_level, int(exit_.meta["val"].shape[-1])
    else:
        u.out_level, u.out_width, u.out_size = levels[exit_], channels(exit_), spatial(exit_)
    u.strided = {n.name: strided[n] for n in nodes if n in strided}
    u.params = _params_of(gm, nodes)
    u.grows = u.kind != "head" and _grows(gm, set(nodes), entry, exit_)
    if u.kind == "head":
        return
    if u.is_transition and not u.strided:
        raise UnsupportedTopologyError(
            f"unit {u.nodes[0]} .. {u.exit} downsamples (x{u.factor}) inside reshaped tensors "
            "(a patch merging on tokens, or a space-to-depth written as view/permute/view) rather "
            "than with a strided conv, pooling, strided slices or pixel_unshuffle; reverso cannot "
            "mirror that downsampling. Write it as strided slices x[..., 0::2, 0::2, :] and "
            "torch.cat, or as F.pixel_unshuffle"
        )
    _check_single_transition(gm, u, nodes, strided)
    if u.out_level < u.in_level:
        raise UnsupportedTopologyError(f"unit ending at '{u.exit}' upsamples; cannot reverse it")


def _grows(gm: fx.GraphModule, nodes: set[fx.Node], entry: fx.Node, exit_: fx.Node) -> bool:
    """Whether the unit's output concatenates its input along channels (a dense block), so that
    its output width follows its input width: walking back from the exit through layers that do
    not set a width, a channel concatenation reads the entry."""
    stack, seen = [exit_], set()
    while stack:
        n = stack.pop()
        if n in seen or n not in nodes or width_defining(gm, n):
            continue
        seen.add(n)
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0) if is_cat(n) else None
        if dim in (1, -3) and entry in n.all_input_nodes:
            return True
        stack.extend(a for a in n.all_input_nodes if is_feature_map(a))
    return False


def _check_single_transition(gm, u: Unit, nodes: list[fx.Node], strided) -> None:
    marked = [n for n in nodes if n in strided]
    for a in marked:
        later = descendants_within(a.users, set(nodes))
        for b in marked:
            if b in later:
                raise UnsupportedTopologyError(
                    f"unit ending at '{u.exit}' downsamples twice in sequence (at "
                    f"{describe(gm, a)} and then {describe(gm, b)}); reverso mirrors one "
                    "transition per unit. Mark the block as a leaf (leaf_modules=) only if it "
                    "is a single layer."
                )


def _params_of(gm: fx.GraphModule, nodes: list[fx.Node]) -> int:
    """Parameters of the unit's layers and parameter attributes, each counted once."""
    tensors = {}
    for n in nodes:
        if n.op == "call_module":
            tensors.update((id(p), p) for p in gm.get_submodule(n.target).parameters())
        elif n.op == "get_attr":
            value = gm.get_parameter(n.target) if _is_parameter(gm, n.target) else None
            if value is not None:
                tensors[id(value)] = value
    return sum(p.numel() for p in tensors.values())


def _is_parameter(gm: fx.GraphModule, target: str) -> bool:
    try:
        return isinstance(gm.get_parameter(target), torch.nn.Parameter)
    except AttributeError:
        return False
