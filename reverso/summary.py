"""Per-stage summaries of bottom-up and top-down networks, printable side by side.

A *stage* is the stem, a group, a standalone transition or the head of the analysis; for a
top-down network it is the same piece at its new place (with its merge).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from . import graph as g
from .analysis import Group, StageReport, analyze_graph
from .network import TopDownNet
from .shapes import channels, level_of, spatial
from .tracing import resolve_input_size, resolve_model, trace


@dataclass
class StageRow:
    name: str
    level: int | None
    resolution: tuple[int, int] | None
    channels: int | None
    params: int


@dataclass
class Summary:
    title: str
    input_size: tuple[int, int, int]
    rows: list[StageRow]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    def lines(self) -> list[str]:
        out = [f"{'stage':<8} {'level':>5} {'resolution':>10} {'channels':>8} {'params':>11}"]
        for r in self.rows:
            res = f"{r.resolution[0]}x{r.resolution[1]}" if r.resolution else "-"
            out.append(
                f"{r.name:<8} {'-' if r.level is None else r.level:>5} {res:>10} "
                f"{'-' if r.channels is None else r.channels:>8} {r.params:>11,}"
            )
        out.append(f"{'total':<8} {'':>5} {'':>10} {'':>8} {self.params:>11,}")
        return out

    def __str__(self) -> str:
        return "\n".join([self.title, *self.lines()])


def summary(model: nn.Module | str, input_size=None, *, name: str | None = None) -> Summary:
    """Stage-by-stage level, resolution, channels and parameters of a bottom-up or top-down net."""
    if isinstance(model, TopDownNet):
        return _topdown_summary(model, name)
    label = name or (model if isinstance(model, str) else type(model).__name__)
    model = resolve_model(model)
    input_size = resolve_input_size(model, input_size)
    gm = trace(model, input_size)
    return _bottom_up_summary(gm, analyze_graph(gm, input_size), label)


def side_by_side(left: Summary, right: Summary, gap: int = 4) -> str:
    """Two summaries next to each other (bottom-up left, top-down right)."""
    a, b = [left.title, *left.lines()], [right.title, *right.lines()]
    width = max(len(x) for x in a)
    rows = max(len(a), len(b))
    a += [""] * (rows - len(a))
    b += [""] * (rows - len(b))
    return "\n".join(f"{x:<{width}}{' ' * gap}{y}".rstrip() for x, y in zip(a, b, strict=True))


def _stage_rows(
    gm: fx.GraphModule, stages: list[tuple[str, set[int], int | None]], input_hw, extra=None
) -> list[StageRow]:
    extra = extra or {}
    rows = []
    for name, units, slot in stages:
        nodes = [n for n in gm.graph.nodes if g.tag(n).get("unit") in units]
        nodes += extra.get(slot, [])
        exit_ = _stage_exit(gm, nodes)
        size = spatial(exit_) if exit_ is not None else None
        rows.append(
            StageRow(
                name,
                level_of(size, input_hw) if size is not None else None,
                size,
                channels(exit_) if exit_ is not None and size is not None else None,
                _params(gm, nodes),
            )
        )
    return rows


def _stage_exit(gm: fx.GraphModule, nodes: list[fx.Node]) -> fx.Node | None:
    inside = set(nodes)
    exits = [n for n in gm.graph.nodes if n in inside and any(u not in inside for u in n.users)]
    return exits[-1] if exits else None


def _params(gm: fx.GraphModule, nodes: list[fx.Node]) -> int:
    seen, total = set(), 0
    for n in nodes:
        if n.op == "call_module":
            for p in gm.get_submodule(n.target).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


def _bottom_up_summary(gm: fx.GraphModule, report: StageReport, name: str) -> Summary:
    stages: list[tuple[str, set[int], int | None]] = []
    if report.stem:
        stages.append(("stem", set(report.stem), None))
    for item in report.items:
        if isinstance(item, Group):
            stages.append((f"G{item.index + 1}", set(item.units), None))
        else:
            stages.append((f"T{item.index + 1}", {item.unit}, None))
    stages.append(("head", set(report.head), None))
    rows = _stage_rows(gm, stages, report.input_size[1:])
    rows[-1].channels = report.num_classes
    return Summary(f"bottom-up {name}", report.input_size, rows)


def _topdown_summary(td: TopDownNet, name: str | None) -> Summary:
    plan, report = td.plan, td.report
    gm = td.features
    merges: dict[int, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if g.tag(n).get("role") == "merge":
            merges.setdefault(g.tag(n)["transition"], []).append(n)
    names = {gr.index: f"G{gr.index + 1}" for gr in report.groups}
    stages: list[tuple[str, set[int], int | None]] = []
    if plan.stem:
        stages.append(("stem", set(plan.stem), None))
    t = 0
    for i, slot in enumerate(plan.slots):
        if slot.kind == "group":
            stages.append((names[slot.bu_group], set(slot.units), i))
        else:
            t += 1
            stages.append((f"T{t}", set(slot.units), i))
    rows = _stage_rows(gm, stages, report.input_size[1:], extra=merges)
    pyramid = [n for n in gm.graph.nodes if g.tag(n).get("role") == "pyramid"]
    rows.insert(0, StageRow("pyramid", None, None, report.input_size[0], _params(gm, pyramid)))
    head_params = sum(p.numel() for p in td.head.parameters())
    rows.append(StageRow("head", None, None, td.num_classes, head_params))
    return Summary(
        f"top-down {name or ''} ({plan.arrangement})".replace("  ", " "), report.input_size, rows
    )
