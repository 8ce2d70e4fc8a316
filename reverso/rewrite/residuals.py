"""Residual units read off the graph: additions ``s + F(s)`` and ``P(s) + F(s)``.

Used by the ``reversible`` and ``steerable`` passes. A unit is an addition of two maps of one shape
whose inputs are computed from one NCHW map ``s`` alone: ``s`` itself (an identity shortcut, also
through ``nn.Identity`` modules) or a short projection
``P(s)`` (a transition's strided 1x1 conv, or pool and conv). Every node between ``s`` and the
addition is used only inside the unit, so the unit can be lifted out whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from reverso import ir
from reverso.ir.shapes import channels, spatial
from reverso.rewrite.widths import REGISTRY, width_defining


@dataclass
class ResidualUnit:
    add: fx.Node  # s + F(s), or P(s) + F(s)
    shortcut: fx.Node  # s
    branch: list[fx.Node]  # the nodes computing F(s), in graph order
    projection: list[fx.Node] = field(default_factory=list)  # P's nodes; [] for an identity
    passthrough: list[fx.Node] = field(default_factory=list)  # nn.Identity calls on s's way

    @property
    def stride(self) -> int:
        """The unit's downsampling factor (1 for identity units)."""
        before, after = spatial(self.shortcut), spatial(self.add)
        return round(before[0] / after[0]) if before and after else 1

    @property
    def nodes(self) -> list[fx.Node]:
        return [*self.passthrough, *self.projection, *self.branch, self.add]


def residual_units(gm: fx.GraphModule) -> list[ResidualUnit]:
    """Every residual unit of ``gm`` in graph order; units nested in another's branch left out."""
    order = graph_order(gm)
    units = []
    for add in gm.graph.nodes:
        pair = _maps_added(add)
        if pair is None:
            continue
        unit = _identity_unit(gm, add, *pair, order) or _projection_unit(gm, add, *pair, order)
        if unit is not None:
            units.append(unit)
    nested = {n for u in units for n in (*u.branch, *u.projection)}
    return [u for u in units if u.add not in nested]


def runs(units: list[ResidualUnit], *, transitions: bool) -> list[list[ResidualUnit]]:
    """Maximal chains of units (of even width; projection units that halve the size only with
    ``transitions``), each reading the previous one's addition, which nothing else reads."""
    chains: list[list[ResidualUnit]] = []
    for u in units:
        if channels(u.shortcut) % 2 or (u.projection and not (transitions and u.stride == 2)):
            continue
        last = chains[-1][-1] if chains else None
        if last is not None and u.shortcut is last.add and set(last.add.users) <= set(u.nodes):
            chains[-1].append(u)
        else:
            chains.append([u])
    return chains


def _maps_added(add: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    if not ir.is_add(add) or len(add.args) < 2:
        return None
    a, b = add.args[:2]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return None
    va, vb = a.meta.get("val"), b.meta.get("val")
    if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)):
        return None
    return (a, b) if va.shape == vb.shape and va.dim() == 4 else None


def _identity_unit(gm, add, a, b, order) -> ResidualUnit | None:
    for s, r in ((a, b), (b, a)):
        s, passthrough = _through_identities(gm, s)
        branch = _computed_from(s, r, add)
        if branch is not None and _is_unit_branch(gm, branch, order):
            return ResidualUnit(add, s, sorted(branch, key=order), passthrough=passthrough)
    return None


def _through_identities(gm, node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """The value ``node`` passes on unchanged through calls of ``nn.Identity`` that nothing else
    reads (a shortcut written ``self.shortcut = nn.Identity()``, as timm's blocks do), and those
    calls, outermost last."""
    passed = []
    while ir.is_identity(gm, node) and len(node.users) == 1 and len(node.all_input_nodes) == 1:
        passed.insert(0, node)
        node = node.all_input_nodes[0]
    return node, passed


def _projection_unit(gm, add, a, b, order) -> ResidualUnit | None:
    """``P(s) + F(s)``: both sides computed from one ``s``; F is the side with more layers."""
    sources = [_single_source(a, add), _single_source(b, add)]
    if sources[0] is None or sources[1] is None or sources[0][0] is not sources[1][0]:
        return None
    (s, side_a), (_, side_b) = sources
    if side_a & side_b:
        return None
    residual, projection = sorted((side_a, side_b), key=lambda side: -len(side))
    if not _is_unit_branch(gm, residual, order):
        return None
    # a pre-activation (or a trunk activation) both sides share belongs to the unit
    while (
        (ir.is_norm(gm, s) or ir.is_activation(gm, s))
        and len(s.all_input_nodes) == 1
        and set(s.all_input_nodes[0].users) == {s}
    ):
        residual.add(s)
        s = s.all_input_nodes[0]
    return ResidualUnit(add, s, sorted(residual, key=order), sorted(projection, key=order))


def _computed_from(s: fx.Node, r: fx.Node, add: fx.Node) -> set[fx.Node] | None:
    """The nodes computing ``r`` from ``s`` alone and used only there (or by ``add``), or None."""
    inside: set[fx.Node] = set()
    stack = [r]
    while stack:
        n = stack.pop()
        if n is s or n in inside or n.op == "get_attr":
            continue
        if n.op in ("placeholder", "output"):
            return None  # reads something besides s
        inside.add(n)
        stack.extend(n.all_input_nodes)
    if s in inside or any(u not in inside and u is not add for n in inside for u in n.users):
        return None
    return inside


def _single_source(x: fx.Node, add: fx.Node) -> tuple[fx.Node, set[fx.Node]] | None:
    """(s, the nodes from s to x) when the nodes used only on the way to ``x`` read one map s."""
    inside: set[fx.Node] = set()
    frontier = [x]
    while frontier:
        n = frontier.pop()
        if n in inside or n.op in ("get_attr", "placeholder"):
            continue
        if all(u in inside or u is add for u in n.users):
            inside.add(n)
            frontier.extend(n.all_input_nodes)
    entries = {
        a for n in inside for a in n.all_input_nodes if a not in inside and a.op != "get_attr"
    }
    if len(entries) != 1:
        return None
    (s,) = entries
    return (s, inside) if inside else None


def _is_unit_branch(gm: fx.GraphModule, nodes, order) -> bool:
    """The branch holds a layer that sets its width, and it works on NCHW maps: its first layer
    with a width rule reads channels at dim 1 (a conv, a BatchNorm), not last (a LayerNorm or
    Linear layer: the unit adds channels-last values, 4D too, as MambaOut's and VOLO's do)."""
    layers = [n for n in sorted(nodes, key=order) if n.op == "call_module"]
    first = next((r for n in layers if (r := REGISTRY.lookup(gm.get_submodule(n.target)))), None)
    if first is not None and first.channel_dim != 1:
        return False
    return any(width_defining(gm, n) for n in layers)


def graph_order(gm: fx.GraphModule):
    """A sort key: each node's position in ``gm``'s graph."""
    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    return position.__getitem__
