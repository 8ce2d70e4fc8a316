"""Width repair: make every layer agree with the width it now receives.

After a pass moves units or changes a layer's output width, the graph is walked in order on
meta tensors. A layer whose input width no longer matches is re-instantiated through the width
registry (fresh weights, same type and configuration). An elementwise join whose two inputs now
disagree (an identity shortcut next to a main path of another width) gets a 1x1 projection on
its shortcut, in the model's own style (conv-norm, or a bare conv of the pre-activation in
pre-activation nets). A unit whose layers cannot change width (attention written with
functions over its own full weights, as torchvision's Swin does; a residual block on
channels-last values) keeps its width: an entry projection maps what it now receives to what it
read bottom-up. Anything else that breaks is
reported with the node and the remedy.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.errors import UnsupportedTopologyError, WidthError
from reverso.ir.dataflow import inputs, reachable
from reverso.ir.modes import evaluating
from reverso.ir.shapes import ShapeProp, channels, mark_shapes_current
from reverso.rewrite.fitting import WidthFitting
from reverso.rewrite.layers import LayerFactory
from reverso.rewrite.rigid import KeepWidth, refuse_unknown_layer, rigid_units
from reverso.rewrite.unit_views import module_prefix


def repair_widths(gm: fx.GraphModule, ctx) -> bool:
    """Re-widths layers and shortcuts in place; returns whether anything changed."""
    changed = _walk(gm, ctx)
    if changed:
        gm.graph.lint()
        gm.recompile()
    mark_shapes_current(gm)  # every node's shape is now up to date
    return changed


def propagate_as_repaired(gm: fx.GraphModule, ctx) -> None:
    """Fill every node's shape with the one it will have once width repair has run, changing
    nothing else: for a pass that reads widths downstream of its own earlier edits (the
    pipeline runs the repair itself, after the pass, as a step of its own). The read-only mode
    of the repair: the same walk, on a copy of ``gm`` whose tensors are on the meta device."""
    shadow = _meta_copy(gm)
    _walk(shadow, ctx)
    repaired = {n.name: n.meta.get("val") for n in shadow.graph.nodes}
    for n in gm.graph.nodes:
        if n.name in repaired:
            n.meta["val"] = repaired[n.name]


def _meta_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy of ``gm`` (same node names and tags) with meta tensors for its parameters
    and buffers: nothing is allocated or copied for the weights."""
    memo = {id(gm.meta): dict(gm.meta)}  # the source model and such: shared, not copied
    for t in [*gm.parameters(), *gm.buffers()]:
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(gm, memo)


def _walk(gm: fx.GraphModule, ctx) -> bool:
    """Run the repair over the graph; a unit found tied to its own width joins
    ``ctx.fixed_width`` and the walk starts again, now with that unit's entry projection."""
    changed = False
    while True:
        fixer = _Repair(gm, ctx)
        try:
            with evaluating(gm), torch.no_grad():
                fixer.run(ctx.example_input())
            return changed or fixer.changed
        except KeepWidth as retry:
            ctx.fixed_width.add(retry.unit)
            changed |= fixer.changed


