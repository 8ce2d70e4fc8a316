"""Units in a graph that is being rewritten.

The analysis tags every node of the bottom-up graph with the unit it belongs to
(:func:`reverso.ir.unit_of`); copies and the nodes passes insert keep that tag, so a pass finds a
unit's nodes, its entry and its exit in the current graph without re-analysing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from reverso import ir
from reverso.errors import UnsupportedTopologyError
from reverso.ir.shapes import tensor_shape


@dataclass
class UnitView:
    index: int
    nodes: list[fx.Node]  # in graph order
    entry: fx.Node  # the node feeding the unit
    exit: fx.Node  # the node the rest of the graph reads

    @property
    def node_set(self) -> set[fx.Node]:
        return set(self.nodes)


def unit_view(gm: fx.GraphModule, index: int) -> UnitView:
    nodes = ir.unit_members(gm, index)
    if not nodes:
        raise UnsupportedTopologyError(f"unit {index} has no nodes left in the graph")
    inside = set(nodes)
    entries = []
    for n in nodes:
        if not _carries_data(n):
            continue  # a size read from another unit's map is recomputed, not an input
        for a in n.all_input_nodes:
            # nodes a pass just inserted have no shape yet; they carry data all the same
            carries_data = "val" not in a.meta or ir.carries_tensor(a)
            external = a not in inside and a.op != "get_attr" and a not in entries
            if external and carries_data and not ir.is_global(a):
                entries.append(a)
    # sizes read from a map (``x.shape``) are no outputs: a unit that needs them recomputes them
    exits = [
        n
        for n in nodes
        if _carries_data(n) and any(u not in inside and _carries_data(u) for u in n.users)
    ]
    # pyramid levels only feed upsampling sizes and laterals, unless the unit reads the image itself
    data = [a for a in entries if ir.role_of(a) is not ir.Role.PYRAMID]
    entries = data or entries[:1]
    if len(exits) != 1 or len(entries) > 1:
        raise UnsupportedTopologyError(
            f"unit {index} ({nodes[0].name} .. {nodes[-1].name}) does not have a single input and output "
            f"(inputs: {[a.name for a in entries]}, outputs: {[e.name for e in exits]})"
        )
    entry = entries[0] if entries else nodes[0]
    return UnitView(index, nodes, entry, exits[0])


def _carries_data(n: fx.Node) -> bool:
    """A tensor (or one the pass that inserted it has not shaped yet), not a size."""
    return "val" not in n.meta or ir.carries_tensor(n)


def append_to_unit(gm: fx.GraphModule, view: UnitView, name: str, module, args: tuple) -> fx.Node:
    """Add a call to ``module`` after the unit's exit, inside the unit, and make everything that
    read the exit outside the unit read the new node instead."""
    users = [u for u in view.exit.users if u not in view.node_set]
    node = ir.add_module_node(gm, name, module, args, after=view.exit, meta_from=view.exit)
    for u in users:
        u.replace_input_with(view.exit, node)
    return node


def module_prefix(nodes: list[fx.Node]) -> str:
    """The unit's common module path ('layer2.0'), for naming the layers passes add to it."""
    return ".".join(ir.module_path(nodes)) or "unit"


def reorder_units(gm: fx.GraphModule, order: list[int], head: list[int]) -> fx.GraphModule:
    """A new GraphModule running the units ``order`` one after the other, then ``head``.

    Each unit is copied whole; its entry is rewired to the output of the unit copied before it.
    Modules are shared with ``gm`` (by reference), node metadata is kept.
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    image = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = graph.node_copy(n)
            if image is None and tensor_shape(n) is not None:
                image = n
    current = env[image]
    result = None
    for index in [*order, *head]:
        view = unit_view(gm, index)
        local = {view.entry: current}

        def lookup(a: fx.Node, view=view, local=local) -> fx.Node:
            if a in local:
                return local[a]
            if a.op == "placeholder":
                return env[a]
            if not _carries_data(a):  # a size another unit computed: compute it here again
                local[a] = graph.node_copy(a, lambda b: size_source(b, view, local))
                ir.copy_tags(local[a], a)
                ir.tags_of(local[a]).unit = view.index  # the copy belongs to this unit
                return local[a]
            raise UnsupportedTopologyError(
                f"node '{a.name}' is used in unit {view.index} ({view.nodes[0].name} .. {view.exit.name}) "
                "but belongs to another unit; units that read each other's results cannot be reordered"
            )

        def size_source(b: fx.Node, view=view, local=local) -> fx.Node:
            """What a recomputed size reads: sizes recursively, and for a map of another unit
            this unit's input when it has the very same shape (so the size is the same)."""
            if b in local or b.op == "placeholder" or not _carries_data(b):
                return lookup(b)
            if ir.tensor_shape(b) == ir.tensor_shape(view.entry):
                return local[view.entry]
            raise UnsupportedTopologyError(
                f"unit {view.index} ({view.nodes[0].name} .. {view.exit.name}) reads the size of "
                f"'{b.name}', a map of another unit with another shape than its own input; the "
                "units cannot be reordered"
            )

        for n in view.nodes:
            if n in local:  # a size copied earlier for a node of this unit
                continue
            new = graph.node_copy(n, lookup if _carries_data(n) else size_source)
            ir.copy_tags(new, n)
            local[n] = new
        current = result = local[view.exit]
    graph.output(result)
    return fx.GraphModule(gm, graph, class_name=type(gm).__name__)
