"""Rewrite helpers the passes share: the width registry, conv surgery, unit views, new layers in
the model's own style, and width repair.

* :mod:`~reverso.rewrite.widths`: how to rebuild each layer type at other widths;
* :mod:`~reverso.rewrite.convs`: a conv at other widths, another kernel, or stride 1;
* :mod:`~reverso.rewrite.unit_views`: a unit's nodes, entry and exit in the current graph
  (the analysis's units, read back from the tags); reordering;
* :mod:`~reverso.rewrite.extract`: a contiguous run of nodes made one call of a new module;
* :mod:`~reverso.rewrite.fitting`: the walk that re-widths a graph (layers, constants, splits);
* :mod:`~reverso.rewrite.classifier`: the one rule that finds a model's classifier;
* :mod:`~reverso.rewrite.layers`: conv/norm/act blocks copied from the model's own types;
* :mod:`~reverso.rewrite.repair`: width repair, run by the pipeline after passes that need it.
"""

from reverso.lazy import submodules

__getattr__ = submodules(__name__)
