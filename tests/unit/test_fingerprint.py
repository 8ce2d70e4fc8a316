"""Shapes count as current only while nothing shape-relevant of the graph changed."""

import torch
import torch.fx as fx
from torch import nn

from reverso.ir.shapes import propagate, shapes_current


class Net(nn.Module):
    def forward(self, x):
        return torch.flatten(x.relu(), start_dim=1)


def traced():
    gm = fx.symbolic_trace(Net())
    propagate(gm, torch.rand(2, 3, 4, 4))
    assert shapes_current(gm)
    return gm


def test_a_changed_target_makes_shapes_stale():
    gm = traced()
    relu = next(n for n in gm.graph.nodes if n.target == "relu")
    relu.target = "sigmoid"  # what passes/reversible.py does to a node in place
    assert not shapes_current(gm)


def test_changed_keyword_arguments_make_shapes_stale():
    gm = traced()
    flat = next(n for n in gm.graph.nodes if n.target is torch.flatten)
    flat.kwargs = {"start_dim": 2}
    assert not shapes_current(gm)


def test_an_untouched_graph_stays_current():
    gm = traced()
    gm.recompile()
    assert shapes_current(gm)


def test_a_copy_of_a_propagated_deep_graph_counts_its_shapes_unchecked():
    """A deep copy of a GraphModule whose shapes were propagated neither copies the fingerprint's
    nodes one by one (a recursion as deep as the graph) nor claims the copy's shapes current."""
    import copy

    gm = fx.symbolic_trace(nn.Sequential(*[nn.ReLU() for _ in range(3000)]))
    propagate(gm, torch.empty(2, 3, device="meta"))
    assert shapes_current(gm)
    twin = copy.deepcopy(gm)
    assert not shapes_current(twin)
