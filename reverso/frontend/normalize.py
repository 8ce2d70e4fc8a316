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
"""

from __future__ import annotations

import copy
import operator

import torch.fx as fx
import torch.nn.functional as F

from reverso.ir import is_feature_map, returns_indices, spatial, window_of
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
