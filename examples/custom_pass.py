"""Write your own pass and insert it into the top-down pipeline by name.

Two passes: one swaps every activation of the top-down net for SiLU (graph nodes, functional
calls and the layers inside merges), the other adds a Dropout after each merge.

    python examples/custom_pass.py
"""

from __future__ import annotations

import argparse

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import reverso
from reverso import ir

FUNCTIONAL_ACTIVATIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.leaky_relu}


class SwapActivations(reverso.Pass):
    """Replace every activation (modules anywhere in the net, and functional calls) by ``make()``."""

    name = "swap_activations"

    def __init__(self, make=nn.SiLU):
        super().__init__()
        self.make = make

    def call(self, gm: fx.GraphModule, ctx) -> reverso.PassResult:
        changed = False
        for module in list(gm.modules()):
            for child_name, child in module.named_children():
                if isinstance(child, ir.ACTIVATIONS) and not isinstance(child, self.make):
                    setattr(
                        module, child_name, self.make()
                    )  # also reaches inside merges and norm-acts
                    changed = True
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target in FUNCTIONAL_ACTIVATIONS:
                node.target, node.args, node.kwargs = F.silu, node.args[:1], {}
                changed = True
        return reverso.PassResult(gm, changed)

    def ensures(self, gm, ctx) -> None:
        left = [
            type(m).__name__
            for m in gm.modules()
            if isinstance(m, ir.ACTIVATIONS) and not isinstance(m, self.make)
        ]
        assert not left, f"activations left: {left}"


class DropoutAfterMerges(reverso.Pass):
    """Add ``nn.Dropout(p)`` right after each merge of the top-down net."""

    name = "dropout_after_merges"
    after = ("multiscale_inputs",)  # the pipeline refuses an order that puts it earlier

    def __init__(self, p: float = 0.1):
        super().__init__()
        self.p = p

    def call(self, gm: fx.GraphModule, ctx) -> reverso.PassResult:
        merges = ir.nodes_with_role(gm, ir.Role.MERGE)  # found by their tag, not by names
        for node in merges:
            drop = ir.add_module_node(
                gm,
                f"{node.target}_dropout",
                nn.Dropout(self.p),
                (node,),
                after=node,
                meta_from=node,
            )
            node.replace_all_uses_with(
                drop, delete_user_cb=lambda user, drop=drop: user is not drop
            )
        return reverso.PassResult(gm, bool(merges))


def build(model: nn.Module, input_size, p: float = 0.1) -> reverso.TopDownNet:
    pipeline = reverso.default_pipeline()
    pipeline.append(SwapActivations(nn.SiLU))
    pipeline.insert_after("multiscale_inputs", DropoutAfterMerges(p))
    return reverso.topdown(model, input_size=input_size, passes=pipeline)


def main(argv=None) -> reverso.TopDownNet:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="lenet_fc", help="a reverso.models name (default lenet_fc)"
    )
    args = parser.parse_args(argv)
    model = reverso.models.create(args.model)
    td = build(model, model.pretrained_cfg["input_size"])
    print(td.code)
    print("passes run:", ", ".join(td.recipe["passes"]))
    return td


if __name__ == "__main__":
    main()
