"""The pass interface: a small object in the style of torch.fx's pass infrastructure.

``requires`` checks preconditions, ``call`` rewrites the GraphModule and returns it with a flag
saying whether anything changed, ``ensures`` checks postconditions. A pass also declares where
it may run (``after``: passes that must have run before it; ``before``: passes that, when the
pipeline has them, must come after it) and whether it may leave layers receiving another width
(``changes_widths``: the pipeline then runs width repair as a step of its own).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch.fx as fx

from reverso.compiler import catalogue
from reverso.errors import OptionError

if TYPE_CHECKING:
    from reverso.planner.context import CompileContext


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


class Pass:
    """Base class of a graph rewrite. Subclasses set ``name`` and implement ``call``."""

    name: str = ""
    #: passes that must have run before this one (the pipeline refuses an order without them)
    after: ClassVar[tuple[str, ...]] = ()
    #: passes that, when the pipeline has them, must run after this one
    before: ClassVar[tuple[str, ...]] = ()
    #: the pass may leave layers receiving another width: width repair runs after it
    changes_widths: ClassVar[bool] = False
    #: the record of the pass's options (:mod:`reverso.options`); None: the pass takes none
    Options: ClassVar[type | None] = None
    #: the pass may run inside :func:`reverso.topdown`'s pipeline; if not, what to do instead
    inside_topdown: ClassVar[bool] = True
    inside_topdown_instead: ClassVar[str] = ""

    def __init__(self, **options):
        if not self.name:
            self.name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()
        if self.Options is None and options:
            raise OptionError(f"the pass {self.name!r} takes no options, got {', '.join(options)}")
        #: the checked options (an instance of ``Options``), None for a pass without options
        self.settings = self.Options.from_dict(options, where=self.name) if self.Options else None

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
        if catalogue.lookup(self.name) is not type(self):
            return None
        return {"name": self.name, "kwargs": self.options()}

    def options(self) -> dict:
        """The pass's options as JSON (its ``settings``; none by default)."""
        return self.settings.to_json() if self.settings is not None else {}

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
