"""The pipeline: passes run in order, each followed by its checks and, where it asks, width repair.

After every pass the :class:`Pipeline` lints the graph, recompiles it and re-propagates shapes;
after a pass that declares ``changes_widths`` it runs width repair
(:func:`reverso.rewrite.repair.repair_widths`) as a step of its own, recorded and dumped under
the name ``width_repair``. Any failure names the pass (or the repair) and the node. Before
running, the pipeline checks the order the passes declare (``after``/``before``).
``dump_dir=`` writes the graph after every step as readable code, one file per step.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch.fx as fx

from reverso import ir
from reverso.compiler import catalogue
from reverso.compiler.base import Pass
from reverso.errors import (
    OptionError,
    PassError,
    ReversoError,
    UnsupportedTopologyError,
    failed_node,
    failure,
    without_trace_note,
)
from reverso.ir.shapes import propagate, shapes_current, tensor_shape
from reverso.rewrite.repair import repair_widths
from reverso.rewrite.rigid import channel_dim

if TYPE_CHECKING:
    from reverso.planner.context import CompileContext

#: the name under which width repair steps are recorded and dumped
WIDTH_REPAIR = "width_repair"


class Pipeline:
    """An ordered list of passes, editable by name.

    >>> pipe = reverso.default_pipeline()
    >>> pipe.insert_after("multiscale_inputs", MyPass())
    >>> td = reverso.topdown(model, passes=pipe)
    """

    def __init__(self, passes: Iterable[Pass | str] = (), *, dump_dir: str | Path | None = None):
        self.passes: list[Pass] = [_as_pass(p) for p in passes]
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self._check_unique()

    # -- editing -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def index(self, name: str) -> int:
        if name not in self.names:
            raise OptionError(f"no pass named {name!r} in the pipeline; it has {self.names}")
        return self.names.index(name)

    def append(self, p: Pass | str) -> Pipeline:
        self.passes.append(_as_pass(p))
        self._check_unique()
        return self

    def insert_before(self, name: str, p: Pass | str) -> Pipeline:
        self.passes.insert(self.index(name), _as_pass(p))
        self._check_unique()
        return self

    def insert_after(self, name: str, p: Pass | str) -> Pipeline:
        self.passes.insert(self.index(name) + 1, _as_pass(p))
        self._check_unique()
        return self

    def replace(self, name: str, p: Pass | str) -> Pipeline:
        self.passes[self.index(name)] = _as_pass(p)
        self._check_unique()
        return self

    def remove(self, name: str) -> Pipeline:
        del self.passes[self.index(name)]
        return self

    def _check_unique(self) -> None:
        seen = set()
        for n in self.names:
            if n in seen:
                raise OptionError(
                    f"pass name {n!r} appears twice in the pipeline; names must be unique"
                )
            seen.add(n)

    def __iter__(self):
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __repr__(self) -> str:
        return f"Pipeline({self.names})"

    # -- order -------------------------------------------------------------------------------
    def check_order(self) -> None:
        """Refuse an order that breaks what the passes declare, saying how to fix it."""
        names = self.names
        for i, p in enumerate(self.passes):
            for needed in p.after:
                if needed in names[:i]:
                    continue
                present = needed in names
                fix = (
                    f"move '{p.name}' after '{needed}'"
                    if present
                    else f"add it: pipeline.insert_before({p.name!r}, {needed!r})"
                )
                raise OptionError(
                    f"pass '{p.name}' must run after '{needed}', which the pipeline "
                    f"{'runs later' if present else 'does not have'} (order: {names}); {fix}"
                )
            for later in p.before:
                if later in names[:i]:
                    raise OptionError(
                        f"pass '{p.name}' must run before '{later}', but the pipeline runs "
                        f"'{later}' first (order: {names}); move '{p.name}' before '{later}'"
                    )

    # -- running -----------------------------------------------------------------------------
    def run(self, gm: fx.GraphModule, ctx: CompileContext) -> fx.GraphModule:
        self.check_order()
        step = 0
        self._dump(step, "input", gm)
        for p in self.passes:
            result = _attributed(f"pass '{p.name}'", p.name, p, gm, ctx)
            gm = result.graph_module
            ctx.history.append((p.name, result.modified))
            step += 1
            if p.changes_widths and result.modified:
                check_graph(gm, ctx, after=p.name, propagate_shapes=False)
                self._dump(step, p.name, gm, shapes_current=False)
                what = f"width repair after pass '{p.name}'"
                changed = _attributed(what, p.name, repair_widths, gm, ctx)
                ctx.history.append((WIDTH_REPAIR, changed))
                step += 1
                self._dump(step, WIDTH_REPAIR, gm)
            else:
                check_graph(gm, ctx, after=p.name)
                self._dump(step, p.name, gm)
        gm.recompile()  # the code, once: between passes the graph is run by interpretation
        return gm

    def _dump(self, i: int, name: str, gm: fx.GraphModule, *, shapes_current=True) -> None:
        if self.dump_dir is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        gm.recompile()  # the dump shows the graph's code
        title = f"graph after step '{name}'" if i else "traced input graph"
        text = graph_listing(gm, title, shapes_current=shapes_current)
        (self.dump_dir / f"{i:02d}_{name}.py").write_text(text)


def _attributed(what: str, pass_name: str, step, *args):
    """Run one step; a failure names ``what`` ran (the pass, or the repair after it) and where."""
    try:
        return step(*args)
    except ReversoError as err:
        err.args = (f"{what}: {without_trace_note(str(err))}", *err.args[1:])
        err.pass_name = pass_name
        raise
    except Exception as err:
        _refuse_fixed_resolution(args[0], err, what)
        raise PassError(
            f"{what} failed{failure(err)}", pass_name=pass_name, node=failed_node(err)
        ) from err


def _refuse_fixed_resolution(gm, err: Exception, what: str) -> None:
    """A node that failed while combining data with a tensor of the model's own (a position
    embedding, an attention bias, a fixed-size mask) works at one resolution only, and the
    rewritten graph runs it at another: refuse the conversion by naming it."""
    node = ir.by_name(gm).get(failed_node(err)) if isinstance(gm, fx.GraphModule) else None
    fixed = ir.fixed_inputs(node) if node is not None else []
    # a per-channel constant (a gain, a depthwise filter) is bound to a width, not a resolution
    fixed = [a for a in fixed if channel_dim(a.meta.get("val")) is None]
    if fixed:
        raise UnsupportedTopologyError(
            f"{what}: node {ir.describe(gm, node)} combines a feature map with "
            f"'{fixed[0].name}', a tensor of the model's own whose size is fixed to the model's "
            f"resolution ({type(err).__name__}: {str(err).strip().splitlines()[0][:160]}). The "
            "converted network runs this layer at another resolution than the model does, so this "
            "conversion would change what it computes; convert a model whose layers take any "
            "input size"
        ) from err


def check_graph(
    gm: fx.GraphModule, ctx: CompileContext, *, after: str, propagate_shapes: bool = True
) -> None:
    """Lint and re-propagate shapes; failures name the pass and the node. (The code is
    generated once, after the last pass: shape propagation interprets the graph.)"""
    try:
        gm.graph.lint()
    except Exception as err:
        raise PassError(f"pass '{after}' left a malformed graph: {err}", pass_name=after) from err
    if not propagate_shapes or shapes_current(gm):
        return  # width repair propagates next, or the pass ended with a propagation of this graph
    try:
        propagate(gm, ctx.example_input())
    except Exception as err:
        _refuse_fixed_resolution(gm, err, f"pass '{after}'")
        raise PassError(
            f"pass '{after}' left a graph that fails shape propagation{failure(err)}",
            pass_name=after,
            node=failed_node(err),
        ) from err


def graph_listing(gm: fx.GraphModule, title: str, *, shapes_current: bool = True) -> str:
    """Readable code of a GraphModule, then a table of every node: its output shape and, for a
    layer, the layer itself (so that a dump shows which layers a step rebuilt)."""
    rows = []
    for n in gm.graph.nodes:
        shape = tensor_shape(n)
        layer = _layer_line(gm.get_submodule(n.target)) if n.op == "call_module" else ""
        shape_text = str(tuple(shape)) if shape is not None else ""
        rows.append(f"#   {n.name:<36} {n.op:<14} {shape_text:<22} {layer}".rstrip())
    note = "" if shapes_current else " (as before this step: width repair follows)"
    return (
        f"# reverso: {title}\n{gm.code}\n# nodes, shapes{note} and layers:\n"
        + "\n".join(rows)
        + "\n"
    )


def _layer_line(module) -> str:
    """A layer in one line: its repr if short, else its type."""
    text = repr(module)
    return text if "\n" not in text and len(text) <= 80 else type(module).__name__


def _as_pass(p: Pass | str) -> Pass:
    if isinstance(p, Pass):
        return p
    if isinstance(p, str):
        return catalogue.get(p)()
    if callable(p):
        return Pass.from_function(p)
    raise OptionError(f"pipeline entries must be Pass instances or built-in pass names, got {p!r}")
