"""Rewrites of the traced graph that show the compiler what a pool does (the graph only; the
model keeps its layers).

*Indices nothing reads.* A max-pool built with ``return_indices=True``
(``nn.MaxPool2d(2, return_indices=True)`` or ``F.max_pool2d(x, 2, return_indices=True)``)
returns a pair, and the model picks the pooled map out of it with ``[0]``. When the indices are
never read (no ``MaxUnpool2d`` uses them), the pair only hides the pool's output: the pool is
rewritten to return the map itself.

*A window as large as the map.* CIFAR code pools the last 4x4 map with ``F.avg_pool2d(x, 4)``
(or ``nn.AvgPool2d(7)`` at 224 px, or ``F.avg_pool2d(x, x.size()[2:])``): at the traced size
that is global pooling, but its fixed window would read as one more downsampling at other sizes.
A pool whose window is exactly its input map (no padding) becomes the adaptive pool to 1x1,
which it equals at the traced size and which stays global at every other size.

:func:`canonicalize` brings a traced model into the form the analysis reads (the analysis only
reads; every edit it needs is made here first):

*Size checks that only pin the traced size* (a patch embedding's ``torch._assert``) are removed
when the layers run at twice the size without them: the top-down net runs its layers at every
level.

*Sizes computed from another value's shape* (timm's Twins and PVT patch embeddings return
``H // 4, W // 4`` beside their tokens and hand them to blocks deep in the body) equal, at every
input size, the height or width of a feature map computed before their first use: they are read
from that map (``m.size(2)``) instead, and so follow the map wherever the compiler moves it.

*Channels-last values on the main path* (Swin's and MambaOut's NHWC blocks) get an NCHW map beside
them (the value turned into a map and back), so the compiler cuts units there as in NCHW nets; a
body that ends in channels-last maps or tokens read directly by the global pooling gets an NCHW
map to end on, so those layers form a body unit instead of joining the head.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from reverso.errors import failed_node
from reverso.frontend.scaling import (
    Scaling,
    image_inputs,
    measure_scaling,
    propagate_at,
    refuse_fixed_size,
)
from reverso.ir import (
    dataflow_graph,
    is_feature_map,
    main_chain,
    returns_indices,
    slice_step,
    spatial,
    window_of,
)
from reverso.ir.edit import set_module
from reverso.ir.nodes import WITH_INDICES


def drop_unread_pool_indices(gm: fx.GraphModule) -> bool:
    """Make every max-pool whose indices are unread return its map. Returns whether the graph
    changed (propagate shapes again then)."""
    changed = False
    for n in list(gm.graph.nodes):
        if not returns_indices(gm, n) or not _indices_unread(n):
            continue
        if n.op == "call_module":
            pool = copy.copy(gm.get_submodule(n.target))
            pool.return_indices = False
            set_module(gm, n.target, pool)
        else:
            n.target = WITH_INDICES[n.target]
            n.kwargs = {**n.kwargs, "return_indices": False}
        for user in list(n.users):
            if user.args[1] == 0:
                user.replace_all_uses_with(n)
            gm.graph.erase_node(user)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


def _indices_unread(n: fx.Node) -> bool:
    """Every use of the pair is ``pair[0]``, or a ``pair[1]`` that nothing reads."""
    return bool(n.users) and all(
        u.op == "call_function"
        and u.target is operator.getitem
        and u.args[1] in (0, 1)
        and (u.args[1] == 0 or not u.users)
        for u in n.users
    )


def whole_map_pools_as_global(gm: fx.GraphModule) -> bool:
    """Make every pool whose window covers exactly its input map an adaptive pool to 1x1.
    Needs propagated shapes; returns whether the graph changed (propagate again then)."""
    changed = False
    for n in list(gm.graph.nodes):
        window = window_of(gm, n) if n.op in ("call_module", "call_function") else None
        if window is None or window.kind == "conv" or not _covers_its_input(n, window):
            continue
        pool = F.adaptive_max_pool2d if window.kind == "max" else F.adaptive_avg_pool2d
        with gm.graph.inserting_before(n):
            whole = gm.graph.call_function(pool, (n.args[0], 1))
        n.replace_all_uses_with(whole)
        gm.graph.erase_node(n)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()  # the sizes the window was computed from
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
    return changed


def _covers_its_input(n: fx.Node, window) -> bool:
    source = n.args[0] if n.args else None
    if not isinstance(source, fx.Node) or not is_feature_map(source) or not is_feature_map(n):
        return False
    return (
        window.kernel == tuple(spatial(source))
        and window.padding == (0, 0)
        and window.dilation == (1, 1)
        and tuple(spatial(n)) == (1, 1)
    )


def canonicalize(gm: fx.GraphModule, input_size: tuple[int, int, int]) -> bool:
    """Make the edits the analysis needs (the module docstring lists them); the nodes they add
    carry their shapes. Returns whether the graph changed."""
    if len(image_inputs(gm)) != 1 or not isinstance(_output(gm).args[0], fx.Node):
        return False  # the analysis refuses the signature
    changed = drop_size_checks(gm, input_size)
    scaling = measure_scaling(gm, input_size)
    if rebase_image_sizes(gm, scaling) | cut_channels_last(gm, scaling):
        scaling = measure_scaling(gm, input_size)
        changed = True
    return close_reshaped_tail(gm, scaling) or changed


def drop_size_checks(gm: fx.GraphModule, input_size) -> bool:
    """Remove the ``torch._assert`` nodes that stop shape propagation at twice ``input_size``
    when the layers then run; refuse the model when a layer then fails on a tensor fixed to its
    resolution. Returns whether the graph changed."""
    c, h, w = input_size
    checks = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch._assert]
    if not checks:
        return False
    first = {n: n.meta.get("val") for n in gm.graph.nodes}
    try:
        propagate_at(gm, (c, 2 * h, 2 * w))
        return False
    except Exception as err:
        if failed_node(err) not in {n.name for n in checks}:
            return False  # measure_scaling says what else stops it
        for n in checks:
            n.target = _skip_check
        try:
            propagate_at(gm, (c, 2 * h, 2 * w))
        except Exception as again:
            refuse_fixed_size(gm, again)
            return False
        finally:
            for n in checks:
                n.target = torch._assert
    finally:
        for n, v in first.items():
            n.meta["val"] = v
    for n in checks:
        gm.graph.erase_node(n)
    gm.recompile()
    return True


def _skip_check(*args, **kwargs) -> None:
    return None


def rebase_image_sizes(gm: fx.GraphModule, scaling: Scaling) -> bool:
    """Rewrite computed sizes that feed the body to read a feature map's size. Returns
    whether the graph changed."""
    if not scaling.grown:
        return False  # a model that takes one input size: nothing to match against
    dims = _shape_dims(gm, scaling)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    changed = False
    for n, dim in dims.items():
        consumers = [u for u in n.users if u not in dims]
        if dim not in (2, 3) or not consumers or n.target in ("size", operator.getitem):
            continue  # a size read as it is: the compiler recomputes those where they are used
        first = min(consumers, key=order.__getitem__)
        source = _map_of_size(scaling, n, dim, order, order[first])
        if source is None:
            continue
        with gm.graph.inserting_after(source):
            size = gm.graph.call_method("size", (source, dim))
        size.meta["val"] = n.meta["val"]
        for u in consumers:
            u.replace_input_with(n, size)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return changed


def _shape_dims(gm: fx.GraphModule, scaling: Scaling) -> dict[fx.Node, int | None]:
    """Int values computed from the shapes of the image or feature maps alone, with the dim each
    derives from (``x.shape[2] // 4`` -> 2); None where it cannot be told (a product of both)."""
    tensors = scaling.maps | {scaling.input}
    shapes, dims = set(), {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",):
            if n.args[0] in tensors:
                shapes.add(n)
        elif n.op == "call_method" and n.target == "size" and n.args[0] in tensors:
            if len(n.args) > 1:
                dims[n] = n.args[1] % 4
            else:
                shapes.add(n)
        elif n.op == "call_function" and n.target is operator.getitem and n.args[0] in shapes:
            index = n.args[1]
            dims[n] = index % 4 if isinstance(index, int) else None
        elif (
            isinstance(n.meta.get("val"), int)
            and n.all_input_nodes
            and all(a in dims for a in n.all_input_nodes)
        ):
            found = {dims[a] for a in n.all_input_nodes}
            dims[n] = found.pop() if len(found) == 1 else None
    return {n: d for n, d in dims.items() if isinstance(n.meta.get("val"), int)}


def _map_of_size(scaling: Scaling, n: fx.Node, dim: int, order, before: int) -> fx.Node | None:
    """The last feature map before position ``before`` whose ``dim`` equals ``n`` at both probed
    input sizes (the image itself excluded)."""
    value, grown = n.meta["val"], scaling.grown.get(n)
    best = None
    for m in scaling.maps:
        if m is scaling.input or order[m] >= before:
            continue
        big = scaling.grown.get(m)
        fits = big is not None and m.meta["val"].shape[dim] == value and big.shape[dim] == grown
        if fits and (best is None or order[m] > order[best]):
            best = m
    return best


def cut_channels_last(gm: fx.GraphModule, scaling: Scaling) -> bool:
    """Give every channels-last value on the main path an NCHW map beside it (the value turned
    into a map and back). Returns whether the graph changed."""
    chain = main_chain(dataflow_graph(gm), scaling.input, _output(gm))
    cuts = [n for n in chain if n in scaling.channels_last and not _only_sliced(n)]
    for n in cuts:
        _round_trip(gm.graph, n, list(n.users))
    if cuts:
        gm.recompile()
    return bool(cuts)


def _output(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in reversed(gm.graph.nodes) if n.op == "output")


def _only_sliced(n: fx.Node) -> bool:
    """A value read only by strided slices (the even-size padding before a patch merging)
    belongs to that downsampling's unit."""
    return all(slice_step(u) > 1 for u in n.users)


def _round_trip(graph: fx.Graph, n: fx.Node, readers: list[fx.Node]) -> None:
    """Insert ``n.permute(0, 3, 1, 2).permute(0, 2, 3, 1)`` after the channels-last value ``n``
    (an NCHW map, then ``n`` again) and let ``readers`` read it."""
    value = n.meta["val"]
    with graph.inserting_after(n):
        mapped = graph.call_method("permute", (n, 0, 3, 1, 2))
    with graph.inserting_after(mapped):
        restored = graph.call_method("permute", (mapped, 0, 2, 3, 1))
    mapped.meta["val"] = value.permute(0, 3, 1, 2)
    restored.meta["val"] = value
    for u in readers:
        u.replace_input_with(n, restored)


def head_start(gm: fx.GraphModule, scaling: Scaling) -> fx.Node | None:
    """The first node of the main path that is no longer a scaling value (where the head
    starts), or None when the model's output is itself a feature map."""
    output = _output(gm)
    for n in main_chain(dataflow_graph(gm), scaling.input, output)[1:]:
        if n is output:
            return n
        if isinstance(n.meta.get("val"), torch.Tensor) and n not in scaling.scaling:
            return n
    return None


def close_reshaped_tail(gm: fx.GraphModule, scaling: Scaling) -> bool:
    """Let the global pooling read a body's last channels-last map or tokens through an NCHW
    map. Returns whether the graph changed."""
    start = head_start(gm, scaling)
    if start is None:
        return False
    tail = [a for a in start.all_input_nodes if a in scaling.channels_last | scaling.tokens]
    if len(tail) != 1:
        return False
    (last,) = tail
    graph, value = gm.graph, last.meta["val"]
    if last in scaling.channels_last:
        _round_trip(graph, last, [start])
        gm.recompile()
        return True
    grid = _token_grid(scaling, last)
    if grid is None:
        return False
    with graph.inserting_after(last):  # each call goes after the one before
        h = graph.call_method("size", (grid, 2))
    with graph.inserting_after(h):
        w = graph.call_method("size", (grid, 3))
    with graph.inserting_after(w):
        t = graph.call_method("transpose", (last, 1, 2))
    with graph.inserting_after(t):
        nchw = graph.call_method("unflatten", (t, 2, (h, w)))
    with graph.inserting_after(nchw):
        flat = graph.call_method("flatten", (nchw, 2))
    with graph.inserting_after(flat):
        back = graph.call_method("transpose", (flat, 1, 2))
    h.meta["val"], w.meta["val"] = grid.meta["val"].shape[2], grid.meta["val"].shape[3]
    t.meta["val"] = value.transpose(1, 2)
    nchw.meta["val"] = t.meta["val"].unflatten(2, tuple(grid.meta["val"].shape[2:]))
    flat.meta["val"] = nchw.meta["val"].flatten(2)
    back.meta["val"] = value
    start.replace_input_with(last, back)
    gm.recompile()
    return True


def _token_grid(scaling: Scaling, tokens: fx.Node) -> fx.Node | None:
    """The nearest feature map before ``tokens`` with as many pixels as there are tokens."""
    count = tokens.meta["val"].shape[1]
    stack, seen = [tokens], set()
    while stack:
        n = stack.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if n in scaling.maps and n.meta["val"].shape[2] * n.meta["val"].shape[3] == count:
            return n
        stack.extend(n.all_input_nodes)
    return None
