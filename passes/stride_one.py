"""stride_one: every downsampling inside a unit runs at stride 1 (docs/methods/topdown.md,
section 3, step 3).

Strided convs (and conv-like layers such as timm's MixedConv2d) keep their weights and run at
stride 1 with size-preserving padding (:func:`reverso.rewrite.convs.at_stride_one`); strided
pools inside units become identities. Standalone transitions (a bare pool between groups) are
left to ``downsample_to_upsample``, which turns each into an upsampling at its position.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import UnsupportedTopologyError
from reverso.nn import NeighbourhoodToDepth
from reverso.rewrite.convs import at_stride_one
from reverso.rewrite.unit_views import UnitView, unit_view


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
        strided = [n for n in view.nodes if ir.stride_tag(n) and not _written_here(gm, n)]
        _drop_even_padding(gm, strided)
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
            elif n.op == "call_function" and n.target in (F.pixel_unshuffle, torch.pixel_unshuffle):
                _pixel_unshuffle_at_stride_one(gm, n)
            elif not (
                n.op == "call_function"
                and n.target is operator.getitem
                and _slice_at_stride_one(gm, n)
            ):
                raise UnsupportedTopologyError(
                    f"node {ir.describe(gm, n)} downsamples by {ir.stride_tag(n)} with an op that reverso "
                    "cannot run at stride 1; supported are strided convs, max/avg pooling, "
                    "space-to-depth (pixel_unshuffle) and strided slices x[..., start::step]. Wrap it "
                    "in a module you can rewrite, or replace it before converting."
                )
        return bool(strided)


def _conv2d_at_stride_one(n: fx.Node) -> None:
    """``F.conv2d(x, w, b, stride, padding, ...)`` at stride 1, its padding kept (a blur pool
    pads its input first so that the blur keeps the size at stride 1)."""
    if "stride" in n.kwargs or len(n.args) < 4:
        n.kwargs = {**n.kwargs, "stride": 1}
    else:
        n.args = (*n.args[:3], 1, *n.args[4:])


def _drop_even_padding(gm: fx.GraphModule, strided: list[fx.Node]) -> None:
    """A pad read only by strided slices or a pixel_unshuffle (Swin pads odd sizes to even
    before merging patches) has nothing to do at stride 1, where they keep the size they read."""
    gathers = (operator.getitem, F.pixel_unshuffle, torch.pixel_unshuffle)
    for source in {n.args[0] for n in strided if n.target in gathers}:
        if source.target is F.pad and all(u in strided for u in source.users):
            source.replace_all_uses_with(source.args[0])
            gm.graph.erase_node(source)


def _written_here(gm: fx.GraphModule, n: fx.Node) -> bool:
    """The stride-1 forms this pass writes, which keep the strided op's tags (a second run
    leaves them alone)."""
    return n.target is F.pad or isinstance(ir.module_of(gm, n), NeighbourhoodToDepth)


def _pixel_unshuffle_at_stride_one(gm: fx.GraphModule, n: fx.Node) -> None:
    """``F.pixel_unshuffle(x, b)`` at stride 1: every pixel's b x b neighbourhood in channels."""
    x, block = n.args[0], n.kwargs.get("downscale_factor", n.args[1] if len(n.args) > 1 else None)
    node = ir.add_module_node(
        gm,
        "neighbourhood",
        NeighbourhoodToDepth(int(block), order="torch"),
        (x,),
        before=n,
        meta_from=n,
    )
    ir.copy_tags(node, n)  # the strided op's tags: what follows it runs at the finer level
    n.replace_all_uses_with(node)
    gm.graph.erase_node(n)


def _slice_at_stride_one(gm: fx.GraphModule, n: fx.Node) -> bool:
    """``x[..., start::step, ...]`` at stride 1: ``x[..., start:, ...]`` padded back to the input's
    size at the end, so that position ``i * step`` holds what the strided slice's ``i`` did.
    False for indexing it cannot rewrite (ints, masks, a stop)."""
    x, index = n.args
    value = x.meta.get("val") if isinstance(x, fx.Node) else None
    if not isinstance(value, torch.Tensor):
        return False
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items[k : k + 1] = [slice(None)] * (value.dim() - len(items) + 1)
    if len(items) > value.dim() or not all(isinstance(i, slice) for i in items):
        return False
    shifts, kept = [], []
    for item in items:
        start, step = item.start or 0, item.step or 1
        if step > 1 and (item.stop is not None or not isinstance(start, int) or start >= step):
            return False
        shifts.append(start if step > 1 else 0)
        kept.append(slice(start, None) if step > 1 else item)
    n.args = (x, tuple(kept))
    first = next((d for d, shift in enumerate(shifts) if shift), len(shifts))
    widths = []  # F.pad's order: the last dim first, back to the first shifted one
    for shift in reversed(shifts[first:]):
        widths += [0, shift]
    if widths:
        with gm.graph.inserting_after(n):
            pad = gm.graph.call_function(F.pad, (n, tuple(widths)))
        ir.copy_tags(pad, n)  # the slice and its pad are one stride-1 op: what follows runs fine
        ir.tags_of(n).stride = None
        n.replace_all_uses_with(pad, delete_user_cb=lambda u: u is not pad)
    return True
