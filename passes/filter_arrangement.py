"""filter_arrangement: choose the channel widths (and kernels) of the top-down net.

Runs first, on the bottom-up graph, so that every later pass sees the final widths (width
repair, which the pipeline runs after this pass, re-widths the layers that read them):

* ``td``: nothing to do; every group keeps its own bottom-up widths.
* ``uni``: every conv of the body outputs one width (the median of the body's conv widths, or
  the int given as ``arrangement=``); squeeze-excite gates follow the width they multiply.
* ``rev``: the groups will keep their bottom-up order, so the spatial conv that opens each group
  takes the kernel size of the conv that opens the bottom-up group at the level it will run at.
"""

from __future__ import annotations

import torch.fx as fx

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.rewrite.convs import conv_with_kernel
from reverso.rewrite.widths import width_defining


class FilterArrangement(Pass):
    name = "filter_arrangement"
    before = ("reverse_stages", "stride_one", "downsample_to_upsample")  # on the bottom-up graph
    changes_widths = True

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        arrangement = ctx.plan.arrangement
        if arrangement == "uni":
            self.uniform(gm, ctx, ctx.plan.uni_width)
        elif arrangement == "rev":
            self.group_kernels(gm, ctx)
        else:
            return PassResult(gm, False)
        return PassResult(gm, True)

    def uniform(self, gm: fx.GraphModule, ctx, width: int) -> None:
        body = set(ctx.report.body)
        for n in list(gm.graph.nodes):
            if ir.unit_of(n) not in body or not ir.is_conv(gm, n) or not width_defining(gm, n):
                continue
            if ir.is_global(n) and not _gates_feature_map(gm, n):
                continue  # e.g. the reduction conv of a squeeze-excite block keeps its width
            module = gm.get_submodule(n.target)
            rule = ctx.registry.lookup(module)
            ir.set_module(
                gm,
                n.target,
                ctx.registry.rebuild(module, rule.in_width(module), width, where=n.target),
            )

    def group_kernels(self, gm: fx.GraphModule, ctx) -> None:
        for group in ctx.report.groups:
            kernel = ctx.plan.group_kernels.get(group.index)
            units = set(group.units)
            opening = next(
                (n for n in gm.graph.nodes if ir.unit_of(n) in units and ir.is_spatial_conv(gm, n)),
                None,
            )
            if kernel is None or opening is None or ir.conv_kernel(gm, opening) == kernel:
                continue
            ir.set_module(
                gm, opening.target, conv_with_kernel(gm.get_submodule(opening.target), kernel)
            )

    def ensures(self, gm, ctx) -> None:
        if ctx.plan.arrangement != "uni":
            return
        width = ctx.plan.uni_width
        body = set(ctx.report.body)
        for n in gm.graph.nodes:
            if ir.unit_of(n) not in body or not ir.is_conv(gm, n) or ir.is_global(n):
                continue
            if width_defining(gm, n):  # depthwise convs follow their input (after the repair)
                out = gm.get_submodule(n.target).out_channels
                if out != width:
                    raise AssertionError(
                        f"uni arrangement left conv '{n.target}' at width {out} instead of {width}"
                    )


def _gates_feature_map(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a global conv's output (through activations) multiplies or adds to a feature map."""
    stack, seen = list(node.users), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if ir.is_join(n):
            return any(not ir.is_global(a) for a in n.all_input_nodes if a is not node)
        if ir.is_activation(gm, n) or ir.is_pointwise(gm, n):
            stack.extend(n.users)
    return False
