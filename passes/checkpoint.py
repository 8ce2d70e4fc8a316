"""checkpoint: activation checkpointing, segment boundaries chosen on the graph.

Autograd keeps, for backward, what each layer saves in the forward (a conv its input, a ReLU its
output, ...). Checkpointing a segment keeps only the segment's inputs and recomputes the rest
during backward. The pass cuts the graph's nodes (in execution order) into contiguous segments
and runs each as a :class:`~reverso.nn.CheckpointSegment`:

* **cost model** (per sample, from the shapes propagated at ``input_size``): the bytes a node
  leaves for backward are its output's bytes (views and size arithmetic: none); a segment's
  *internal* bytes are the sum over its nodes; the forward keeps the union of the segments'
  inputs (a value read by several segments, like the input image of the top-down pyramid, once);
  backward adds one checkpointed segment's internal bytes at a time. The peak is the sum of the
  two.
* **default**: the segmentation with the smallest peak. Segments are grown greedily up to a
  threshold of internal bytes and cut where the fewest bytes cross; the threshold is scanned
  (about the square root rule: many short segments keep many inputs, few long ones recompute a
  large internal). Every checkpointed node runs twice: about one extra forward.
* ``budget`` (bytes per sample, or for the batch when ``input_size`` has a batch dimension): the
  least-recompute plan whose peak fits. Segments are taken out of checkpointing, those with the
  most compute per byte kept first, while the peak stays within the budget.
* a cut never separates an in-place op from a value it modifies (the saved input would change).

The segments appear in the network's code as ``segment_0``, ``segment_1``, ...; the layers keep
their names (and the state_dict its keys).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import OptionError
from reverso.ir.dataflow import is_mutation
from reverso.nn.checkpoint import CheckpointSegment
from reverso.options import CheckpointOptions
from reverso.rewrite.extract import replace_run

#: nodes that only reshape or read sizes: they leave nothing of their own for backward
_FREE = {
    "view", "reshape", "flatten", "permute", "transpose", "unsqueeze", "squeeze", "expand",
    "contiguous", "size", "dim", "chunk", "split", "unbind", "narrow", "t",
}  # fmt: skip


@dataclass
class SegmentPlan:
    """Segments as (start, end) positions into ``nodes`` (end exclusive), which are checkpointed,
    and the estimated bytes per sample: kept by the forward, and the peak during backward."""

    nodes: list[fx.Node]
    segments: list[tuple[int, int]]
    checkpointed: list[bool]
    kept: float = 0.0
    peak: float = 0.0
    internal: list[float] = field(default_factory=list)
    recompute: float = 0.0  # estimated multiply-adds run again in backward


class Checkpoint(Pass):
    name = "checkpoint"

    Options = CheckpointOptions  # budget
    inside_topdown = False
    inside_topdown_instead = "pass memory='checkpoint' to reverso.topdown, or checkpoint its result"

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        plan = plan_segments(gm, self.settings.budget, batch=ctx.batch)
        ctx.results.checkpoint = plan
        runs = [
            plan.nodes[s:e]
            for (s, e), on in zip(plan.segments, plan.checkpointed, strict=True)
            if on
        ]
        for i, run in enumerate(runs):
            replace_run(gm, run, ir.unique_name(gm, f"segment_{i}"), CheckpointSegment)
        gm.recompile()
        return PassResult(gm, bool(runs))


def plan_segments(gm: fx.GraphModule, budget: float | None = None, batch: int = 1) -> SegmentPlan:
    """The segmentation the pass applies (see the module's docstring)."""
    nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    if not nodes:
        return SegmentPlan(nodes, [], [])
    cost = _Costs(gm, nodes)
    totals = sum(cost.internal)
    largest = max(cost.internal)
    candidates = [
        _evaluate(cost, _greedy(cost, largest * (totals / largest) ** (k / 24))) for k in range(25)
    ]
    best = min(candidates, key=lambda p: (p.peak, len(p.segments)))
    if budget is None:
        return best
    budget = budget / batch
    fitting = [p for p in candidates if p.peak <= budget]
    if not fitting:
        raise OptionError(
            f"checkpoint budget {budget * batch:.3g} bytes is below what the model needs with "
            f"every segment checkpointed: about {best.peak * batch:.3g} bytes (estimated from the "
            "shapes at input_size); raise the budget, or use a smaller batch or input"
        )
    relaxed = [_relax(cost, p, budget) for p in fitting]
    return min(relaxed, key=lambda p: (p.recompute, p.peak))


class _Costs:
    """Per-node bytes per sample, compute estimates and which cuts are allowed."""

    def __init__(self, gm: fx.GraphModule, nodes: list[fx.Node]):
        self.nodes = nodes
        self.pos = {n: i for i, n in enumerate(nodes)}
        self.internal = [0.0 if _free(n) or _identity(gm, n) else _bytes(n) for n in nodes]
        self.flops = [_flops(gm, n) for n in nodes]
        self.values = [
            v
            for v in gm.graph.nodes
            if v.op in ("placeholder", *("call_module", "call_function", "call_method"))
            and _bytes(v) > 0
        ]
        self.forbidden = [False] * len(nodes)  # cut after position p not allowed
        for n in nodes:
            target = _mutated(gm, n)
            if target is None:
                continue
            while (source := _alias_source(gm, target)) is not None:
                target = source  # the op changes what the alias shares memory with, too
            for p in range(max(self.pos.get(target, -1), 0), self.pos[n]):
                self.forbidden[p] = True
        self.crossing = [0.0] * len(nodes)
        for v in self.values:
            first, last = self.pos.get(v, -1), self.last_use(v)
            for p in range(max(first, 0), min(last, len(nodes))):
                self.crossing[p] += _bytes(v)

    def last_use(self, v: fx.Node) -> int:
        return max((self.pos.get(u, len(self.nodes)) for u in v.users), default=-1)

    def inputs(self, start: int, end: int) -> set[fx.Node]:
        return {
            a
            for n in self.nodes[start:end]
            for a in n.all_input_nodes
            if self.pos.get(a, -1) < start and _bytes(a) > 0
        }


def _greedy(cost: _Costs, threshold: float) -> list[tuple[int, int]]:
    segments, start, acc = [], 0, 0.0
    for i, b in enumerate(cost.internal):
        if acc + b > threshold and i > start:
            # cut where the fewest bytes cross, in the second half of the segment
            allowed = [p for p in range((start + i) // 2, i) if not cost.forbidden[p]]
            if allowed:
                cut = min(allowed, key=lambda p: (cost.crossing[p], -p))
                segments.append((start, cut + 1))
                start = cut + 1
                acc = sum(cost.internal[start:i])
        acc += b
    segments.append((start, len(cost.nodes)))
    return segments


def _evaluate(cost: _Costs, segments, checkpointed=None) -> SegmentPlan:
    checkpointed = checkpointed or [True] * len(segments)
    internal = [sum(cost.internal[s:e]) for s, e in segments]
    kept_values: set[fx.Node] = set()
    kept = 0.0
    for (s, e), on, inner in zip(segments, checkpointed, internal, strict=True):
        kept_values |= cost.inputs(s, e)
        kept += 0.0 if on else inner
    kept += sum(_bytes(v) for v in kept_values)
    on = list(zip(segments, internal, checkpointed, strict=True))
    largest = max((inner for _, inner, c in on if c), default=0.0)
    flops = sum(sum(cost.flops[s:e]) for (s, e), _, c in on if c)
    return SegmentPlan(
        cost.nodes, list(segments), list(checkpointed), kept, kept + largest, internal, flops
    )


def _relax(cost: _Costs, plan: SegmentPlan, budget: float) -> SegmentPlan:
    """Take segments out of checkpointing (most compute per byte first) while the peak fits."""
    order = sorted(
        range(len(plan.segments)),
        key=lambda i: -sum(cost.flops[slice(*plan.segments[i])]) / max(plan.internal[i], 1.0),
    )
    for i in order:
        trial = list(plan.checkpointed)
        trial[i] = False
        candidate = _evaluate(cost, plan.segments, trial)
        if candidate.peak <= budget:
            plan = candidate
    return plan


def _bytes(n: fx.Node) -> float:
    """Bytes per sample of a node's tensor value(s) with a batch dimension (0 for sizes)."""

    def size(v) -> float:
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.is_floating_point():
            return v.numel() * v.element_size() / max(v.shape[0], 1)
        if isinstance(v, (tuple, list)):
            return sum(size(x) for x in v)
        return 0.0

    return size(n.meta.get("val"))


def _identity(gm: fx.GraphModule, n: fx.Node) -> bool:
    """An ``nn.Identity`` (a feature tap): its output is its input, nothing of its own."""
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), torch.nn.Identity)


def _free(n: fx.Node) -> bool:
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    return n.op != "call_module" and (name in _FREE or n.target is operator.getitem)


def _flops(gm: fx.GraphModule, n: fx.Node) -> float:
    """Multiply-adds per sample of convs and linears; the output size for any other node."""
    out = _bytes(n) / 4
    m = ir.module_of(gm, n)
    if isinstance(m, torch.nn.Conv2d):
        return out * m.in_channels // m.groups * math.prod(m.kernel_size)
    if isinstance(m, torch.nn.Linear):
        return out * m.in_features
    return out


def _mutated(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    """The value an in-place node modifies (its first argument), or None."""
    name = getattr(n.target, "__name__", "") if n.op == "call_function" else ""
    in_place = (
        is_mutation(n)
        or (name.endswith("_") and not name.startswith("_"))  # torch.relu_, F.relu_, ...
        or n.kwargs.get("inplace") is True
        or getattr(ir.module_of(gm, n), "inplace", False) is True
    )
    first = n.args[0] if n.args else None
    return first if in_place and isinstance(first, fx.Node) else None


def _alias_source(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    """The value ``n`` may share memory with: the input of a view, or of a parameter-free layer
    that may hand its input back (an identity, a dropout or drop-block that is off)."""
    if not n.all_input_nodes:
        return None
    if n.op != "call_module":
        return n.all_input_nodes[0] if _free(n) else None
    m = gm.get_submodule(n.target)
    name = type(m).__name__.lower()
    if next(m.parameters(), None) is None and ("identity" in name or "drop" in name):
        return n.all_input_nodes[0]
    return None
