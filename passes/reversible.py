"""reversible: runs of residual units -> i-RevNet coupling blocks (docs/methods/irevnet.md,
section 7).

The rules, on the fx graph of any model (a bottom-up net, or the top-down net reverso emits):

1. **Eligible unit** (:mod:`reverso.rewrite.residuals`): an addition ``s + r`` of two NCHW maps of
   one shape (``s`` possibly through ``nn.Identity`` calls) where ``r`` is computed from ``s``
   alone (the *branch*: every node between them is used only inside the branch) and holds at
   least one layer that sets its width: a residual unit with an identity shortcut. Its width C
   must be even. A unit with a projection shortcut ``P(s) + F(s)`` (a transition) is eligible
   only with ``transitions="psi"`` (rule 5).
2. **Trunk**: consecutive eligible units (the next one's shortcut is this one's addition) form a
   run. An activation between them (a post-activation trunk, as torchvision's and timm's
   ResNets) is refused, or with ``post_act="move"`` moved into the next branch: the next unit
   then reads ``y + F(act(y))`` (the function changes).
3. **Coupling**: each unit's branch becomes F of a :class:`~reverso.nn.CouplingBlock`: its input
   layers take C/2 channels, the layer that closes it gives C/2 (and the norms after it follow),
   inner widths are kept (``mid="keep"``) or halved (``mid="half"``). Changed layers are rebuilt
   through the width registry with fresh weights, as width repair does: no exact rewriting of
   y = x + F(x) as a coupling of two half-width streams exists, so the net is retrained.
   Per-channel gains and constant split sizes follow (:mod:`reverso.rewrite.fitting`); a branch
   that still cannot be halved keeps its width between two 1x1 convs, with a warning.
4. Each run becomes one :class:`~reverso.nn.ReversibleSequence` (split at its entry, merged at
   its exit) that keeps only its output for backward (``memory_saving=True``).

5. **Transitions** (``transitions=``): ``"keep"`` (RevNet's choice) leaves a strided unit (one
   with a projection shortcut) as it is: the net is not invertible and stores its activations.
   ``"psi"`` makes it a downsampling coupling block: psi(2) on both halves, F with its strided
   first conv from C/2 channels to 4 x C/2, the projection dropped. The trunk then grows 4x per
   transition (not 2x); the layers after the runs (the head) are rebuilt for the new width.
   Sizes must be even at every such transition (odd ones are refused; padding would break
   bijectivity).
6. **Stem** (``stem=``): ``"keep"`` leaves it; ``"psi"`` replaces everything before the first run
   by psi(2^k) for the stem's total downsampling 2^k, plus zero channels up to the run's width
   (injective); a run narrower than psi's 3 x 4^k channels is refused.

With ``stem="psi"`` and ``transitions="psi"`` the whole body is invertible: the converted model
has ``forward_features`` (Phi x) and ``inverse`` (:class:`~reverso.nn.InvertibleGraphModule`).
"""

from __future__ import annotations

import warnings

import torch
import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.compiler.base import Pass, PassResult
from reverso.errors import InputSizeError, UnsupportedTopologyError, WidthError
from reverso.ir.dataflow import is_mutation
from reverso.ir.shapes import channels, propagate, spatial
from reverso.nn.reversible import CouplingBlock, InjectivePad, ReversibleSequence
from reverso.nn.space_to_depth import SpaceToDepth
from reverso.options import ReversibleOptions
from reverso.rewrite.extract import body_of, replace_run
from reverso.rewrite.fitting import WidthFitting
from reverso.rewrite.residuals import ResidualUnit, graph_order, residual_units, runs
from reverso.rewrite.widths import width_defining


