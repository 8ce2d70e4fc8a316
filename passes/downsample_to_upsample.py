"""downsample_to_upsample: turn every downsampling into an upsampling (spec section 3, step 3).

* The net now starts at the coarsest level: the image goes through an :class:`ImagePyramid`
  (blur before subsampling) and the first layer reads its coarsest level.
* Every strided op runs at stride 1 ("same" padding); strided pools inside units disappear.
* A standalone transition (a pool) at a top-down position becomes an upsampling by its factor.
* The unit at a top-down position with an inside transition becomes an *up-unit*: an upsampling
  is inserted before its first spatial conv (interpolate, then convolve) on every path, and on
  paths without one (a 1x1 projection, an identity shortcut) right before they join.
* A shortcut projection the bottom-up net needed (for a stride or a width change) but the
  top-down net does not (stride 1, same width) is dropped: the shortcut is the identity again.

Every upsampling targets the exact size of the pyramid level it lands on, so odd and non-square
inputs work. The model's very first downsampling (a strided stem conv) is not mirrored: the
top-down net ends at the level it produced, the resolution of the bottom-up net's first stage.
"""

from __future__ import annotations

import operator

import torch.fx as fx

from reverso import graph as g
from reverso.errors import PassError, UnsupportedTopologyError
from reverso.nn import ImagePyramid, Upsample
from reverso.pipeline import Pass, PassResult
from reverso.repair import repair_widths
from reverso.shapes import tensor_shape
from reverso.units import UnitView, module_prefix, unit_view
from reverso.widths import at_stride_one


class DownsampleToUpsample(Pass):
    name = "downsample_to_upsample"

    def requires(self, gm, ctx) -> None:
        if any(g.tag(n).get("role") == "pyramid" for n in gm.graph.nodes):
            raise PassError("the graph already has an image pyramid; run this pass once")

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        plan = ctx.plan
        levels = self.insert_pyramid(gm, ctx)
        standalone = {s.units[0] for s in plan.slots if s.kind == "transition"}
        for unit in plan.body_order():
            if unit not in standalone:
                self.stride_one(gm, unit_view(gm, unit))
        for index, slot in enumerate(plan.slots):
            if slot.kind == "transition":
                self.standalone(gm, ctx, slot, index, levels)
            elif slot.up > 1:
                self.up_unit(gm, ctx, unit_view(gm, slot.units[0]), slot, index, levels[slot.level])
        for unit in plan.body_order():
            self.drop_needless_projection(gm, ctx, unit)
        gm.delete_all_unused_submodules()
        # a head that flattens the last map (LeNet-5's fc1) now reads a map of another size
        repair_widths(gm, ctx)
        return PassResult(gm, True)

    # -- entry: the image pyramid ------------------------------------------------------------
    def insert_pyramid(self, gm: fx.GraphModule, ctx) -> dict[int, fx.Node]:
        plan = ctx.plan
        image = next(
            n for n in gm.graph.nodes if n.op == "placeholder" and tensor_shape(n) is not None
        )
        target = g.unique_name(gm, "pyramid")
        gm.add_submodule(target, ImagePyramid(plan.pyramid_levels, ctx.options.pyramid))
        users = list(image.users)
        with gm.graph.inserting_after(image):
            pyramid = gm.graph.call_module(target, (image,))
        g.tag(pyramid)["role"] = "pyramid"
        levels, anchor = {}, pyramid
        for i, level in enumerate(plan.pyramid_levels):
            with gm.graph.inserting_after(anchor):
                node = gm.graph.create_node(
                    "call_function", operator.getitem, (pyramid, i), name=f"level_{level}"
                )
            g.tag(node).update(role="pyramid", level=level)
            levels[level] = anchor = node
        for user in users:
            user.replace_input_with(image, levels[plan.entry_level])
        return levels

    # -- strides -----------------------------------------------------------------------------
    def stride_one(self, gm: fx.GraphModule, view: UnitView) -> None:
        """Run every strided op of the unit at stride 1; strided pools become identities."""
        for n in view.nodes:
            if not g.tag(n).get("stride"):
                continue
            module = g.module_of(gm, n)
            unstrided = (
                at_stride_one(module) if module is not None and not g.is_pool(gm, n) else None
            )
            if unstrided is not None:
                g.set_module(gm, n.target, unstrided)
            elif g.is_pool(gm, n):
                n.replace_all_uses_with(n.args[0])
                gm.graph.erase_node(n)
            else:
                raise UnsupportedTopologyError(
                    f"node {g.describe(gm, n)} downsamples by {g.tag(n)['stride']} with an op that reverso "
                    "cannot run at stride 1; supported are strided convs and max/avg pooling. Wrap it in a "
                    "module you can rewrite, or replace it before converting."
                )

    def standalone(
        self, gm: fx.GraphModule, ctx, slot, index: int, levels: dict[int, fx.Node]
    ) -> None:
        view = unit_view(gm, slot.units[0])
        pools = [n for n in view.nodes if g.tag(n).get("stride")]
        if not pools:
            return
        pool = pools[0]
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
        node = g.add_module_node(
            gm,
            name,
            Upsample(ctx.options.upsample, factor),
            (source, like),
            before=before,
            meta_from=before,
        )
        g.tag(node).update(role="upsample", transition=index)
        return node

    # -- up-units ----------------------------------------------------------------------------
    def up_unit(
        self, gm: fx.GraphModule, ctx, view: UnitView, slot, index: int, like: fx.Node
    ) -> None:
        """Insert upsamplings so that everything from the unit's first spatial conv on runs fine."""
        fine = self.fine_region(gm, view)
        prefix = module_prefix(gm, view.nodes)
        if view.exit not in fine:  # no spatial conv at all: upsample the unit's output
            users = [u for u in view.exit.users if u not in view.node_set]
            up = g.add_module_node(
                gm,
                f"{prefix}.upsample",
                Upsample(ctx.options.upsample, slot.up),
                (view.exit, like),
                after=view.exit,
                meta_from=view.exit,
            )
            g.tag(up).update(role="upsample", transition=index, unit=view.index)
            for u in users:
                u.replace_input_with(view.exit, up)
            return
        ups: dict[fx.Node, fx.Node] = {}
        for n in [x for x in gm.graph.nodes if x in fine]:
            for a in list(n.all_input_nodes):
                if a in fine or not _is_feature_path(a):
                    continue
                if a not in ups:
                    ups[a] = self.add_upsample(
                        gm, ctx, f"{prefix}.upsample", a, like, slot.up, n, index
                    )
                    g.tag(ups[a])["unit"] = view.index
                n.replace_input_with(a, ups[a])

    def fine_region(self, gm: fx.GraphModule, view: UnitView) -> set[fx.Node]:
        """Nodes of the unit that run at the finer level: from the (formerly strided or first)
        spatial convs on, and from the users of formerly strided 1x1 convs on."""
        inside = view.node_set
        starts = []
        for n in view.nodes:
            if g.tag(n).get("stride"):
                starts += [n] if g.is_spatial_conv(gm, n) else [u for u in n.users if u in inside]
        if not starts:
            convs = [n for n in view.nodes if g.is_spatial_conv(gm, n)]
            starts = [c for c in convs if not _has_ancestor_in(c, set(convs) - {c}, inside)]
        return g.descendants_within(starts, inside)

    # -- projections -------------------------------------------------------------------------
    def drop_needless_projection(self, gm: fx.GraphModule, ctx, index: int) -> None:
        """Drop a 1x1 shortcut projection the bottom-up unit needed but the top-down one does not."""
        unit = ctx.report.units[index]
        if not unit.residual or not (unit.strided or unit.in_width != unit.out_width):
            return
        view = unit_view(gm, index)
        inside = view.node_set
        for join in [n for n in view.nodes if g.is_add(n)]:
            for branch in join.all_input_nodes:
                chain = _projection_chain(gm, branch, inside)
                convs = [c for c in chain if g.is_conv(gm, c)]
                others = [a for a in join.all_input_nodes if a is not branch]
                if len(convs) != 1 or not any(
                    _has_spatial_conv_before(gm, o, inside) for o in others
                ):
                    continue
                conv = gm.get_submodule(convs[0].target)
                if conv.in_channels != conv.out_channels or conv.stride != (1, 1):
                    continue
                start = chain[-1].all_input_nodes[0]
                for c in chain:  # the chain runs from the join backwards
                    if g.tag(c).get("role") == "upsample":
                        continue
                    c.replace_all_uses_with(c.args[0])
                    gm.graph.erase_node(c)
                # the identity shortcut reads the block's input, not its pre-activation
                first = next(u for u in start.users if u in inside and u in [*chain, join])
                first.replace_input_with(start, view.entry)
                return


