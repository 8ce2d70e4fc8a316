"""The compile context: options, the bottom-up analysis and the top-down plan, computed once.

Passes read what they need from here instead of re-deriving it: which unit goes where, at
which level each slot runs, which kernel each lateral copies, which types new layers take.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from . import graph as g
from .analysis import StageReport, Transition
from .errors import OptionError
from .nn import MERGES, PYRAMIDS, UPSAMPLE_MODES
from .shapes import channels, is_feature_map
from .tracing import example_input, model_dtype
from .widths import REGISTRY, WidthRegistry

ARRANGEMENTS = ("td", "uni", "rev")


@dataclass(frozen=True)
class TopDownOptions:
    arrangement: str = "td"
    width: int | None = None  # the uni width when given explicitly
    merge: str = "add_concat"
    upsample: str = "nearest"
    pyramid: str = "gaussian"

    @classmethod
    def create(
        cls, arrangement="td", merge="add_concat", upsample="nearest", pyramid="gaussian"
    ) -> TopDownOptions:
        width = None
        if isinstance(arrangement, bool) or not isinstance(arrangement, (str, int)):
            raise OptionError(
                f"arrangement must be 'td', 'uni', 'rev' or an int width, got {arrangement!r}"
            )
        if isinstance(arrangement, int):
            if arrangement < 1:
                raise OptionError(f"a uniform width must be a positive int, got {arrangement}")
            arrangement, width = "uni", arrangement
        for name, value, allowed in (
            ("arrangement", arrangement, ARRANGEMENTS),
            ("merge", merge, MERGES),
            ("upsample", upsample, UPSAMPLE_MODES),
            ("pyramid", pyramid, PYRAMIDS),
        ):
            if value not in allowed:
                raise OptionError(
                    f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}"
                )
        return cls(arrangement, width, merge, upsample, pyramid)


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


@dataclass
class Context:
    """What every pass can rely on: the source model, the input size and the width registry."""

    model: nn.Module
    input_size: tuple[int, int, int]
    registry: WidthRegistry = field(default=REGISTRY, kw_only=True)
    history: list[tuple[str, bool]] = field(default_factory=list, kw_only=True)
    state: dict = field(default_factory=dict, kw_only=True)  # free space for user passes

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
        return self._bu_nodes()[name]

    def _bu_nodes(self) -> dict[str, fx.Node]:
        if "_bu_nodes" not in self.state:
            self.state["_bu_nodes"] = {n.name: n for n in self.bu.graph.nodes}
        return self.state["_bu_nodes"]


def make_plan(report: StageReport, options: TopDownOptions, bu: fx.GraphModule) -> TopDownPlan:
    """Lay the bottom-up stem, groups and transitions out in top-down order (spec section 3)."""
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
    named = {n.name: n for n in bu.graph.nodes}
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
    return DEFAULT_KERNEL if node is None else g.conv_kernel(bu, node)


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
            if nxt.op == "call_module" and (g.is_norm(bu, nxt) or g.is_activation(bu, nxt)):
                followers.append(copy.deepcopy(bu.get_submodule(nxt.target)))
            elif g.is_activation(bu, nxt) and _act_module(nxt) is not None:  # F.relu(x), x.relu()
                followers.append(_act_module(nxt))
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
        if g.tag(n).get("unit") in body_units and is_feature_map(n) and not g.tag(n).get("global")
    ]
    # the convs' widths; in a model whose convs are all of its own types, every feature map's
    widths = [channels(n) for n in body if g.is_conv(bu, n)] or [channels(n) for n in body]
    return int(statistics.median_low(widths))


def prototypes_of(bu: fx.GraphModule, report: StageReport) -> dict[str, nn.Module]:
    """Copies of the model's own conv, norm and activation layers, for the layers passes add."""
    named = {n.name: n for n in bu.graph.nodes}
    protos = {}
    for key, name in report.prototypes.items():
        node = named[name]
        if node.op == "call_module":
            protos[key] = copy.deepcopy(bu.get_submodule(node.target))
    act_node = named.get(report.prototypes.get("act", ""))
    if "act" not in protos and act_node is not None and _act_module(act_node) is not None:
        protos["act"] = _act_module(act_node)  # functional activations (F.relu, x.sigmoid())
    if "act" not in protos:  # activations living inside norm-act layers (timm's BatchNormAct2d)
        for m in bu.modules():
            if isinstance(m, g.ACTIVATIONS):
                protos["act"] = copy.deepcopy(m)
                break
    return protos


def _act_module(node: fx.Node) -> nn.Module | None:
    """An activation module for a functional activation call (F.relu -> nn.ReLU())."""
    name = getattr(node.target, "__name__", node.target)
    module = _ACT_MODULES.get(str(name).rstrip("_"))
    return module() if module is not None else None


_ACT_MODULES = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "mish": nn.Mish,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
