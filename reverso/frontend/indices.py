"""Max-pools whose indices nothing reads.

A max-pool built with ``return_indices=True`` (``nn.MaxPool2d(2, return_indices=True)`` or
``F.max_pool2d(x, 2, return_indices=True)``) returns a pair, and the model picks the pooled map
out of it with ``[0]``. When the indices are never read (no ``MaxUnpool2d`` uses them), the
pair only hides the pool's output from the compiler: the pool is rewritten to return the map
itself, in the traced graph only (the model keeps its layer).
"""

from __future__ import annotations

import copy
import operator

import torch.fx as fx

from reverso.ir import returns_indices
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
