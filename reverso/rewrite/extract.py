"""Cut a graph into runs: a contiguous run of nodes becomes one call of a new module.

Used by the ``checkpoint`` pass (each segment runs under activation checkpointing) and by the
``reversible`` pass (a run of coupling blocks). The run's inputs are the values it reads from
before it; its outputs are the values read after it (one value, or a tuple unpacked with
``getitem``). Parameters and buffers read through ``get_attr`` are read inside the segment.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import torch.fx as fx
from torch import nn


def run_boundary(nodes: Sequence[fx.Node]) -> tuple[list[fx.Node], list[fx.Node]]:
    """The values a contiguous run reads from outside (in first-use order; ``get_attr`` nodes
    excluded) and the values of the run that are read after it."""
    inside = set(nodes)
    inputs: dict[fx.Node, None] = {}
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside and a.op != "get_attr":
                inputs[a] = None
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]
    return list(inputs), outputs


def body_of(
    gm: fx.GraphModule, nodes: Sequence[fx.Node], output: fx.Node | None = None
) -> fx.GraphModule:
    """A GraphModule computing the run ``nodes`` from its inputs (returning ``output``, or every
    value read after the run); its layers and parameters are ``gm``'s (nothing is copied)."""
    inputs, outputs = run_boundary(nodes)
    outputs = [output] if output is not None else outputs
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for a in inputs:
        env[a] = graph.placeholder(a.name)
        env[a].meta = dict(a.meta)

    def read(a: fx.Node) -> fx.Node:
        if a not in env:  # a parameter or buffer read before the run: read it here too
            env[a] = graph.get_attr(a.target)
            env[a].meta = dict(a.meta)
        return env[a]

    for n in nodes:
        env[n] = graph.node_copy(n, read)
    graph.output(env[outputs[0]] if len(outputs) == 1 else tuple(env[o] for o in outputs))
    return fx.GraphModule(gm, graph, class_name="Segment")


def replace_run(
    gm: fx.GraphModule,
    nodes: Sequence[fx.Node],
    name: str,
    wrap: Callable[[fx.GraphModule], nn.Module],
) -> fx.Node:
    """Replace the run ``nodes`` of ``gm`` by one call of ``wrap(body_of(gm, nodes))``, installed
    as ``gm.<name>``. Returns the call node. The graph is left to the caller to recompile."""
    inputs, outputs = run_boundary(nodes)
    if not outputs:
        raise ValueError(f"the run {nodes[0].name}..{nodes[-1].name} has no value read after it")
    gm.add_submodule(name, wrap(body_of(gm, nodes)))
    with gm.graph.inserting_before(nodes[0]):
        call = gm.graph.call_module(name, tuple(inputs))
        results = (
            [call]
            if len(outputs) == 1
            else [
                gm.graph.create_node(
                    "call_function", operator.getitem, (call, i), name=f"{name}_{i}"
                )
                for i in range(len(outputs))
            ]
        )
    inside = set(nodes)
    for out, result in zip(outputs, results, strict=True):
        result.meta = dict(out.meta)
        out.replace_all_uses_with(result, delete_user_cb=lambda user: user not in inside)
    if len(outputs) > 1:
        call.meta = {"val": tuple(o.meta.get("val") for o in outputs)}
    else:
        call.meta = dict(outputs[0].meta)
    for n in reversed(nodes):
        gm.graph.erase_node(n)
    return call


def inlined(gm: fx.GraphModule, is_segment: Callable[[nn.Module], bool]) -> fx.GraphModule:
    """A copy of ``gm`` with every call of a segment module replaced by the nodes of the
    segment's ``body``: the graph as it was before it was cut. The body's layers must be ``gm``'s
    own under the same names (as :class:`~reverso.nn.CheckpointSegment` keeps them)."""
    graph = fx.Graph()
    env: dict[fx.Node, object] = {}
    for n in gm.graph.nodes:
        module = gm.get_submodule(n.target) if n.op == "call_module" else None
        if (
            n.op == "call_function"
            and n.target is operator.getitem
            and isinstance(env[n.args[0]], tuple)
        ):
            env[n] = env[n.args[0]][n.args[1]]  # one output of an inlined segment
        elif module is not None and is_segment(module):
            inner: dict[fx.Node, object] = {}
            args = iter(n.args)
            for b in module.body.graph.nodes:
                if b.op == "placeholder":
                    inner[b] = env[next(args)]
                elif b.op == "output":
                    out = b.args[0]
                    env[n] = tuple(inner[o] for o in out) if isinstance(out, tuple) else inner[out]
                else:
                    inner[b] = graph.node_copy(b, lambda a, inner=inner: inner[a])
        else:
            env[n] = graph.node_copy(n, lambda a: env[a])
    return fx.GraphModule(gm, graph, class_name=type(gm).__name__)
