"""The compile context: options, the bottom-up analysis and the top-down plan, computed once.

Passes read what they need from here instead of re-deriving it: which unit goes where, at
which level each slot runs, which kernel each lateral copies, which types new layers take.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.analysis import StageReport
from reverso.frontend.tracing import example_input, model_dtype
from reverso.ir import activations
from reverso.options import TopDownOptions
from reverso.planner.plan import TopDownPlan
from reverso.rewrite.widths import REGISTRY, WidthRegistry


@dataclass
class PassResults:
    """What the built-in passes leave for the conversion that runs them (typed; a user's pass
    keeps its own results in ``Context.state``)."""

    antialiased: list[str] = field(default_factory=list)  # the antialias pass's rewritten nodes
    njet_report: object = None  # the njet pass's NJetReport
    frames_report: object = None  # the frames pass's report
    steerable_report: object = None  # the steerable pass's report
    checkpoint: object = None  # the checkpoint pass's segment plan
    reversible: list[int] = field(default_factory=list)  # units per reversible run


@dataclass
class Context:
    """What every pass can rely on: the source model, the input size and the width registry."""

    model: nn.Module
    input_size: tuple[int, int, int]
    registry: WidthRegistry = field(default=REGISTRY, kw_only=True)
    history: list[tuple[str, bool]] = field(default_factory=list, kw_only=True)
    state: dict = field(default_factory=dict, kw_only=True)  # free space for user passes
    #: what the built-in passes hand on (they never use ``state``)
    results: PassResults = field(default_factory=PassResults, kw_only=True)
    #: the training batch the memory passes (checkpoint) plan for
    batch: int = field(default=1, kw_only=True)
    #: units width repair keeps at their own width, behind an entry projection
    fixed_width: set[int] = field(default_factory=set, kw_only=True)
    #: the user's leaf_modules (classes and module paths): layers asked to run whole
    leaf_modules: tuple = field(default=(), kw_only=True)

    def example_input(self) -> torch.Tensor:
        return example_input(self.input_size, dtype=model_dtype(self.model))


@dataclass
class CompileContext(Context):
    """The top-down compiler's context: also the analysis, the plan and the model's layer types."""

    options: TopDownOptions
    bu: fx.GraphModule  # the traced bottom-up model, with shapes; read-only
    report: StageReport
    plan: TopDownPlan
    prototypes: dict[str, nn.Module]

    def node(self, name: str) -> fx.Node:
        """A node of the bottom-up graph by name."""
        if self._bu_nodes is None:
            self._bu_nodes = ir.by_name(self.bu)
        return self._bu_nodes[name]

    def opening_width(self, unit: int, exit_width: int) -> int:
        """The width a group opening with bottom-up unit ``unit`` must receive (every group keeps
        its own widths: docs/methods/topdown.md, sections 3 and 5): the unit's output width
        (``exit_width``, as the graph has it now), or for a unit that grows from its input (a
        dense block) the width it reads in the bottom-up net, or the ``uni`` width."""
        if not self.report.units[unit].grows:
            return exit_width
        return self.plan.uni_width or self.report.units[unit].in_width

    _bu_nodes: dict[str, fx.Node] | None = field(default=None, init=False, repr=False)


def prototypes_of(bu: fx.GraphModule, report: StageReport) -> dict[str, nn.Module]:
    """Copies of the model's own conv, norm and activation layers, for the layers passes add."""
    named = ir.by_name(bu)
    protos = {}
    for key, name in report.prototypes.items():
        node = named[name]
        if node.op == "call_module":
            protos[key] = copy.deepcopy(bu.get_submodule(node.target))
    last = protos.pop("norm_last", None)
    if "norm" not in protos and last is not None:  # new layers run on NCHW maps
        protos["norm"] = channels_first_layernorm(last)
    act_node = named.get(report.prototypes.get("act", ""))
    if "act" not in protos and act_node is not None:
        act = activations.module_for(act_node.target)  # functional: F.relu, x.sigmoid()
        if act is not None:
            protos["act"] = act
    if "act" not in protos:  # activations living inside norm-act layers (timm's BatchNormAct2d)
        for m in bu.modules():
            if isinstance(m, ir.ACTIVATIONS):
                protos["act"] = copy.deepcopy(m)
                break
    return protos


def channels_first_layernorm(ln: nn.LayerNorm) -> nn.Module:
    """The NCHW counterpart of a channels-last LayerNorm (its width, eps and affine): timm's
    LayerNorm2d, which normalises dimension 1."""
    from timm.layers import LayerNorm2d

    return LayerNorm2d(ln.normalized_shape[-1], eps=ln.eps, affine=ln.elementwise_affine)