class Reversible(Pass):
    name = "reversible"

    Options = ReversibleOptions  # transitions, stem, memory_saving, mid, post_act
    inside_topdown = False
    inside_topdown_instead = (
        "pass memory='reversible' to reverso.topdown, or apply it to its result"
    )

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        psi = self.settings.transitions == "psi"
        if psi and ir.pyramid_levels(gm):
            raise UnsupportedTopologyError(
                "transitions='psi' makes downsamplings invertible, but a top-down net's "
                "transitions upsample: use transitions='keep' for top-down nets"
            )
        _trunk_activations(gm, residual_units(gm), move=self.settings.post_act == "move")
        chains = runs(residual_units(gm), transitions=psi)
        if not chains:
            raise UnsupportedTopologyError(
                f"{type(ctx.model).__name__} has no residual unit with an identity shortcut "
                "(y = x + F(x), x and F(x) NCHW maps of one shape) for a coupling block to replace"
            )
        for i, chain in enumerate(chains):
            width = channels(chain[0].shortcut)  # the trunk's width now
            blocks = []
            for u in chain:
                stride = u.stride if u.projection else 1
                _check_even(gm, u, stride)
                blocks.append(
                    CouplingBlock(
                        _coupling_function(gm, u, width, stride, self.settings.mid), stride
                    )
                )
                width *= stride * stride
            sequence = ReversibleSequence(blocks, memory_saving=self.settings.memory_saving)
            nodes = sorted({n for u in chain for n in u.nodes}, key=graph_order(gm))
            replace_run(gm, nodes, ir.unique_name(gm, f"reversible_{i}"), lambda _, s=sequence: s)
            _rewidth(gm, ctx)  # what follows reads the run's width (4x per psi transition)
        if self.settings.stem == "psi":
            _psi_stem(gm, ctx)
        gm.delete_all_unused_submodules()
        gm.recompile()
        ctx.results.reversible = [len(chain) for chain in chains]
        return PassResult(gm, True)


def _trunk_activations(gm: fx.GraphModule, units: list[ResidualUnit], *, move: bool) -> None:
    """Rule 2: an op between one unit's addition and the next unit (a ReLU after the add)."""
    adds = {u.add for u in units}
    for u in units:
        act = u.shortcut
        if act.op == "placeholder" or len(act.all_input_nodes) != 1 or u.projection:
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


def _check_even(gm: fx.GraphModule, unit: ResidualUnit, stride: int) -> None:
    h, w = spatial(unit.shortcut)
    if stride == 2 and (h % 2 or w % 2):
        raise InputSizeError(
            f"the transition at node {ir.describe(gm, unit.add)} receives a {h}x{w} map; psi(2) "
            "needs even sizes (padding would break bijectivity): use an input size divisible by "
            "the model's total downsampling, or transitions='keep'"
        )


