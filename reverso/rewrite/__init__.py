"""Rewrite helpers the passes share: the width registry, conv surgery, unit views, new layers in
the model's own style, and width repair.

* :mod:`~reverso.rewrite.widths`: how to rebuild each layer type at other widths;
* :mod:`~reverso.rewrite.convs`: a conv at other widths, another kernel, or stride 1;
* :mod:`~reverso.rewrite.units`: a unit's nodes, entry and exit in the current graph; reordering;
* :mod:`~reverso.rewrite.layers`: conv/norm/act blocks copied from the model's own types;
* :mod:`~reverso.rewrite.repair`: width repair, run by the pipeline after passes that need it.
"""

from reverso.lazy import submodules

__getattr__ = submodules(__name__)
