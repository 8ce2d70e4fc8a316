"""The plan: where every bottom-up unit goes in the top-down net and at which level it runs.

The top-down sequence is the stem, then the groups last to first (``td``, ``uni``) or in their
order (``rev``); each transition stays at its ordinal position. Laterals at level l copy the
bottom-up conv that opens level l; the ``uni`` width is the median of the body's conv widths.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.analysis import StageReport, Transition
from reverso.ir import activations
from reverso.ir.shapes import channels, is_feature_map
from reverso.options import TopDownOptions


@dataclass
class Slot:
    """A position of the top-down body: a group, or a standalone transition."""

    kind: str  # "group" | "transition"
    units: list[int]  # bottom-up unit indices placed here, in order
    up: int  # upsampling factor at the start of the slot (1: none)
    level: int  # level of the slot's features in the top-down net
    bu_group: int | None = None  # index of the bottom-up group placed here


@dataclass
class LateralSpec:
    """What a lateral at one level copies: the bottom-up conv opening that level (+ its norm/act)."""

    conv: nn.Conv2d
    followers: list[nn.Module]


@dataclass
class TopDownPlan:
    """Where every bottom-up unit goes in the top-down net and at which level it runs."""

    arrangement: str
    stem: list[int]
    slots: list[Slot]
    head: list[int]
    entry_level: int
    end_level: int
    uni_width: int | None
    laterals: dict[int, LateralSpec]
    group_kernels: dict[int, int]  # bottom-up group -> kernel of its opening conv (rev)

    @property
    def pyramid_levels(self) -> list[int]:
        """Levels the pyramid must provide: the entry and the target of every upsampling."""
        return sorted({self.entry_level} | {s.level for s in self.slots if s.up > 1})

    @property
    def up_slots(self) -> list[tuple[int, Slot]]:
        return [(i, s) for i, s in enumerate(self.slots) if s.up > 1]

    def body_order(self) -> list[int]:
        """Bottom-up unit indices in top-down order (stem first)."""
        return [*self.stem, *(u for s in self.slots for u in s.units)]


def make_plan(report: StageReport, options: TopDownOptions, bu: fx.GraphModule) -> TopDownPlan:
    """Lay the bottom-up stem, groups and transitions out in top-down order
    (docs/methods/topdown.md, section 3)."""
    groups = report.groups
    order = groups if options.arrangement == "rev" else groups[::-1]
    slots: list[Slot] = []
    level = report.levels
    placed = iter(order)
    for item in report.items:
        if isinstance(item, Transition):
            up = 1 if item.first else item.factor
            level -= int(math.log2(up))
            slots.append(Slot("transition", [item.unit], up, level))
        else:
            group = next(placed)
            t = item.transition
            up = t.factor if t is not None and not t.first else 1
            level -= int(math.log2(up))
            slots.append(Slot("group", list(group.units), up, level, group.index))
    end_level = (
        report.units[report.body[0]].out_level if report.units[report.body[0]].is_transition else 0
    )
    if level != end_level:  # pragma: no cover - guarded by the analysis
        raise AssertionError(f"top-down schedule ends at level {level}, expected {end_level}")
    plan = TopDownPlan(
        arrangement=options.arrangement,
        stem=list(report.stem),
        slots=slots,
        head=list(report.head),
        entry_level=report.levels,
        end_level=end_level,
        uni_width=None,
        laterals={},
        group_kernels={},
    )
    named = ir.by_name(bu)
    plan.laterals = {
        lv: _lateral_spec(bu, named, report, lv)
        for lv in plan.pyramid_levels
        if lv != plan.entry_level
    }
    if options.arrangement == "uni":
        plan.uni_width = options.width or _median_width(bu, named, report)
    if options.arrangement == "rev":
        plan.group_kernels = {
            s.bu_group: _opening_kernel(bu, named, report, s.level)
            for s in slots
            if s.kind == "group"
        }
    return plan


#: the kernel of laterals (and of ``rev`` groups) in a model without an nn.Conv2d to copy
DEFAULT_KERNEL = 3


def _opening_node(named, report: StageReport, level: int) -> fx.Node | None:
    """The bottom-up conv that opens ``level`` (or, if none does, the nearest coarser level);
    None in a model whose convs are all of its own types (registered with the width registry)."""
    levels = sorted(report.opening)
    candidates = [lv for lv in levels if lv >= level] or levels[::-1]
    return named[report.opening[candidates[0]]] if candidates else None


def _opening_kernel(bu, named, report: StageReport, level: int) -> int:
    node = _opening_node(named, report, level)
    return DEFAULT_KERNEL if node is None else ir.conv_kernel(bu, node)


def _lateral_spec(bu, named, report: StageReport, level: int) -> LateralSpec:
    node = _opening_node(named, report, level)
    if node is None:  # nothing to copy: a plain conv (its widths are set where it is placed)
        return LateralSpec(nn.Conv2d(1, 1, DEFAULT_KERNEL, padding=DEFAULT_KERNEL // 2), [])
    conv = bu.get_submodule(node.target)
    if not isinstance(conv, nn.Conv2d):
        conv = next(m for m in conv.modules() if isinstance(m, nn.Conv2d))
    followers = []
    if not report.preact:  # post-activation: the lateral keeps the conv's norm and activation
        current = node
        while len(current.users) == 1:
            nxt = next(iter(current.users))
            if nxt.op == "call_module" and (ir.is_norm(bu, nxt) or ir.is_activation(bu, nxt)):
                followers.append(copy.deepcopy(bu.get_submodule(nxt.target)))
            elif ir.is_activation(bu, nxt) and activations.module_for(nxt.target) is not None:
                followers.append(activations.module_for(nxt.target))  # F.relu(x), x.relu()
            else:
                break
            current = nxt
    return LateralSpec(copy.deepcopy(conv), followers)


def _median_width(bu, named, report: StageReport) -> int:
    """The median of the body's conv output widths (the 'uni' arrangement's width)."""
    body_units = set(report.body)
    body = [
        n
        for n in bu.graph.nodes
        if ir.unit_of(n) in body_units and is_feature_map(n) and not ir.is_global(n)
    ]
    # the convs' widths; in a model whose convs are all of its own types, every feature map's
    widths = [channels(n) for n in body if ir.is_conv(bu, n)] or [channels(n) for n in body]
    return int(statistics.median_low(widths))
