"""The dataflow view of a graph: which nodes carry data and the path every input takes.

Size computations (``x.shape``) and parameters are side inputs, not data; in-place mutations
(``setitem``, ``x.add_(y)``) are ordered by extra edges. The analysis finds the main path (the
dominators of the output) on this view.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import networkx as nx
import torch
import torch.fx as fx


def carries_tensor(node: fx.Node) -> bool:
    """The node's value is a tensor or a tuple/list holding tensors (split, chunk, ...)."""

    def has(v) -> bool:
        if isinstance(v, torch.Tensor):
            return True
        return isinstance(v, (tuple, list)) and any(has(x) for x in v)

    return has(node.meta.get("val"))


def is_mutation(node: fx.Node) -> bool:
    """Nodes that change their first argument in place and whose result may be unused."""
    if node.op == "call_function" and node.target is operator.setitem:
        return True
    return (
        node.op == "call_method"
        and isinstance(node.target, str)
        and node.target.endswith("_")
        and (not node.target.startswith("__"))
    )


def dataflow_graph(gm: fx.GraphModule) -> nx.DiGraph:
    """Tensor-valued nodes and the edges between them, plus edges that order in-place mutations.

    Nodes that only compute sizes (``x.shape``, ``size()``) or come from parameters are left out;
    callers treat them as side inputs of the nodes that use them.
    """
    G = nx.DiGraph()
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        if n.op == "output" or carries_tensor(n) or is_mutation(n):
            G.add_node(n)
    for n in list(G.nodes):
        for a in n.all_input_nodes:
            if a in G:
                G.add_edge(a, n)
        if is_mutation(n) and n.args and isinstance(n.args[0], fx.Node):
            target = n.args[0]
            for user in target.users:
                if user is not n and order[user] > order[n] and user in G:
                    G.add_edge(n, user)
    return G


def main_chain(G: nx.DiGraph, source: fx.Node, sink: fx.Node) -> list[fx.Node]:
    """The nodes every source-to-sink path passes through, in order (dominators of the sink)."""
    reach = nx.descendants(G, source) | {source}
    sub = G.subgraph(reach & (nx.ancestors(G, sink) | {sink}))
    idom = nx.immediate_dominators(sub, source)
    chain = [sink]
    while chain[-1] is not source:
        chain.append(idom[chain[-1]])
    return chain[::-1]


def reachable(start: Iterable[fx.Node], step, within: set[fx.Node]) -> set[fx.Node]:
    """The nodes reached from ``start`` by ``step`` (``users`` downstream, ``inputs`` upstream)
    without leaving ``within``; ``start`` itself included when it lies within."""
    out, stack = set(), list(start)
    while stack:
        n = stack.pop()
        if n in out or n not in within:
            continue
        out.add(n)
        stack.extend(step(n))
    return out


def users(n: fx.Node):
    return n.users


def inputs(n: fx.Node):
    return n.all_input_nodes


def descendants_within(start: Iterable[fx.Node], within: set[fx.Node]) -> set[fx.Node]:
    """The nodes of ``within`` that data flows to from ``start`` (``start`` included), following
    users."""
    return reachable(start, users, within)


def has_ancestor_in(node: fx.Node, candidates: set[fx.Node], inside: set[fx.Node]) -> bool:
    """Whether one of ``candidates`` lies upstream of ``node`` without leaving ``inside``."""
    return bool(reachable(node.all_input_nodes, inputs, inside) & candidates)


def fixed_inputs(node: fx.Node, memo: dict | None = None) -> list[fx.Node]:
    """The tensor inputs of ``node`` computed from the model's own parameters and buffers alone
    (no path from a placeholder), when the node also reads data: a position embedding, a bias.
    A caller walking a whole graph passes one ``memo`` for every node."""
    memo = {} if memo is None else memo
    tensors = [a for a in node.all_input_nodes if carries_tensor(a)]
    fixed = [a for a in tensors if not _reads_data(a, memo)]
    return fixed if fixed and len(fixed) < len(tensors) else []


def _reads_data(node: fx.Node, memo: dict) -> bool:
    """Whether a placeholder lies upstream of ``node`` (iteratively: graphs run thousands of nodes
    deep, beyond Python's recursion limit)."""
    stack = [node]
    while stack:
        n = stack[-1]
        if n in memo:
            stack.pop()
            continue
        if n.op == "placeholder":
            memo[n] = True
            stack.pop()
            continue
        pending = [a for a in n.all_input_nodes if a not in memo]
        if pending:
            stack.extend(pending)
            continue
        memo[n] = any(memo[a] for a in n.all_input_nodes)
        stack.pop()
    return memo[node]
