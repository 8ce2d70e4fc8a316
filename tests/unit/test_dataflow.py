"""Dataflow questions on graphs deeper than Python's recursion limit."""

import sys

import torch
import torch.fx as fx

from reverso.ir.dataflow import fixed_inputs


def test_fixed_inputs_of_a_graph_thousands_of_nodes_deep():
    graph = fx.Graph()
    x = graph.placeholder("x")
    for _ in range(2 * sys.getrecursionlimit()):
        x = graph.call_function(torch.relu, (x,))
    bias = graph.get_attr("bias")
    out = graph.call_function(torch.add, (x, bias))
    graph.output(out)
    root = torch.nn.Module()
    root.bias = torch.nn.Parameter(torch.zeros(1))
    fx.GraphModule(root, graph)  # a valid module
    for n in graph.nodes:  # the shapes propagation would have written
        n.meta["val"] = torch.empty(1, device="meta")
    assert fixed_inputs(out) == [bias]  # the data path is found without recursing per node
