"""downsample_to_upsample: turn every downsampling into an upsampling (docs/methods/topdown.md,
section 3, step 3).

Runs after ``stride_one``, which left only the standalone transitions downsampling.

* The net now starts at the coarsest level: the image goes through an :class:`ImagePyramid`
  (blur before subsampling) and the first layer reads its coarsest level.
* A standalone transition (a pool) at a top-down position becomes an upsampling by its factor.
* The unit at a top-down position with an inside transition becomes an *up-unit*: an upsampling
  is inserted before its first spatial conv (interpolate, then convolve) on every path, and on
  paths without one (a 1x1 projection, an identity shortcut) right before they join.

Every upsampling targets the exact size of the pyramid level it lands on, so odd and non-square
inputs work. The model's very first downsampling (a strided stem conv) is not mirrored: the
top-down net ends at the level it produced, the resolution of the bottom-up net's first stage.
"""

from __future__ import annotations

import operator

import torch.fx as fx

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import PassError
from reverso.ir.shapes import tensor_shape
from reverso.nn import ImagePyramid, Upsample
from reverso.rewrite.unit_views import UnitView, append_to_unit, module_prefix, unit_view


class DownsampleToUpsample(Pass):
    name = "downsample_to_upsample"
    after = ("stride_one",)
    changes_widths = True  # a head that flattens the last map (LeNet-5's fc1) reads another size

    def requires(self, gm, ctx) -> None:
        if ir.nodes_with_role(gm, ir.Role.PYRAMID):
            raise PassError("the graph already has an image pyramid; run this pass once")

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        plan = ctx.plan
        levels = self.insert_pyramid(gm, ctx)
        for index, slot in enumerate(plan.slots):
            if slot.kind == "transition":
                self.standalone(gm, ctx, slot, index, levels)
            elif slot.up > 1:
                self.up_unit(gm, ctx, unit_view(gm, slot.units[0]), slot, index, levels[slot.level])
        gm.delete_all_unused_submodules()
        return PassResult(gm, True)

    # -- entry: the image pyramid ------------------------------------------------------------
    def insert_pyramid(self, gm: fx.GraphModule, ctx) -> dict[int, fx.Node]:
        plan = ctx.plan
        image = next(
            n for n in gm.graph.nodes if n.op == "placeholder" and tensor_shape(n) is not None
        )
        target = ir.unique_name(gm, "pyramid")
        gm.add_submodule(target, ImagePyramid(plan.pyramid_levels, ctx.options.pyramid))
        users = list(image.users)
        with gm.graph.inserting_after(image):
            pyramid = gm.graph.call_module(target, (image,))
        ir.mark(pyramid, ir.Role.PYRAMID)
        levels, anchor = {}, pyramid
        for i, level in enumerate(plan.pyramid_levels):
            with gm.graph.inserting_after(anchor):
                node = gm.graph.create_node(
                    "call_function", operator.getitem, (pyramid, i), name=f"level_{level}"
                )
            ir.mark(node, ir.Role.PYRAMID, level=level)
            levels[level] = anchor = node
        for user in users:
            user.replace_input_with(image, levels[plan.entry_level])
        return levels

    def standalone(
        self, gm: fx.GraphModule, ctx, slot, index: int, levels: dict[int, fx.Node]
    ) -> None:
        view = unit_view(gm, slot.units[0])
        pools = [n for n in view.nodes if ir.stride_tag(n)]
        if not pools:
            return
        pool = pools[0]
        # the rest of an anti-aliased pool (its dense pool, its ceil-mode padding) belongs to the
        # downsampling too: only the unit's pointwise layers (a Dropout) stay
        for n in view.nodes:
            if n is not pool and not ir.is_pointwise(gm, n) and _single_map_input(n):
                n.replace_all_uses_with(n.args[0])
                gm.graph.erase_node(n)
        if slot.up == 1:  # the model's very first op: the top-down net reads that level directly
            pool.replace_all_uses_with(pool.args[0])
            gm.graph.erase_node(pool)
            return
        up = self.add_upsample(
            gm, ctx, f"upsample{index}", pool.args[0], levels[slot.level], slot.up, pool, index
        )
        pool.replace_all_uses_with(up)
        gm.graph.erase_node(pool)

    def add_upsample(self, gm, ctx, name, source, like, factor, before, index) -> fx.Node:
        node = ir.add_module_node(
            gm,
            name,
            Upsample(ctx.options.upsample, factor),
            (source, like),
            before=before,
            meta_from=before,
        )
        ir.mark(node, ir.Role.UPSAMPLE, transition=index)
        return node

    # -- up-units ----------------------------------------------------------------------------
    def up_unit(
        self, gm: fx.GraphModule, ctx, view: UnitView, slot, index: int, like: fx.Node
    ) -> None:
        """Insert upsamplings so that everything from the unit's first spatial conv on runs fine."""
        fine = self.fine_region(gm, view)
        prefix = module_prefix(view.nodes)
        crossings = [
            (n, a)
            for n in gm.graph.nodes
            if n in fine
            for a in n.all_input_nodes
            if a not in fine and _is_feature_path(a)
        ]
        if view.exit not in fine or not crossings:
            # no spatial conv at all, or the fine part starts on reshaped values (the strided
            # slices of a channels-last patch merging): the unit runs coarse, its output is upsampled
            up = Upsample(ctx.options.upsample, slot.up)
            node = append_to_unit(gm, view, f"{prefix}.upsample", up, (view.exit, like))
            ir.mark(node, ir.Role.UPSAMPLE, transition=index)
            return
        ups: dict[fx.Node, fx.Node] = {}
        for n, a in crossings:
            if a not in ups:
                ups[a] = self.add_upsample(
                    gm, ctx, f"{prefix}.upsample", a, like, slot.up, n, index
                )
            n.replace_input_with(a, ups[a])

    def fine_region(self, gm: fx.GraphModule, view: UnitView) -> set[fx.Node]:
        """Nodes of the unit that run at the finer level: from the (formerly strided or first)
        spatial convs on, and from the users of formerly strided 1x1 convs on."""
        inside = view.node_set
        starts = []
        for n in view.nodes:
            if ir.stride_tag(n):
                starts += [n] if ir.is_spatial_conv(gm, n) else [u for u in n.users if u in inside]
        if not starts:
            # a strided conv that was no transition reduces inside its block (an attention's
            # keys and values) and runs where its block's input does
            convs = [
                n for n in view.nodes if ir.is_spatial_conv(gm, n) and ir.stride_of(gm, n) == 1
            ]
            starts = [c for c in convs if not ir.has_ancestor_in(c, set(convs) - {c}, inside)]
        if not starts and not any(ir.stride_tag(n) for n in view.nodes):
            return set(
                inside
            )  # no stride and no spatial conv (a block of Linear layers): all of it
        return ir.descendants_within(starts, inside)


def _is_feature_path(node: fx.Node) -> bool:
    """Spatial feature maps, which must be upsampled (global gates broadcast as they are).
    Nodes this pass just inserted (upsamplings) have no shape yet and are feature maps."""
    if node.op == "get_attr" or ir.is_global(node) or ir.is_reshaped(node):
        return False
    shape = tensor_shape(node)
    return len(shape) == 4 if shape is not None else "val" not in node.meta


def _single_map_input(n: fx.Node) -> bool:
    """A layer whose first argument is its only data input (a pool, a pad)."""
    data = [a for a in n.all_input_nodes if a.op != "get_attr"]
    return bool(n.args) and isinstance(n.args[0], fx.Node) and data == [n.args[0]]
