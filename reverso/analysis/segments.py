"""Stage 2, segments: the main path and the pieces between its nodes.

The *main path* is the chain of nodes every input-to-output path passes through (the
dominators of the output). The pieces between consecutive main-path nodes are *segments*: a
single layer, or a multi-branch block (residual, squeeze-excite, dense) that moves as a whole.
The head starts at the first main-path node that is no longer a scaling feature map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx

from reverso.analysis.probe import Probe
from reverso.errors import UnsupportedTopologyError
from reverso.ir import dataflow_graph, main_chain


@dataclass
class Segments:
    chain: list[fx.Node]  # the main path's cut points, from the input to the output
    index: dict[fx.Node, int | None]  # segment of every node (None: dead code)
    dataflow: set[fx.Node]  # nodes data flows through from the input
    head_start: int  # index in ``chain`` of the first node of the head
    members: dict[int, list[fx.Node]] = field(default_factory=dict)  # segment -> its nodes

    def __post_init__(self):
        for n, s in self.index.items():  # graph order
            if s is not None and n.op != "output":
                self.members.setdefault(s, []).append(n)

    def nodes(self, s: int) -> list[fx.Node]:
        """The nodes of segment ``s`` in graph order (the output node excluded)."""
        return self.members.get(s, [])

    def is_block(self, nodes: list[fx.Node]) -> bool:
        """More than one node carries data: a multi-branch block."""
        return len([n for n in nodes if n in self.dataflow]) > 1

    def body(self) -> set[fx.Node]:
        """Nodes of the segments before the head."""
        return {n for n, s in self.index.items() if s is not None and 0 < s < self.head_start}


def find_segments(gm: fx.GraphModule, probe: Probe) -> Segments:
    G = dataflow_graph(gm)
    # cut points are feature maps or global values; a split's tuple or a reshaped map
    # (channel shuffle) stays inside its segment
    chain = [
        n
        for n in main_chain(G, probe.input, probe.output)
        if n in (probe.input, probe.output)
        or (
            isinstance(n.meta.get("val"), torch.Tensor)
            and (n in probe.maps or n not in probe.scaling)
        )
    ]
    index, dataflow = _segment_index(gm, G, chain, probe.input)
    ordered = {n: index.get(n) for n in gm.graph.nodes if n in index}
    return Segments(chain, ordered, dataflow, _head_start(chain, probe))


def _segment_index(gm, G, chain, source) -> tuple[dict[fx.Node, int | None], set[fx.Node]]:
    """Segment of every node: i for nodes after chain[i-1] up to chain[i]."""
    on_chain = {n: i for i, n in enumerate(chain)}
    sub = G.subgraph(nx.descendants(G, source) | {source})
    idom = nx.immediate_dominators(sub, source)
    seg: dict[fx.Node, int | None] = {source: 0}
    for n in sub.nodes:
        path = []
        while n not in seg:
            if n in on_chain:
                seg[n] = on_chain[n]
                break
            path.append(n)
            n = idom[n]
        for p in path:  # a non-main node belongs to the segment after its nearest main dominator
            seg[p] = seg[n] + 1 if n in on_chain else seg[n]
    # side nodes (parameters, sizes, constants) go with their first user
    for n in reversed(list(gm.graph.nodes)):
        if n not in seg and n.users:
            users = [seg[u] for u in n.users if seg.get(u) is not None]
            if users:
                seg[n] = min(users)
    for n in gm.graph.nodes:
        if n not in seg and n.op not in ("placeholder", "output"):
            seg[n] = None  # dead code
    return seg, set(sub.nodes)


def _head_start(chain: list[fx.Node], probe: Probe) -> int:
    """Index in the main chain of the first node that is no longer a scaling feature map."""
    for i, n in enumerate(chain[1:], start=1):
        if n not in probe.scaling:
            return i
    raise UnsupportedTopologyError(
        "the model's output is a feature map; reverso expects class scores"
    )
