"""Passes and the pipeline that runs them.

A pass is a small object in the style of torch.fx's pass infrastructure: ``requires`` checks
preconditions, ``call`` rewrites the GraphModule and returns it with a flag saying whether
anything changed, ``ensures`` checks postconditions. The :class:`Pipeline` runs passes in order
and, after each one, lints the graph, recompiles it and re-propagates shapes; any failure names
the pass and the node. ``dump_dir=`` writes every intermediate graph as readable code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch.fx as fx

from .errors import OptionError, PassError, ReversoError
from .shapes import fingerprint, propagate, tensor_shape

if TYPE_CHECKING:
    from .context import CompileContext


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


class Pass:
    """Base class of a graph rewrite. Subclasses set ``name`` and implement ``call``."""

    name: str = ""

    def __init__(self):
        if not self.name:
            self.name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        """Raise if the graph is not in a state this pass can work on."""

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        raise NotImplementedError

    def ensures(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        """Raise if the pass did not leave the graph as promised."""

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        self.requires(gm, ctx)
        result = self.call(gm, ctx)
        if isinstance(result, fx.GraphModule):  # plain functions may return the module only
            result = PassResult(result, True)
        self.ensures(result.graph_module, ctx)
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def config(self) -> dict | None:
        """``{"name": ..., "kwargs": ...}`` that rebuilds this pass from a saved file (JSON), or
        None for passes only the user's code knows (they cannot be rebuilt by :func:`reverso.load`)."""
        from reverso.passes import BUILTIN

        if BUILTIN.get(self.name) is not type(self):
            return None
        return {"name": self.name, "kwargs": self.options()}

    def options(self) -> dict:
        """The constructor keyword arguments of a built-in pass (none by default)."""
        return {}

    @staticmethod
    def from_function(
        fn: Callable[[fx.GraphModule, CompileContext], object], name: str | None = None
    ) -> Pass:
        """Wrap ``fn(gm, ctx) -> gm | PassResult`` as a pass."""
        return _FunctionPass(fn, name or fn.__name__)


class _FunctionPass(Pass):
    def __init__(self, fn, name: str):
        self.fn = fn
        self.name = name

    def call(self, gm, ctx):
        return self.fn(gm, ctx)


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

    # -- running -----------------------------------------------------------------------------
    def run(self, gm: fx.GraphModule, ctx: CompileContext) -> fx.GraphModule:
        self._dump(0, "input", gm)
        for i, p in enumerate(self.passes, start=1):
            try:
                result = p(gm, ctx)
            except ReversoError as err:
                err.args = (f"pass '{p.name}': {err}", *err.args[1:])
                err.pass_name = p.name
                raise
            except Exception as err:
                raise PassError(
                    f"pass '{p.name}' failed: {type(err).__name__}: {err}", pass_name=p.name
                ) from err
            gm = result.graph_module
            check_graph(gm, ctx, after=p.name)
            ctx.history.append((p.name, result.modified))
            self._dump(i, p.name, gm)
        return gm

    def _dump(self, i: int, name: str, gm: fx.GraphModule) -> None:
        if self.dump_dir is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        path = self.dump_dir / f"{i:02d}_{name}.py"
        path.write_text(
            graph_listing(gm, f"graph after pass '{name}'" if i else "traced input graph")
        )


def check_graph(gm: fx.GraphModule, ctx: CompileContext, *, after: str) -> None:
    """Lint, recompile and re-propagate shapes; failures name the pass and the node."""
    try:
        gm.graph.lint()
    except Exception as err:
        raise PassError(f"pass '{after}' left a malformed graph: {err}", pass_name=after) from err
    gm.recompile()
    if gm.meta.get("shapes_of") == fingerprint(gm):
        return  # the pass ended with a full propagation (width repair) of this very graph
    try:
        propagate(gm, ctx.example_input())
    except Exception as err:
        node = getattr(err, "_reverso_node", None)
        where = f" at node '{node}'" if node else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PassError(
            f"pass '{after}' left a graph that fails shape propagation{where}: {type(err).__name__}: {first}",
            pass_name=after,
            node=node,
        ) from err


def graph_listing(gm: fx.GraphModule, title: str) -> str:
    """Readable code of a GraphModule with each node's output shape as a comment table."""
    rows = []
    for n in gm.graph.nodes:
        shape = tensor_shape(n)
        rows.append(f"#   {n.name:<40} {n.op:<14} {tuple(shape) if shape is not None else ''}")
    return f"# reverso: {title}\n{gm.code}\n# node shapes:\n" + "\n".join(rows) + "\n"


def _as_pass(p: Pass | str) -> Pass:
    if isinstance(p, Pass):
        return p
    if isinstance(p, str):
        from . import passes

        return passes.get(p)()
    if callable(p):
        return Pass.from_function(p)
    raise OptionError(f"pipeline entries must be Pass instances or built-in pass names, got {p!r}")


def default_pipeline(*, dump_dir: str | Path | None = None) -> Pipeline:
    """The built-in top-down pipeline, in order."""
    from . import passes

    return Pipeline([cls() for cls in passes.DEFAULT], dump_dir=dump_dir)