def _is_feature_path(node: fx.Node) -> bool:
    """Spatial feature maps, which must be upsampled (global gates broadcast as they are).
    Nodes this pass just inserted (upsamplings) have no shape yet and are feature maps."""
    if node.op == "get_attr" or g.tag(node).get("global") or g.tag(node).get("reshaped"):
        return False
    shape = tensor_shape(node)
    return len(shape) == 4 if shape is not None else "val" not in node.meta


def _has_ancestor_in(node: fx.Node, candidates: set[fx.Node], inside: set[fx.Node]) -> bool:
    stack, seen = list(node.all_input_nodes), set()
    while stack:
        n = stack.pop()
        if n in seen or n not in inside:
            continue
        if n in candidates:
            return True
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return False


def _has_spatial_conv_before(gm, node: fx.Node, inside: set[fx.Node]) -> bool:
    convs = {n for n in inside if g.is_spatial_conv(gm, n)}
    return node in convs or _has_ancestor_in(node, convs, inside)


def _projection_chain(gm: fx.GraphModule, node: fx.Node, inside: set[fx.Node]) -> list[fx.Node]:
    """Walk back from a join input through single-user 1x1 convs, norms, identities and upsamplings."""
    chain = []
    while node in inside and len(node.users) == 1:
        if not (
            (g.is_conv(gm, node) and g.conv_kernel(gm, node) == 1)
            or g.is_norm(gm, node)
            or g.is_identity(gm, node)
            or g.tag(node).get("role") == "upsample"
        ):
            break
        chain.append(node)
        node = node.args[0]
    return chain
