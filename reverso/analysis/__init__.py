"""The analysis: a bottom-up CNN in the vocabulary of the top-down method, as pure stages
(docs/methods/topdown.md, section 2). The stages read the graph and never change it (the front
end's :func:`~reverso.frontend.normalize.canonicalize` makes the edits they need first).

``analyze_graph`` runs the stages in order, each a function of the ones before it:

1. :func:`~reverso.analysis.probe.probe`: the image input, the logits, which values scale;
   :func:`~reverso.analysis.positions.refuse_position_readers` refuses layers that read the
   map's positions by number or order;
2. :func:`~reverso.analysis.segments.find_segments`: the main path and the pieces between;
3. :func:`~reverso.analysis.levels.measure_levels` and
   :func:`~reverso.analysis.levels.downsampling_nodes`: levels and where they rise;
4. :func:`~reverso.analysis.units.build_units`: units (layers, blocks, pools) and the head;
5. :func:`~reverso.analysis.stages.build_report`: stem, groups, transitions: the
   :class:`StageReport`;
6. :func:`~reverso.analysis.tagging.tag_graph`: the per-node facts written into the graph.
"""

from __future__ import annotations

import torch.fx as fx

from reverso.analysis.levels import check_strides_survive, downsampling_nodes, measure_levels
from reverso.analysis.positions import refuse_position_readers
from reverso.analysis.probe import probe
from reverso.analysis.report import Group, StageReport, Transition, Unit
from reverso.analysis.segments import find_segments
from reverso.analysis.stages import build_report
from reverso.analysis.tagging import tag_graph
from reverso.analysis.units import build_units
from reverso.frontend.normalize import canonicalize
from reverso.frontend.tracing import resolve_input_size, resolve_model, trace
from reverso.lazy import submodules

__all__ = ["Group", "StageReport", "Transition", "Unit", "analyze", "analyze_graph"]


def analyze(model, input_size=None, *, leaf_modules=()) -> StageReport:
    """Trace ``model`` and report its levels, units, groups, transitions, stem and head."""
    model = resolve_model(model)
    input_size = resolve_input_size(model, input_size)
    gm = trace(model, input_size, leaf_modules=leaf_modules)
    canonicalize(gm, input_size)
    return analyze_graph(gm, input_size)


def analyze_graph(gm: fx.GraphModule, input_size: tuple[int, int, int]) -> StageReport:
    """Analyse a traced GraphModule whose nodes carry shapes for ``input_size`` (brought into
    canonical form by :func:`reverso.frontend.normalize.canonicalize`). The stages read the
    graph; the last one writes the per-node facts into the nodes' ``meta``."""
    values = probe(gm, input_size)
    refuse_position_readers(gm, values)
    segments = find_segments(gm, values)
    levels = measure_levels(gm, values, tuple(input_size)[1:])
    strided = downsampling_nodes(gm, levels, segments)
    check_strides_survive(gm, input_size)
    units, preact = build_units(gm, values, segments, levels, strided)
    report = build_report(gm, input_size, values, levels, units, preact)
    tag_graph(gm, values, report)
    return report


__getattr__ = submodules(__name__)
