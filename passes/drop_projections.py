"""drop_projections: drop shortcut projections the top-down net no longer needs
(docs/methods/topdown.md, section 3, step 3).

A residual unit that downsampled or changed its width needed a 1x1 projection on its shortcut.
In the top-down net the unit runs at stride 1; when it also keeps its width, the projection
is dropped and the shortcut reads the block's input again (ResNet-32: "5 blocks at 64").
"""

from __future__ import annotations

import torch.fx as fx

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.rewrite.unit_views import unit_view


class DropProjections(Pass):
    name = "drop_projections"
    after = ("downsample_to_upsample",)

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        dropped = [self.drop_needless_projection(gm, ctx, u) for u in ctx.plan.body_order()]
        gm.delete_all_unused_submodules()
        return PassResult(gm, any(dropped))

    def drop_needless_projection(self, gm: fx.GraphModule, ctx, index: int) -> bool:
        """Drop a 1x1 shortcut projection the bottom-up unit needed but the top-down one does not."""
        unit = ctx.report.units[index]
        if not unit.residual or not (unit.strided or unit.in_width != unit.out_width):
            return False
        view = unit_view(gm, index)
        inside = view.node_set
        for join in [n for n in view.nodes if ir.is_add(n)]:
            for branch in join.all_input_nodes:
                chain = _projection_chain(gm, branch, inside)
                convs = [c for c in chain if ir.is_conv(gm, c)]
                others = [a for a in join.all_input_nodes if a is not branch]
                if len(convs) != 1 or not any(
                    _has_spatial_conv_before(gm, o, inside) for o in others
                ):
                    continue
                conv = gm.get_submodule(convs[0].target)
                if conv.in_channels != conv.out_channels or ir.stride_of(gm, convs[0]) != 1:
                    continue
                if not _fits(view.entry, branch, chain):
                    continue  # the block's input is not what the join adds (a DLA tree's)
                start = chain[-1].all_input_nodes[0]
                for c in chain:  # the chain runs from the join backwards
                    if ir.role_of(c) is ir.Role.UPSAMPLE:
                        continue
                    c.replace_all_uses_with(c.args[0])
                    gm.graph.erase_node(c)
                # the identity shortcut reads the block's input, not its pre-activation
                first = next(u for u in start.users if u in inside and u in [*chain, join])
                first.replace_input_with(start, view.entry)
                return True
        return False


def _fits(entry: fx.Node, branch: fx.Node, chain: list[fx.Node]) -> bool:
    """Whether the block's input, upsampled where the chain upsamples, has the shape the
    projection gave the join (shapes are those the repair after the last pass left)."""
    upsampled = any(ir.role_of(c) is ir.Role.UPSAMPLE for c in chain)
    return ir.channels(entry) == ir.channels(branch) and (
        upsampled or ir.spatial(entry) == ir.spatial(branch)
    )


def _has_spatial_conv_before(gm, node: fx.Node, inside: set[fx.Node]) -> bool:
    convs = {n for n in inside if ir.is_spatial_conv(gm, n)}
    return node in convs or ir.has_ancestor_in(node, convs, inside)


def _projection_chain(gm: fx.GraphModule, node: fx.Node, inside: set[fx.Node]) -> list[fx.Node]:
    """Walk back from a join input through single-user 1x1 convs, norms, identities and upsamplings."""
    chain = []
    while node in inside and len(node.users) == 1:
        if not (
            (ir.is_conv(gm, node) and ir.conv_kernel(gm, node) == 1)
            or ir.is_norm(gm, node)
            or ir.is_identity(gm, node)
            or ir.role_of(node) is ir.Role.UPSAMPLE
        ):
            break
        chain.append(node)
        node = node.args[0]
    return chain