def _coupling_function(gm: fx.GraphModule, unit: ResidualUnit, width: int, stride: int, mid: str):
    """Rule 3: the branch as F of a coupling block, from width/2 channels to width/2 x stride^2
    (the size of psi(2) of a half at stride 2). A branch whose layers cannot all be re-widthed
    keeps its own width between two 1x1 convs (:func:`_kept_width`)."""
    inside = set(unit.branch)
    output = next(a for a in unit.add.args[:2] if a in inside)
    body = body_of(gm, unit.branch, output=output)
    closing = _closing_layer(body)
    out = width // 2 * stride * stride
    x = torch.empty((2, width // 2, *spatial(unit.shortcut)), device="meta")

    def width_of(target, rule, module):
        if target == closing:
            return out
        return rule.out_width(module) // 2 if mid == "half" else rule.out_width(module)

    try:
        with torch.no_grad():
            y = WidthFitting(body, width_of=width_of, strict=True).run(x)
        if not isinstance(y, torch.Tensor) or y.shape[1] != out:  # a slice to a fixed width
            raise WidthError(f"the re-widthed branch gives {_shape(y)} instead of {out} channels")
    except (RuntimeError, WidthError) as err:
        return _kept_width(gm, unit, output, width // 2, out, err)
    _out_of_place(body)
    body.recompile()
    return body


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _kept_width(gm: fx.GraphModule, unit: ResidualUnit, output: fx.Node, cin: int, out: int, err):
    """F = exit(branch(entry(x))): the branch as it is (its weights too), entered by a 1x1 conv
    from the coupling's ``cin`` channels to the width it reads and left by one to ``out``."""
    body = body_of(gm, unit.branch, output=output)  # afresh: the failed walk changed its copy
    _out_of_place(body)
    body.recompile()
    reads, gives = channels(unit.shortcut), channels(output)
    node = getattr(err, "_reverso_node", None)
    at = f"at node '{node}': " if node else ""
    warnings.warn(
        f"the residual function of the unit ending at {ir.describe(gm, unit.add)} cannot be "
        f"re-widthed to {cin} channels ({at}{str(err).splitlines()[0]}); it keeps "
        f"its {reads} channels between a 1x1 conv from the coupling's {cin} and one to {out} "
        "(mid= does not apply to it). To halve it instead, register width rules for its layers "
        "(reverso.register_width_rule)",
        stacklevel=4,
    )
    entry, exit_ = nn.Conv2d(cin, reads, 1), nn.Conv2d(gives, out, 1)
    return nn.Sequential(ir.placed_in(body, entry), body, ir.placed_in(body, exit_))


def _rewidth(gm: fx.GraphModule, ctx) -> None:
    """The layers after a run take the width it now gives (the head after psi transitions)."""
    try:
        with torch.no_grad():
            WidthFitting(gm).run(ctx.example_input())
    except RuntimeError as err:
        raise UnsupportedTopologyError(
            f"after the psi transitions the layers that follow a reversible run cannot take its "
            f"width (at node '{getattr(err, '_reverso_node', '?')}': {str(err).splitlines()[0]}): "
            "a join outside the runs ties widths together; use transitions='keep'"
        ) from None
    gm.recompile()


def _psi_stem(gm: fx.GraphModule, ctx) -> None:
    """Rule 6: everything before the first run becomes psi(2^k) and zero channels."""
    first = next(
        n
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), ReversibleSequence)
    )
    (entry,) = first.all_input_nodes
    image = next(n for n in gm.graph.nodes if n.op == "placeholder")
    (c, h, w), (eh, ew) = ctx.input_size, spatial(entry)
    block = h // eh
    if block * eh != h or block * ew != w or block & (block - 1):
        raise UnsupportedTopologyError(
            f"the stem before '{first.target}' turns {h}x{w} into {eh}x{ew}, not a power-of-two "
            "downsampling that psi can replace: use stem='keep'"
        )
    width, have = channels(entry), c * block * block
    if width < have:
        raise UnsupportedTopologyError(
            f"psi({block}) gives {have} channels, more than the {width} the first reversible run "
            f"'{first.target}' takes (the stem would have to drop information): use stem='keep'"
        )
    dropped = [n for n in _ancestors(entry) if ir.is_add(n)]
    if dropped:
        raise UnsupportedTopologyError(
            f"the residual unit ending at node {ir.describe(gm, dropped[-1])} comes before the "
            f"first reversible run '{first.target}' and cannot become a coupling block (a "
            "projection that keeps the size, say); stem='psi' would drop it: use stem='keep'"
        )
    x = image
    if block > 1:
        x = ir.add_module_node(gm, "stem_psi", SpaceToDepth(block), (x,), after=x)
    if width > have:
        x = ir.add_module_node(gm, "stem_pad", InjectivePad(width - have), (x,), after=x)
    entry.replace_all_uses_with(x, delete_user_cb=lambda user: user is first)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    propagate(gm, ctx.example_input())


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _out_of_place(body: fx.GraphModule) -> None:
    """F must not change its input in place (docs/methods/irevnet.md, section 6, pitfall ii: the
    input is also the block's first output): in-place activations and methods of the branch run
    out of place."""
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
