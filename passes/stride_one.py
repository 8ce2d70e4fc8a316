"""stride_one: every downsampling inside a unit runs at stride 1 (spec section 3, step 3).

Strided convs (and conv-like layers such as timm's MixedConv2d) keep their weights and run at
stride 1 with size-preserving padding (:func:`reverso.rewrite.convs.at_stride_one`); strided
pools inside units become identities. Standalone transitions (a bare pool between groups) are
left to ``downsample_to_upsample``, which turns each into an upsampling at its position.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import UnsupportedTopologyError
from reverso.rewrite.convs import at_stride_one
from reverso.rewrite.units import UnitView, unit_view


class StrideOne(Pass):
    name = "stride_one"
    changes_widths = True  # a head that flattens the last map now reads another size

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        plan = ctx.plan
        standalone = {s.units[0] for s in plan.slots if s.kind == "transition"}
        changed = False
        for unit in plan.body_order():
            if unit not in standalone:
                changed |= self.stride_one(gm, unit_view(gm, unit))
        gm.delete_all_unused_submodules()
        return PassResult(gm, changed)

    def stride_one(self, gm: fx.GraphModule, view: UnitView) -> bool:
        """Run every strided op of the unit at stride 1; strided pools become identities."""
        strided = [n for n in view.nodes if ir.stride_tag(n)]
        for n in strided:
            module = ir.module_of(gm, n)
            unstrided = (
                at_stride_one(module) if module is not None and not ir.is_pool(gm, n) else None
            )
            if unstrided is not None:
                ir.set_module(gm, n.target, unstrided)
            elif ir.is_pool(gm, n):
                n.replace_all_uses_with(n.args[0])
                gm.graph.erase_node(n)
            elif n.op == "call_function" and n.target is F.conv2d:  # a functional (blur) conv
                _conv2d_at_stride_one(n)
            else:
                raise UnsupportedTopologyError(
                    f"node {ir.describe(gm, n)} downsamples by {ir.stride_tag(n)} with an op that reverso "
                    "cannot run at stride 1; supported are strided convs and max/avg pooling. Wrap it in a "
                    "module you can rewrite, or replace it before converting."
                )
        return bool(strided)


def _conv2d_at_stride_one(n: fx.Node) -> None:
    """``F.conv2d(x, w, b, stride, padding, ...)`` at stride 1, its padding kept (a blur pool
    pads its input first so that the blur keeps the size at stride 1)."""
    if "stride" in n.kwargs or len(n.args) < 4:
        n.kwargs = {**n.kwargs, "stride": 1}
    else:
        n.args = (*n.args[:3], 1, *n.args[4:])
