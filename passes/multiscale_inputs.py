"""multiscale_inputs: after every upsampling, merge in the image at that finer level
(docs/methods/topdown.md, section 4).

For each up-transition at level l a *lateral* reads pyramid level l: a fresh copy of the conv
that opens level l in the bottom-up net (its kernel size; in_channels = image channels; out
width C_r), followed by that conv's norm and activation in post-activation nets (bare in
pre-activation nets). C_r is the width of what the merge feeds: the next group's width after a
standalone transition, the up-unit's own width at the end of an up-unit (the group's first unit
with a width-defining layer: a parameter-free opening such as a patch merging's strided slices
is merged after the layer that narrows it).

With ``merge_width="inner"`` the fuse conv of a "concat"/"add_concat" merge works at the
narrowest width of the unit it closes (a bottleneck's inner width: 2C -> C/4 by 3x3, then a
1x1 conv block back to C) instead of 2C -> C: the bottleneck nets' merges shrink about fourfold.

The merge (``merge=``: "add", "concat" or "add_concat") replaces a standalone upsampling (it
projects the coarse path with a 1x1 conv block at the low resolution when widths differ, then
upsamples to the lateral's exact size) or follows the last node of an up-unit. A Dropout that
followed a bottom-up pooling follows the merge.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import UnsupportedTopologyError
from reverso.ir.shapes import ShapeProp, channels
from reverso.nn import Merge
from reverso.rewrite.layers import LayerFactory
from reverso.rewrite.repair import propagate_as_repaired
from reverso.rewrite.unit_views import append_to_unit, module_prefix, unit_view
from reverso.rewrite.widths import width_defining


class MultiscaleInputs(Pass):
    name = "multiscale_inputs"
    after = ("downsample_to_upsample",)
    changes_widths = True  # what follows a merge receives its width C_r

    def requires(self, gm, ctx) -> None:
        if not ir.pyramid_levels(gm):
            raise UnsupportedTopologyError(
                "multiscale_inputs needs the image pyramid that downsample_to_upsample inserts; run it first"
            )

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        plan = ctx.plan
        factory = LayerFactory(ctx.prototypes, ctx.report.preact, ctx.registry)
        levels = ir.pyramid_levels(gm)
        image_channels = ctx.input_size[0]
        for index, slot in plan.up_slots:
            image = levels[slot.level]
            if slot.kind == "transition":
                (up,) = ir.nodes_with_role(gm, ir.Role.UPSAMPLE, transition=index)
                low = up.args[0]
                c_low, c_r = channels(low), self.next_width(gm, ctx, index, channels(low))
                feeds = plan.slots[index + 1].units if index + 1 < len(plan.slots) else []
                merge = self.merge(
                    ctx,
                    factory,
                    slot.level,
                    image_channels,
                    c_low,
                    c_r,
                    gm.get_submodule(up.target),
                    inner=_inner_width(gm, feeds[0], c_r) if feeds else c_r,
                )
                node = ir.add_module_node(
                    gm, f"merge{index}", merge, (low, image), before=up, meta_from=up
                )
                up.replace_all_uses_with(node)
                gm.graph.erase_node(up)
            else:
                unit = self.merge_unit(gm, slot)
                view = unit_view(gm, unit)
                width = channels(view.exit)
                merge = self.merge(
                    ctx,
                    factory,
                    slot.level,
                    image_channels,
                    width,
                    width,
                    None,
                    inner=_inner_width(gm, unit, width),
                )
                name = f"{module_prefix(view.nodes)}.merge"
                node = append_to_unit(gm, view, name, merge, (view.exit, image))
            ir.mark(node, ir.Role.MERGE, transition=index)
            node.meta["val"] = ShapeProp.meta_module(merge)(
                node.args[0].meta["val"], image.meta["val"]
            )
            if slot.kind == "transition" and c_r != c_low:
                # what follows the merge now receives C_r channels: later merges read the widths
                # it will have after width repair (which the pipeline runs after this pass)
                propagate_as_repaired(gm, ctx)
        gm.delete_all_unused_submodules()
        return PassResult(gm, True)

    def merge_unit(self, gm: fx.GraphModule, slot) -> int:
        """The up-slot's unit the merge follows: its first unit with a layer that sets a width,
        so that parameter-free openings (the strided slices and norm of a patch merging, a
        space-to-depth) are not merged at their widened output."""
        for unit in slot.units:
            if any(width_defining(gm, n) for n in unit_view(gm, unit).nodes):
                return unit
        return slot.units[0]

    def next_width(self, gm: fx.GraphModule, ctx, index: int, default: int) -> int:
        """Width of the group a standalone merge feeds (the width its first unit opens with)."""
        slots = ctx.plan.slots
        if index + 1 < len(slots) and slots[index + 1].kind == "group":
            unit = slots[index + 1].units[0]
            return ctx.opening_width(unit, channels(unit_view(gm, unit).exit))
        return default

    def merge(
        self,
        ctx,
        factory: LayerFactory,
        level: int,
        cin: int,
        c_low: int,
        c_r: int,
        upsample,
        *,
        inner: int,
    ) -> Merge:
        spec = ctx.plan.laterals[level]
        conv = factory.conv(cin, c_r, max(spec.conv.kernel_size), like=spec.conv)
        followers = [
            ctx.registry.rebuild(m, c_r) if ctx.registry.lookup(m) is not None else _copy(m)
            for m in spec.followers
        ]
        lateral = nn.Sequential(conv, *followers)
        project = factory.conv_block(c_low, c_r, 1) if c_low != c_r else None
        variant = ctx.options.merge
        fuse = factory.conv_block(2 * c_r, c_r, 3) if variant != "add" else None
        if fuse is not None and ctx.options.merge_width == "inner" and inner < c_r:
            # fuse at the bottleneck width of the unit, then project back (merge_width="inner")
            fuse = nn.Sequential(
                factory.conv_block(2 * c_r, inner, 3), factory.conv_block(inner, c_r, 1)
            )
        return Merge(variant, lateral, project=project, upsample=upsample, fuse=fuse)

    def ensures(self, gm, ctx) -> None:
        merges = [n for n in gm.graph.nodes if ir.role_of(n) is ir.Role.MERGE]
        if len(merges) != len(ctx.plan.up_slots):
            raise AssertionError(
                f"{len(merges)} merges for {len(ctx.plan.up_slots)} up-transitions"
            )


def _inner_width(gm: fx.GraphModule, unit: int, width: int) -> int:
    """The narrowest output of the unit's width-defining layers (a bottleneck's inner width)."""
    widths = [
        channels(n) for n in unit_view(gm, unit).nodes if width_defining(gm, n) and ir.is_map(n)
    ]
    return min([width, *widths])


def _copy(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m)
