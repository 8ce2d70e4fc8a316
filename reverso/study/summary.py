"""Per-stage summaries of bottom-up and top-down networks, printable side by side.

A *stage* is the stem, a group, a standalone transition or the head of the analysis; for a
top-down network it is the same piece at its new place (with its merge).

Costs are measured by running the network once on one image (batch 1, eval mode, no grad):
FLOPs with ``torch.utils.flop_counter`` (a multiply-add counts 2), activation memory as the bytes
of every tensor the stage's operations produce (views and in-place ops excluded). The bytes saved
for backward (what a training step really keeps, :func:`reverso.saved_bytes`) come from a second
run in training mode on two images, per image.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from reverso import ir
from reverso.analysis import Group, StageReport, analyze_graph
from reverso.convert.network import TopDownNet
from reverso.frontend.tracing import (
    random_input,
    resolve_input_size,
    resolve_model,
    trace,
)
from reverso.ir.modes import evaluating
from reverso.ir.shapes import channels, level_of, spatial
from reverso.nn import CheckpointSegment
from reverso.rewrite.extract import inlined
from reverso.study.memory import node_saved_bytes, saved_bytes


@dataclass
class StageRow:
    name: str
    level: int | None
    resolution: tuple[int, int] | None
    channels: int | None
    params: int
    flops: int = 0
    activation_bytes: int = 0
    saved_bytes: int = 0


@dataclass
class Summary:
    title: str
    input_size: tuple[int, int, int]
    rows: list[StageRow]
    #: bytes saved for backward per image by the network as it runs (checkpointed segments keep
    #: only their inputs), when that differs from the stage rows' plain sum
    saved_as_run: int | None = None

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.rows)

    @property
    def activation_bytes(self) -> int:
        return sum(r.activation_bytes for r in self.rows)

    @property
    def saved_bytes(self) -> int:
        return sum(r.saved_bytes for r in self.rows)

    def __getitem__(self, name: str) -> StageRow:
        return next(r for r in self.rows if r.name == name)

    def lines(self) -> list[str]:
        out = [
            f"{'stage':<8} {'level':>5} {'resolution':>10} {'channels':>8} {'params':>11} "
            f"{'FLOPs':>8} {'act. MB':>8} {'saved MB':>8}"
        ]
        for r in self.rows:
            res = f"{r.resolution[0]}x{r.resolution[1]}" if r.resolution else "-"
            out.append(
                f"{r.name:<8} {'-' if r.level is None else r.level:>5} {res:>10} "
                f"{'-' if r.channels is None else r.channels:>8} {r.params:>11,} "
                f"{_si(r.flops):>8} {r.activation_bytes / 2**20:>8.2f} "
                f"{r.saved_bytes / 2**20:>8.2f}"
            )
        out.append(
            f"{'total':<8} {'':>5} {'':>10} {'':>8} {self.params:>11,} {_si(self.flops):>8} "
            f"{self.activation_bytes / 2**20:>8.2f} {self.saved_bytes / 2**20:>8.2f}"
        )
        if self.saved_as_run is not None:
            out.append(
                f"checkpointed: {self.saved_as_run / 2**20:.2f} MB saved for backward per image"
            )
        return out

    def __str__(self) -> str:
        return "\n".join([self.title, *self.lines()])


def summary(model: nn.Module | str, input_size=None, *, name: str | None = None) -> Summary:
    """Stage by stage: level, resolution, channels, parameters, FLOPs and activation memory of a
    bottom-up model (or timm name) or a :class:`~reverso.TopDownNet` (per image)."""
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
    gm: fx.GraphModule,
    stages: list[tuple[str, set[int], int | None]],
    input_size,
    costs: dict[str, tuple[int, int]],
    saved: dict[str, int],
    extra=None,
) -> list[StageRow]:
    extra = extra or {}
    rows, counted = [], set()
    for name, units, slot in stages:
        own = [n for n in gm.graph.nodes if ir.unit_of(n) in units]
        nodes = list(dict.fromkeys(own + extra.get(slot, [])))  # each node once
        counted.update(nodes)
        exit_ = _stage_exit(gm, nodes)
        size = spatial(exit_) if exit_ is not None else None
        rows.append(
            StageRow(
                name,
                level_of(size, input_size[1:]) if size is not None else None,
                size,
                channels(exit_) if exit_ is not None and size is not None else None,
                _params(gm, nodes),
                sum(costs[n.name][0] for n in nodes),
                sum(costs[n.name][1] for n in nodes),
                sum(saved.get(n.name, 0) for n in nodes),
            )
        )
    rest = [n for n in gm.graph.nodes if n not in counted and n.name in costs]
    rest_params = _params(gm, rest)
    rest_saved = sum(saved.get(n.name, 0) for n in rest)
    if any(costs[n.name] != (0, 0) for n in rest) or rest_params or rest_saved:
        # glue outside every stage (e.g. the image pyramid): its own row, so totals stay true
        flops, memory = (sum(costs[n.name][i] for n in rest) for i in (0, 1))
        rows.insert(0, StageRow("other", None, None, None, rest_params, flops, memory, rest_saved))
    return rows


class _ActivationMeter(TorchDispatchMode):
    """Counts the bytes of every tensor an operation creates (not views, not in-place results)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if all(r.alias_info is None for r in func._schema.returns):
            self.bytes += sum(
                t.numel() * t.element_size()
                for t in tree_leaves(out)
                if isinstance(t, torch.Tensor)
            )
        return out


