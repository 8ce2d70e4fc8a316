"""Stage 6, tagging: the analysis writes its per-node facts into the graph, in one step.

Every node of the bottom-up graph gets its ``scope`` (map, global or reshaped), the ``unit`` it
belongs to and, for nodes that downsample, their ``stride`` (see :mod:`reverso.ir.tags`). The
stages before this one only read the graph.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from reverso.analysis.probe import Probe
from reverso.analysis.report import StageReport
from reverso.ir import Scope, by_name, tags_of


def tag_graph(gm: fx.GraphModule, probe: Probe, report: StageReport) -> None:
    for n in gm.graph.nodes:
        if n in probe.maps:
            tags_of(n).scope = Scope.MAP
        elif n in probe.scaling:
            tags_of(n).scope = Scope.RESHAPED  # channels-last, shuffled, tokens: not NCHW maps
        elif isinstance(n.meta.get("val"), torch.Tensor):
            tags_of(n).scope = Scope.GLOBAL  # pooled vectors, SE gates: never upsampled
    named = by_name(gm)
    for u in report.units:
        for name in u.nodes:
            record = tags_of(named[name])
            record.unit = u.index
            record.stride = u.strided.get(name)