class _Repair(WidthFitting):
    def __init__(self, gm: fx.GraphModule, ctx):
        super().__init__(gm, ctx.registry)
        self.ctx = ctx
        self.factory = LayerFactory(ctx.prototypes, ctx.report.preact, ctx.registry)
        self.reads_data: dict = {}  # which nodes read the input, shared by every join of the walk
        # units that keep their own width (entry projections): only with an analysis to read
        # their bottom-up widths from
        report = getattr(ctx, "report", None)
        self.rigid = rigid_units(gm, ctx.registry, ctx.leaf_modules) if report else {}
        self.rigid.update({u: None for u in ctx.fixed_width if report and u not in self.rigid})

    def run_node(self, n: fx.Node):
        """The shared walk's step (:class:`WidthFitting`), after the entry projection of a rigid
        unit and the projection of a join whose inputs now disagree."""
        if ir.unit_of(n) in self.rigid:
            self._adapt_entry(n)
        if ir.is_join(n) and self._mismatched(n):
            if any(isinstance(a, fx.Node) and self._constant_chain(a) for a in n.args[:2]):
                self._fit_constants(n)  # a per-channel gain or bias takes the map's width
                return ShapeProp.run_node(self, n)
            self._refuse_composite_constant(n)
            self._fit_join(n)
        self._check_reshape(n)
        return super().run_node(n)

    def _refuse_composite_constant(self, n: fx.Node) -> None:
        """A map meets a per-channel constant computed from several parameters (a concatenation
        of two gains): a projection would change what the layer computes, and reverso re-widths
        a constant made from one parameter only."""
        fixed = ir.fixed_inputs(n, self.reads_data)
        if fixed:
            upstream = reachable([fixed[0]], inputs, set(self.module.graph.nodes))
            sources = sorted({str(a.target) for a in upstream if a.op == "get_attr"})
            made_of = ", ".join(f"'{t}'" for t in sources) or "its parameters"
            raise WidthError(
                f"{ir.describe(self.module, n)} combines a feature map of "
                f"{self.env[n.args[0]].shape[1]} channels with '{fixed[0].name}', a per-channel "
                f"constant the model computes from {made_of}, which reverso cannot re-width. "
                "Keep its width with arrangement='rev', or make the constant one parameter"
            )

    def _check_reshape(self, n: fx.Node) -> None:
        """A view/reshape whose sizes (read from other values' shapes, as attention reads its
        head width from ``x.shape[-1]``) no longer fit its input after a width change: the layers
        between are tied to each other's widths in a way reverso does not re-width."""
        if not (n.op == "call_method" and n.target in ("view", "reshape")) or len(n.args) < 2:
            return
        x = self.env.get(n.args[0]) if isinstance(n.args[0], fx.Node) else None
        sizes = self.map_nodes_to_values(n.args[1:], n)
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
            sizes = tuple(sizes[0])
        if not isinstance(x, torch.Tensor) or not all(isinstance(v, int) for v in sizes):
            return
        known = 1
        for v in sizes:
            known *= v if v != -1 else 1
        if known == 0 and x.numel() > 0:  # a size read as H // k came out 0: not a width
            raise UnsupportedTopologyError(
                f"{ir.describe(self.module, n)} reshapes a value of shape {tuple(x.shape)} into "
                f"{tuple(sizes)}, sizes it computes from other values' shapes, which come out 0 "
                "once the top-down net runs its block at another resolution (a block that pools "
                "its queries and reshapes by the pooled size, as Hiera's): the block's "
                "downsampling cannot be mirrored"
            )
        fits = x.numel() % known == 0 if -1 in sizes else x.numel() == known
        if not fits:
            self._keep_width(n)
            raise WidthError(
                f"{ir.describe(self.module, n)} reshapes a value of shape {tuple(x.shape)} into "
                f"{tuple(sizes)}, sizes it reads from other values' shapes: after the width change "
                "the layers before it no longer agree with them (an attention whose qkv width is "
                "tied to its input's width, say), and reverso does not re-width such layers "
                "together. Convert with arrangement='rev', which keeps every width"
            )

    def _keep_width(self, n: fx.Node) -> None:
        """``n`` cannot take the width it now receives: its unit keeps its own width (the repair
        walks the graph again with that unit's entry projection), once per unit."""
        unit = ir.unit_of(n)
        if unit is not None and getattr(self.ctx, "report", None) and unit not in self.rigid:
            raise KeepWidth(unit)

    def _cannot_take(self, n: fx.Node) -> None:
        self._keep_width(n)

    def _adapt_entry(self, n: fx.Node) -> None:
        """A map entering a rigid unit with another width than the unit read bottom-up passes
        through a 1x1 projection first (one per unit, shared by all the unit's readers)."""
        if ir.role_of(n) is not None:
            return  # layers the passes added (projections, merges, upsamplings) fit themselves
        unit = ir.unit_of(n)
        want = self.ctx.report.units[unit].in_width
        for a in n.all_input_nodes:
            v = self.env.get(a)
            image = a.op == "placeholder" or ir.role_of(a) is ir.Role.PYRAMID
            if ir.unit_of(a) == unit or not isinstance(v, torch.Tensor):
                continue
            if image and not ir.carries_tensor(n):
                continue  # a unit reading the image's size: no projection for that
            dim = 1 if ir.is_map(a) and v.dim() == 4 else None
            if dim is None or v.dim() not in (3, 4) or v.shape[dim] == want:
                continue
            cin = int(v.shape[dim])
            if self.rigid[unit] is not None:
                refuse_unknown_layer(self.module, n, self.rigid[unit], cin, want)
            readers = [u for u in a.users if ir.unit_of(u) == unit]  # shape reads too
            name = f"{module_prefix([n])}.entry"
            current = self._project(a, cin, want, name, n, last=dim == -1)
            for r in readers:
                r.replace_input_with(a, current)

    # -- joins -------------------------------------------------------------------------------
    def _mismatched(self, n: fx.Node) -> bool:
        """Two feature maps of different widths (neither broadcasting) meet at a join."""
        va, vb = self.env[n.args[0]], self.env[n.args[1]]
        return (
            va.dim() == 4
            and vb.dim() == 4
            and va.shape[1] != vb.shape[1]
            and 1 not in (va.shape[1], vb.shape[1])
        )

    def _fit_join(self, n: fx.Node) -> None:
        a, b = n.args[0], n.args[1]
        shortcut, main = self._pick_shortcut(n, a, b)
        width = int(self.env[main].shape[1])
        source = self._projection_source(shortcut, n)
        cin = int(self.env[source].shape[1])
        nodes = ir.unit_members(self.module, ir.unit_of(n)) if ir.unit_of(n) is not None else [n]
        current = self._project(source, cin, width, f"{module_prefix(nodes)}.shortcut", n)
        n.replace_input_with(shortcut, current)

    def _project(self, source, cin: int, width: int, name: str, before, *, last: bool = False):
        """A 1x1 projection of ``source`` inserted before ``before``, one graph node per layer
        (so that later repairs can re-width each of them); a Linear layer for values with their
        channels last. Returns its output node."""
        current = source
        layers = [torch.nn.Linear(cin, width)] if last else self.factory.projection(cin, width)
        for i, layer in enumerate(layers):
            current = ir.add_module_node(
                self.module,
                name + (f"_{i}" if i else ""),
                layer,
                (current,),
                before=before,
                meta_from=before,
            )
            ir.mark(current, ir.Role.PROJECTION)
            self.env[current] = self.meta_module(layer)(self.env[current.args[0]])
            current.meta["val"] = self.env[current]
        self.changed = True
        return current

    def _pick_shortcut(self, n: fx.Node, a: fx.Node, b: fx.Node) -> tuple[fx.Node, fx.Node]:
        """The input to adapt: the one that lost the join's previous width, else the one without convs."""
        before = channels(n)  # shape from the last propagation, before this repair
        wa, wb = self.env[a].shape[1], self.env[b].shape[1]
        if before is not None and (wa == before) != (wb == before):
            return (b, a) if wa == before else (a, b)
        conv_a, conv_b = self._has_spatial_conv(a, n), self._has_spatial_conv(b, n)
        if conv_a != conv_b:
            return (b, a) if conv_a else (a, b)
        raise UnsupportedTopologyError(
            f"join {ir.describe(self.module, n)} now adds tensors of {wa} and {wb} channels and neither is a "
            "plain shortcut that a projection could adapt"
        )

    def _has_spatial_conv(self, node: fx.Node, join: fx.Node) -> bool:
        """Whether a spatial conv lies on the branch between the join's unit entry and ``node``."""
        unit = ir.unit_of(join)
        stack, seen = [node], set()
        while stack:
            x = stack.pop()
            if x in seen or ir.unit_of(x) != unit:
                continue
            seen.add(x)
            if ir.is_spatial_conv(self.module, x):
                return True
            stack.extend(x.all_input_nodes)
        return False

    def _projection_source(self, shortcut: fx.Node, join: fx.Node) -> fx.Node:
        """Pre-activation nets project the block's pre-activation (norm-act of its input)."""
        if not self.ctx.report.preact:
            return shortcut
        unit = ir.unit_of(join)
        current = None
        for user in shortcut.users:
            if ir.unit_of(user) == unit and ir.is_norm(self.module, user):
                current = user
                break
        while current is not None:
            nxt = [
                u
                for u in current.users
                if ir.unit_of(u) == unit and ir.is_activation(self.module, u)
            ]
            if not nxt:
                break
            current = nxt[0]
        return current if current is not None and self.env.get(current) is not None else shortcut
