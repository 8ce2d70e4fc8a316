"""reversible: runs of residual units -> i-RevNet coupling blocks (spec irevnet.md, section 7).

The rules, on the fx graph of any model (a bottom-up net, or the top-down net reverso emits):

1. **Eligible unit**: an addition ``s + r`` of two maps of one shape where ``r`` is computed from
   ``s`` alone (the *branch*: every node between them is used only inside the branch) and holds at
   least one layer that sets its width. That is a residual unit with an identity shortcut (a
   projection shortcut, as in transitions, is not one). Its width C must be even.
2. **Trunk**: consecutive eligible units (the next one's shortcut is this one's addition) form a
   run. An activation between them (a post-activation trunk, as torchvision's and timm's
   ResNets) is refused, or with ``post_act="move"`` moved into the next branch: the next unit
   then reads ``y + F(act(y))`` (the function changes).
3. **Coupling**: each unit's branch becomes F of a :class:`~reverso.nn.CouplingBlock`: its input
   layers take C/2 channels, the layer that closes it gives C/2 (and the norms after it follow),
   inner widths are kept (``mid="keep"``) or halved (``mid="half"``). Changed layers are rebuilt
   through the width registry with fresh weights, as width repair does: no exact rewriting of
   y = x + F(x) as a coupling of two half-width streams exists, so the net is retrained.
4. Each run becomes one :class:`~reverso.nn.ReversibleSequence` (split at its entry, merged at
   its exit) that keeps only its output for backward (``memory_saving=True``).

Transitions and the stem stay ordinary layers (``transitions="keep"``, ``stem="keep"``: RevNet's
choice; the net is not invertible, and memory grows with the number of transitions only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import OptionError, UnsupportedTopologyError
from reverso.ir.dataflow import is_mutation
from reverso.ir.shapes import ShapeProp, channels
from reverso.nn.reversible import CouplingBlock, ReversibleSequence
from reverso.rewrite.segments import body_of, replace_run
from reverso.rewrite.widths import REGISTRY, unknown_layer_error, width_defining

_CHOICES = {
    "transitions": ("keep",),
    "stem": ("keep",),
    "mid": ("keep", "half"),
    "post_act": ("refuse", "move"),
}


@dataclass
class ResidualUnit:
    add: fx.Node  # s + r
    shortcut: fx.Node  # s
    branch: list[fx.Node]  # the nodes computing r from s, in graph order


class Reversible(Pass):
    name = "reversible"

    def __init__(
        self,
        *,
        transitions: str = "keep",
        stem: str = "keep",
        memory_saving: bool = True,
        mid: str = "keep",
        post_act: str = "refuse",
    ):
        super().__init__()
        for name, value in (("transitions", transitions), ("stem", stem), ("mid", mid),
                            ("post_act", post_act)):  # fmt: skip
            if value not in _CHOICES[name]:
                raise OptionError(
                    f"{name}={value!r} is not supported; choose one of "
                    f"{', '.join(map(repr, _CHOICES[name]))}"
                    + (" (psi transitions and stems are not built yet)" if value == "psi" else "")
                )
        self.transitions, self.stem, self.mid, self.post_act = transitions, stem, mid, post_act
        self.memory_saving = memory_saving

    def options(self) -> dict:
        return {
            "transitions": self.transitions, "stem": self.stem, "mid": self.mid,
            "post_act": self.post_act, "memory_saving": self.memory_saving,
        }  # fmt: skip

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        units = residual_units(gm)
        _trunk_activations(gm, units, move=self.post_act == "move")
        units = residual_units(gm)  # the moved activations are inside the branches now
        runs = _runs(units)
        if not runs:
            raise UnsupportedTopologyError(
                f"{type(ctx.model).__name__} has no residual unit with an identity shortcut "
                "(y = x + F(x), x and F(x) of one shape) for a coupling block to replace"
            )
        for i, run in enumerate(runs):
            blocks = [CouplingBlock(_half_width_branch(gm, u, self.mid)) for u in run]
            nodes = sorted({n for u in run for n in (*u.branch, u.add)}, key=_order(gm))
            sequence = ReversibleSequence(blocks, memory_saving=self.memory_saving)
            replace_run(gm, nodes, ir.unique_name(gm, f"reversible_{i}"), lambda _, s=sequence: s)
        gm.delete_all_unused_submodules()
        gm.recompile()
        ctx.state["reversible"] = [len(run) for run in runs]
        return PassResult(gm, True)


def residual_units(gm: fx.GraphModule) -> list[ResidualUnit]:
    """Every addition of a map and a branch computed from it alone (rule 1), in graph order."""
    units = []
    for add in gm.graph.nodes:
        if (
            not ir.is_add(add)
            or len(add.args) < 2
            or not all(isinstance(a, fx.Node) for a in add.args[:2])
        ):
            continue
        a, b = add.args[:2]
        va, vb = a.meta.get("val"), b.meta.get("val")
        if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)):
            continue
        if va.shape != vb.shape or va.dim() != 4:
            continue
        for s, r in ((a, b), (b, a)):
            branch = _branch(gm, s, r, add)
            if branch is not None:
                units.append(ResidualUnit(add, s, branch))
                break
    return units


def _branch(gm: fx.GraphModule, s: fx.Node, r: fx.Node, add: fx.Node) -> list[fx.Node] | None:
    """The nodes computing ``r`` from ``s`` alone, used only there, or None."""
    inside: set[fx.Node] = set()
    stack = [r]
    while stack:
        n = stack.pop()
        if n is s or n in inside or n.op == "get_attr":
            continue
        if n.op in ("placeholder", "output"):
            return None  # reads something besides s
        inside.add(n)
        stack.extend(n.all_input_nodes)
    if s in inside or any(u not in inside and u is not add for n in inside for u in n.users):
        return None
    if not any(width_defining(gm, n) for n in inside if n.op == "call_module"):
        return None
    return sorted(inside, key=_order(gm))


def _order(gm: fx.GraphModule):
    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    return position.__getitem__


def _trunk_activations(gm: fx.GraphModule, units: list[ResidualUnit], *, move: bool) -> None:
    """Rule 2: an op between one unit's addition and the next unit (a ReLU after the add)."""
    adds = {u.add for u in units}
    for u in units:
        act = u.shortcut
        if act.op == "placeholder" or len(act.all_input_nodes) != 1:
            continue
        previous = act.all_input_nodes[0]
        if previous not in adds or not ir.is_activation(gm, act):
            continue
        if not move:
            raise UnsupportedTopologyError(
                f"node {ir.describe(gm, act)} sits on the residual trunk between two residual "
                f"units (after '{previous.name}', a post-activation block): a coupling block's "
                "trunk carries only the addition. Pass post_act='move' to move it into the next "
                "unit's residual function (the network then computes y + F(act(y)))"
            )
        u.add.replace_input_with(act, previous)  # the shortcut skips the activation


