"""reverse_stages: run the bottom-up groups in reverse order (docs/methods/topdown.md,
section 3, steps 1-2).

The stem stays first, the groups follow from the last to the first, and every transition of the
bottom-up net keeps its ordinal position (the transitions themselves still downsample here;
``downsample_to_upsample`` turns them around). In residual nets the stem's output width becomes
the width of the first top-down group. Width repair, which the pipeline runs after this pass,
re-instantiates layers that now receive another width and gives identity shortcuts whose two
sides disagree a projection.

With ``arrangement="rev"`` the groups keep their order and this pass changes nothing.
"""

from __future__ import annotations

import torch.fx as fx

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import WidthError
from reverso.ir.shapes import channels
from reverso.rewrite.layers import LayerFactory
from reverso.rewrite.unit_views import append_to_unit, module_prefix, reorder_units, unit_view
from reverso.rewrite.widths import width_defining


class ReverseStages(Pass):
    name = "reverse_stages"
    before = ("downsample_to_upsample",)  # moves whole units; the pyramid is no unit's
    changes_widths = True

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        plan = ctx.plan
        if plan.arrangement == "rev":
            return PassResult(gm, False)
        gm = reorder_units(gm, plan.body_order(), plan.head)
        self.widen_stem(gm, ctx)
        return PassResult(gm, True)

    def widen_stem(self, gm: fx.GraphModule, ctx) -> None:
        """The stem's last conv outputs the width of the first top-down group."""
        plan = ctx.plan
        first_group = next((s for s in plan.slots if s.kind == "group"), None)
        if not plan.stem or first_group is None:
            return
        unit = first_group.units[0]
        width = ctx.opening_width(unit, channels(unit_view(gm, unit).exit))
        stem = set(plan.stem)
        last = None
        for n in gm.graph.nodes:
            if ir.unit_of(n) in stem and width_defining(gm, n):
                last = n
        if last is None:
            return
        inside = {n for n in gm.graph.nodes if ir.unit_of(n) in stem}
        module = gm.get_submodule(last.target)
        rule = ctx.registry.lookup(module)
        if rule.out_width(module) == width:
            return
        # the stem's last layer feeds a residual sum (a transformer block before the first
        # map): it is tied to its shortcut, so a 1x1 projection after the stem gives the width
        if not any(ir.is_add(n) for n in ir.descendants_within(list(last.users), inside)):
            try:
                new = ctx.registry.rebuild(module, rule.in_width(module), width, where=last.target)
                ir.set_module(gm, last.target, new)
                return
            except WidthError:  # a grouped conv that cannot take that width: project after it
                pass
        view = unit_view(gm, plan.stem[-1])
        factory = LayerFactory(ctx.prototypes, ctx.report.preact, ctx.registry)
        projection = factory.projection(channels(view.exit), width)
        node = append_to_unit(
            gm, view, f"{module_prefix(view.nodes)}.widen", projection, (view.exit,)
        )
        ir.mark(node, ir.Role.PROJECTION)

    def ensures(self, gm, ctx) -> None:
        # sizes (``x.shape``) sit where they are first computed; the units' data runs in order
        order = [
            ir.unit_of(n)
            for n in gm.graph.nodes
            if ir.unit_of(n) is not None and ("val" not in n.meta or ir.carries_tensor(n))
        ]
        seen = []
        for u in order:
            if not seen or seen[-1] != u:
                seen.append(u)
        expected = [*ctx.plan.body_order(), *ctx.plan.head]
        if seen != expected:
            raise AssertionError(f"units run in order {seen}, expected {expected}")