@contextmanager
def _metered():
    """Counts FLOPs and activation bytes of what runs inside; read them after the block."""
    with FlopCounterMode(display=False) as flops, _ActivationMeter() as memory:
        yield flops, memory


def node_costs(gm: fx.GraphModule, input_size) -> tuple[dict[str, tuple[int, int]], object]:
    """(FLOPs, activation bytes) of every node of ``gm`` on one image of ``input_size``, and the
    output of that run."""
    costs: dict[str, tuple[int, int]] = {}

    class Meter(fx.Interpreter):
        def run_node(self, n):
            with _metered() as (flops, memory):
                out = super().run_node(n)
            costs[n.name] = (flops.get_total_flops(), memory.bytes)
            return out

    out = Meter(gm).run(_one_image(gm, input_size))
    return costs, out


def module_costs(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(FLOPs, activation bytes) of one call of ``module`` on ``x``."""
    with _metered() as (flops, memory):
        module(x)
    return flops.get_total_flops(), memory.bytes


def _one_image(model: nn.Module, input_size) -> torch.Tensor:
    return _images(model, input_size, 1)


def _images(model: nn.Module, input_size, n: int) -> torch.Tensor:
    return random_input(model, input_size, n)


def _saved_per_image(gm: fx.GraphModule, report: StageReport) -> dict[str, int]:
    """Bytes saved for backward per node, per image (two images: batch norm needs two)."""
    per_node = node_saved_bytes(gm, _images(gm, report.input_size, 2))
    return {name: b // 2 for name, b in per_node.items()}


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


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
    with evaluating(gm), torch.no_grad():
        costs, _ = node_costs(gm, report.input_size)
    rows = _stage_rows(gm, stages, report.input_size, costs, _saved_per_image(gm, report))
    rows[-1].channels = report.num_classes
    return Summary(f"bottom-up {name}", report.input_size, rows)


def _topdown_summary(td: TopDownNet, name: str | None) -> Summary:
    plan, report = td.plan, td.report
    gm = inlined(td.features, lambda m: isinstance(m, CheckpointSegment))
    cut = len(gm.graph.nodes) != len(td.features.graph.nodes)
    merges: dict[int, list[fx.Node]] = {}
    for n in ir.nodes_with_role(gm, ir.Role.MERGE):
        merges.setdefault(ir.tags_of(n).transition, []).append(n)
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
    pyramid = ir.nodes_with_role(gm, ir.Role.PYRAMID)
    stages.insert(0, ("pyramid", set(), "pyramid"))
    extra = merges | {"pyramid": pyramid}
    with evaluating(td), torch.no_grad():
        costs, features = node_costs(gm, report.input_size)
        head_flops, head_bytes = module_costs(td.head, features)
    two = _images(gm, report.input_size, 2)
    head_saved = saved_bytes(td.head, td.features(two)) // 2
    rows = _stage_rows(gm, stages, report.input_size, costs, _saved_per_image(gm, report), extra)
    rows[0].level, rows[0].resolution, rows[0].channels = None, None, report.input_size[0]
    head_params = sum(p.numel() for p in td.head.parameters())
    rows.append(
        StageRow(
            "head", None, None, td.num_classes, head_params, head_flops, head_bytes, head_saved
        )
    )
    as_run = saved_bytes(td, _images(gm, report.input_size, 2)) // 2 if cut else None
    return Summary(
        f"top-down {name or _source_name(td.recipe.get('source'))} ({plan.arrangement})".replace(
            "  ", " "
        ),
        report.input_size,
        rows,
        as_run,
    )


def _source_name(source: dict | None) -> str:
    if not source:
        return ""
    return source.get("timm") or source.get("factory", "").rpartition(":")[2]