def _runs(units: list[ResidualUnit]) -> list[list[ResidualUnit]]:
    """Maximal chains of eligible units (rule 1: even width; not nested in another unit's
    branch), each reading the previous one's addition and nothing else reading it."""
    nested = {n for u in units for n in u.branch}
    runs: list[list[ResidualUnit]] = []
    for u in units:
        if u.add in nested or channels(u.add) % 2:
            continue
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and u.shortcut is last.add
            and set(last.add.users) <= {*u.branch, u.add}
        ):
            runs[-1].append(u)
        else:
            runs.append([u])
    return runs


def _half_width_branch(gm: fx.GraphModule, unit: ResidualUnit, mid: str) -> fx.GraphModule:
    """Rule 3: the branch as a GraphModule from C/2 channels to C/2."""
    body = body_of(gm, unit.branch)
    c = channels(unit.add)
    closing = _closing_layer(body)
    x = torch.empty((2, c // 2, *unit.shortcut.meta["val"].shape[2:]), device="meta")

    class Halve(ShapeProp):
        def call_module(self, target, args, kwargs):
            module = self.fetch_attr(target)
            width = int(args[0].shape[1]) if args and isinstance(args[0], torch.Tensor) else None
            rule = REGISTRY.lookup(module)
            if rule is None:
                if any(True for _ in module.parameters()):
                    raise unknown_layer_error(
                        module, f"'{target}' in the branch of '{unit.add.name}'"
                    )
            elif rule.preserves_width(module):
                if width != rule.in_width(module):
                    ir.set_module(body, target, REGISTRY.rebuild(module, width))
            else:
                out = rule.out_width(module)
                out = c // 2 if target == closing else (out // 2 if mid == "half" else out)
                if (width, out) != (rule.in_width(module), rule.out_width(module)):
                    ir.set_module(body, target, REGISTRY.rebuild(module, width, out))
            return super().call_module(target, args, kwargs)

    with torch.no_grad():
        Halve(body).run(x)
    _out_of_place(body)
    body.recompile()
    return body


def _out_of_place(body: fx.GraphModule) -> None:
    """F must not change its input in place (spec 6, pitfall ii: the input is also the block's
    first output): in-place activations and methods of the branch run out of place."""
    for n in body.graph.nodes:
        if n.op == "call_module" and getattr(body.get_submodule(n.target), "inplace", False):
            body.get_submodule(n.target).inplace = False
        elif n.kwargs.get("inplace") is True:
            n.kwargs = {**n.kwargs, "inplace": False}
        elif n.op == "call_method" and is_mutation(n) and hasattr(torch.Tensor, n.target[:-1]):
            n.target = n.target[:-1]  # x.relu_() -> x.relu()


def _closing_layer(body: fx.GraphModule) -> str | None:
    """The last width-defining layer of the branch (its output width is the branch's)."""
    targets = [
        n.target for n in body.graph.nodes if n.op == "call_module" and width_defining(body, n)
    ]
    return targets[-1] if targets else None
