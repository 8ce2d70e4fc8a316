"""Which nodes form one block: residual joins, pre-activation, and the block module they sit in.

A segment is *residual* when a skip joins its main path (an add, or a concat with its input).
A net is *pre-activation* when most of its residual blocks open with a norm on the main path.
Segments inside the same *block module* form one unit: the deepest enclosing module that is not
a container (Sequential, ModuleList, ModuleDict, the model itself), holds at least two conv or
linear layers and holds no residual blocks of its own.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from reverso.analysis.segments import Segments
from reverso.frontend.tracing import traced_root
from reverso.ir import (
    descendants_within,
    is_add,
    is_cat,
    is_conv,
    is_linear,
    is_norm,
    is_spatial_conv,
    module_path,
)


def is_residual(nodes: list[fx.Node], levels: dict[fx.Node, int]) -> bool:
    """A skip joins the block's main path: an add of two maps, or a concat with its input.
    (A subtraction is no skip: ``x - f(x)`` is not a residual connection.)"""
    inside = set(nodes)
    for n in nodes:
        ins = [a for a in n.all_input_nodes if a in levels]
        if is_add(n) and len(ins) >= 2:
            return True
        if is_cat(n) and any(a not in inside for a in ins):
            return True
    return False


def residual_segments(segments: Segments, levels) -> list[list[fx.Node]]:
    """The nodes of every body segment that is a residual multi-branch block."""
    found = []
    for s in range(1, segments.head_start):
        nodes = segments.nodes(s)
        if segments.is_block(nodes) and is_residual(nodes, levels):
            found.append(nodes)
    return found


def is_preact(gm: fx.GraphModule, segments: Segments, levels) -> bool:
    """Most residual blocks open with a norm that leads to a spatial conv on the main path."""
    votes = []
    for nodes in residual_segments(segments, levels):
        entry, inside = segments.chain[segments.index[nodes[0]] - 1], set(nodes)
        votes.append(
            any(
                is_norm(gm, u)
                and any(is_spatial_conv(gm, d) for d in descendants_within([u], inside))
                for u in entry.users
                if u in inside
            )
        )
    return bool(votes) and sum(votes) * 2 > len(votes)


class BlockModules:
    """The module paths the owner rule needs: layer counts and the residual blocks' modules."""

    def __init__(self, gm: fx.GraphModule, segments: Segments, levels):
        self.root = traced_root(gm)  # the original model keeps the module types
        self.layer_count: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module" and (is_conv(gm, n) or is_linear(gm, n)):
                parts = n.target.split(".")
                for i in range(1, len(parts)):
                    key = ".".join(parts[:i])
                    self.layer_count[key] = self.layer_count.get(key, 0) + 1
        self.residual_blocks = set()
        for nodes in residual_segments(segments, levels):
            prefix = module_path(nodes)
            while prefix and self._is_container(prefix):
                prefix = prefix[:-1]
            if prefix:
                self.residual_blocks.add(".".join(prefix))

    def _is_container(self, parts: list[str]) -> bool:
        try:
            module = self.root.get_submodule(".".join(parts))
        except AttributeError:
            return True
        return isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict))

    def owner(self, nodes: list[fx.Node]) -> str | None:
        """The block module a segment belongs to; None for layers that sit in containers."""
        common = module_path(nodes)
        while common:
            path = ".".join(common)
            if (
                not self._is_container(common)
                and self.layer_count.get(path, 0) >= 2
                and not any(r.startswith(path + ".") for r in self.residual_blocks)
            ):
                return path
            common = common[:-1]
        return None
