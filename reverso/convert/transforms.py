"""The sibling rewrites as one call each: ``reverso.njet(model)``, ``reverso.antialias(model)``,
``reverso.checkpoint(model)`` and ``reverso.reversible(model)``."""

from __future__ import annotations

from collections.abc import Iterable

import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.compiler.pipeline import Pipeline
from reverso.convert.recipe import Recipe, origin
from reverso.convert.steps import graph_rewrite, keep_model_attributes, module_swap, working_copy
from reverso.errors import OptionError, check_choice
from reverso.frontend.provenance import SourceModel, qualified_name
from reverso.frontend.tracing import check_leaves, resolve_input_size, resolve_model, trace
from reverso.names import MEMORY_MODES
from reverso.options import NJetOptions
from reverso.planner.context import Context


def njet(
    model: nn.Module | str,
    *,
    input_size=None,
    order: int = 3,
    sigma: float = 1.0,
    learn_sigma: bool = True,
    init: str = "random",
    memory: str | None = None,
    **layer_kwargs,
) -> nn.Module:
    """A copy of ``model`` with every spatial (k > 1) conv swapped for an ``NJetConv2d``.

    1x1 convs stay; stride and groups are kept; output sizes are kept for every input size; a
    dilated conv's dilation becomes its scale. ``init="project"`` fits each existing kernel in the
    basis (least squares, small search over sigma) so a trained model keeps working; the copy's
    ``njet_report`` lists every layer's sigma and relative reconstruction error. The copy keeps the
    model's class and methods (a timm model stays a timm model). ``memory="checkpoint"`` or
    ``"reversible"`` then applies :func:`checkpoint` or :func:`reverso.reversible` as
    :func:`reverso.topdown` does (a model that is not a TopDownNet becomes a GraphModule).
    """
    from reverso.passes.njet import swap_spatial_convs

    values = {"order": order, "sigma": sigma, "learn_sigma": learn_sigma, "init": init}
    settings = NJetOptions.from_dict(values | layer_kwargs)
    check_choice("memory", memory, MEMORY_MODES)

    def swap(m: nn.Module) -> None:
        m.njet_report = swap_spatial_convs(m, **settings.to_json())

    converted = module_swap(model, input_size, settings, swap)
    # the size resolved and checked
    return with_memory(converted, memory, converted.reverso_recipe.input_size)


def antialias(
    model: nn.Module | str,
    *,
    input_size=None,
    filter_size: int = 4,
    stem: bool = False,
    pad_mode: str = "reflect",
    variant: str = "reverso",
    checkpoint=None,
    leaf_modules: Iterable[type | str] = (),
) -> fx.GraphModule:
    """``model`` with anti-aliased downsampling (BlurPool), as a GraphModule with readable code.

    Every original weight is kept (same names, same values, so a pretrained state_dict loads into
    the result); output sizes are those of the original for every input size; ``filter_size=1``
    reproduces the original outputs exactly. ``stem=True`` also anti-aliases the first strided conv.

    ``variant="official"`` builds the official antialiased-cnns model instead (from a torchvision
    resnet, densenet, vgg, alexnet or mobilenet_v2: its avg-pool and max-pool replacements, see
    :mod:`reverso.passes.antialias`; ``stem=True`` is its ``pool_only=False``), and
    ``checkpoint=`` (a path or a state_dict) loads one of its checkpoints by the name mapping of
    :func:`reverso.convert.official.official_state_dict`.
    """
    from reverso.passes.antialias import Antialias

    if checkpoint is not None and variant != "official":
        raise OptionError(
            "antialias: checkpoint= loads an official antialiased-cnns checkpoint, whose model is "
            "variant='official'; pass it, or load your own weights with load_state_dict"
        )
    rewrite = Antialias(filter_size=filter_size, stem=stem, pad_mode=pad_mode, variant=variant)
    leaf_modules = check_leaves(leaf_modules)
    model = resolve_model(model)
    input_size = resolve_input_size(model, input_size)
    traced = trace(model, input_size, leaf_modules=leaf_modules)
    ctx = Context(model, input_size)
    gm = Pipeline([rewrite]).run(working_copy(traced), ctx)
    gm = ir.own_copy(gm, model)
    keep_model_attributes(gm, model)
    gm.antialiased = ctx.results.antialiased
    gm.reverso_source_model = SourceModel.original(model)
    leaves = tuple(qualified_name(t) for t in leaf_modules)
    gm.reverso_recipe = Recipe(
        "antialias", rewrite.settings, input_size, leaf_modules=leaves, **origin(model)
    )
    if checkpoint is not None:
        from reverso.convert.official import official_state_dict

        gm.load_state_dict(official_state_dict(gm, checkpoint))
    return gm


def checkpoint(
    model: nn.Module | str, input_size=None, *, budget: float | None = None
) -> nn.Module:
    """``model`` with activation checkpointing: its graph cut into segments that keep only their
    inputs for backward and run again during backward (the ``checkpoint`` pass,
    :mod:`reverso.passes.checkpoint`).

    By default the segments minimise the estimated peak of activation memory (about one extra
    forward); with ``budget`` (bytes per sample, or for the batch when ``input_size`` is
    ``(N, C, H, W)``) the plan that recomputes least within it. A :class:`~reverso.TopDownNet`
    stays one (its ``features`` are cut); any other model comes back as a GraphModule whose code
    shows the segments. Layers keep their names, so state_dicts load either way.
    """
    from reverso.passes.checkpoint import Checkpoint

    return graph_rewrite(model, input_size, Checkpoint(budget=budget))


def reversible(
    model: nn.Module | str,
    input_size=None,
    *,
    transitions: str = "keep",
    stem: str = "keep",
    memory_saving: bool = True,
    mid: str = "keep",
    post_act: str = "refuse",
) -> nn.Module:
    """``model`` with its runs of residual units turned into reversible i-RevNet coupling blocks
    (the ``reversible`` pass, :mod:`reverso.passes.reversible`; docs/methods/irevnet.md,
    section 7).

    Each run becomes a :class:`~reverso.nn.ReversibleSequence` whose backward rebuilds
    activations from outputs (``memory_saving=True``), so its saved bytes do not grow with its
    depth. The residual functions work at half width with fresh weights: train the result.
    ``post_act="move"`` moves an activation between two units into the next unit's function
    (post-activation ResNets); ``mid="half"`` also halves their inner widths. Transitions and
    the stem stay as they are (``"keep"``) or become psi(2) coupling blocks and a psi stem
    (``"psi"``); with both ``"psi"`` the result has ``forward_features`` and ``inverse``. A
    TopDownNet stays one; any other model comes back as a GraphModule.
    """
    from reverso.passes.reversible import Reversible

    step = Reversible(
        transitions=transitions, stem=stem, memory_saving=memory_saving, mid=mid, post_act=post_act
    )
    return graph_rewrite(model, input_size, step)


def with_memory(net: nn.Module, memory: str | None, input_size=None) -> nn.Module:
    """``net`` as it trains with ``memory`` (``None``, ``"checkpoint"`` or ``"reversible"``; see
    :func:`reverso.topdown`)."""
    if memory is None:
        return net
    if memory == "checkpoint":
        return checkpoint(net, input_size)
    if memory == "reversible":  # post-activation trunks move their activation into the next unit
        return checkpoint(reversible(net, input_size, post_act="move"), input_size)
    raise OptionError(
        f"memory={memory!r} is not supported; choose None, 'checkpoint' or 'reversible'"
    )
