"""The sibling rewrites as one call each: ``reverso.njet(model)``, ``reverso.antialias(model)``,
``reverso.checkpoint(model)`` and ``reverso.reversible(model)``."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.compiler.pipeline import Pipeline
from reverso.convert.saving import origin
from reverso.errors import OptionError, ReversoError
from reverso.frontend.provenance import SourceModel
from reverso.frontend.tracing import resolve_input_size, resolve_model, trace
from reverso.ir.shapes import propagate
from reverso.nn.reversible import InvertibleGraphModule
from reverso.planner.context import Context

#: timm-style attributes a rewritten model keeps
MODEL_ATTRIBUTES = ("num_classes", "num_features", "pretrained_cfg", "default_cfg", "feature_info")


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

    kwargs = {"order": order, "sigma": sigma, "learn_sigma": learn_sigma, "init": init}
    converted = module_swap(
        model, input_size, "njet", kwargs | layer_kwargs,
        lambda m: setattr(m, "njet_report", swap_spatial_convs(m, **kwargs, **layer_kwargs)),
    )  # fmt: skip
    if memory is not None:
        from reverso.convert.topdown import with_memory

        recorded = converted.reverso_recipe["input_size"]  # the size resolved and checked
        input_size = tuple(recorded) if recorded is not None else None
        converted = with_memory(converted, memory, input_size)
    return converted


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
    from reverso.convert.topdown import working_copy
    from reverso.frontend.provenance import qualified_name
    from reverso.passes.antialias import Antialias

    if checkpoint is not None and variant != "official":
        raise OptionError(
            "antialias: checkpoint= loads an official antialiased-cnns checkpoint, whose model is "
            "variant='official'; pass it, or load your own weights with load_state_dict"
        )
    model = resolve_model(model)
    input_size = resolve_input_size(model, input_size)
    traced = trace(model, input_size, leaf_modules=leaf_modules)
    ctx = Context(model, input_size)
    rewrite = Antialias(filter_size=filter_size, stem=stem, pad_mode=pad_mode, variant=variant)
    gm = Pipeline([rewrite]).run(working_copy(traced), ctx)
    gm = ir.own_copy(gm, model)
    for name in MODEL_ATTRIBUTES:
        if hasattr(model, name) and not isinstance(getattr(model, name), nn.Module):
            setattr(gm, name, copy.deepcopy(getattr(model, name)))
    gm.antialiased = ctx.state.get("antialiased", [])
    gm.reverso_source_model = SourceModel.original(model)
    gm.reverso_recipe = {
        "transform": "antialias",
        **origin(model),
        "input_size": list(input_size),
        "kwargs": rewrite.options(),
        "leaf_modules": [qualified_name(t) for t in leaf_modules],
    }
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

    return _graph_rewrite(model, input_size, Checkpoint(budget=budget))


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
    (the ``reversible`` pass, :mod:`reverso.passes.reversible`; spec irevnet.md section 7).

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
    return _graph_rewrite(model, input_size, step)


def module_swap(model, input_size, transform: str, kwargs: dict, swap) -> nn.Module:
    """A copy of ``model`` (same class) changed in place by ``swap(copy)``, with its output shape
    checked when an input size is known and the recipe that rebuilds it (``transform`` and
    ``kwargs``) recorded."""
    model = resolve_model(model)
    converted = copy.deepcopy(model)
    converted.reverso_source_model = SourceModel.original(model)
    swap(converted)
    if input_size is not None or getattr(model, "pretrained_cfg", None):
        input_size = resolve_input_size(model, input_size)
        _check_same_output(model, converted, input_size)
    converted.reverso_recipe = {
        "transform": transform,
        **origin(model),
        "input_size": list(input_size) if input_size is not None else None,
        "kwargs": kwargs,
    }
    return converted


def _graph_rewrite(model, input_size, step) -> nn.Module:
    """Run one graph pass on a traced copy of ``model`` (on a TopDownNet's features)."""
    from reverso.convert.network import TopDownNet
    from reverso.convert.topdown import working_copy

    model = resolve_model(model)
    batch, size = _batch_and_size(model, input_size)
    ctx = Context(model, size)
    ctx.state["batch"] = batch
    if isinstance(model, TopDownNet):
        gm = copy.deepcopy(model)
        propagate(gm.features, ctx.example_input())
        gm.features = Pipeline([step]).run(gm.features, ctx)
    else:
        gm = ir.own_copy(working_copy(trace(model, size)), model)
        gm = Pipeline([step]).run(gm, ctx)
        if step.options().get("stem") == step.options().get("transitions") == "psi":
            gm = InvertibleGraphModule(gm, gm.graph, class_name=type(model).__name__)
        for name in MODEL_ATTRIBUTES:
            if hasattr(model, name) and not isinstance(getattr(model, name), nn.Module):
                setattr(gm, name, copy.deepcopy(getattr(model, name)))
    gm.reverso_source_model = SourceModel.original(model)
    gm.reverso_recipe = {
        "transform": step.name,
        **origin(model),
        "input_size": list(size),
        "kwargs": step.options(),
    }
    return gm


def _batch_and_size(model: nn.Module, input_size) -> tuple[int, tuple[int, int, int]]:
    """``(N, C, H, W)`` or ``(C, H, W)`` -> (N or 1, (C, H, W))."""
    if input_size is not None and not isinstance(input_size, str) and len(input_size) == 4:
        return int(input_size[0]), resolve_input_size(model, tuple(input_size[1:]))
    if input_size is None and hasattr(model, "recipe"):  # a TopDownNet knows its size
        input_size = model.recipe.get("input_size")
    return 1, resolve_input_size(model, input_size)


def _check_same_output(original: nn.Module, converted: nn.Module, input_size) -> None:
    a = _output_shape(original, input_size)
    b = _output_shape(converted, input_size)
    if a != b:  # pragma: no cover - guarded by the size-preserving padding
        raise ReversoError(f"the converted model outputs {b} instead of {a} for input {input_size}")


def _output_shape(model: nn.Module, input_size):
    """The shape of each tensor the model returns (a tuple, list or dict of them too)."""
    gm = trace(model, input_size)
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return fx.node.map_arg(output, lambda n: tuple(getattr(n.meta.get("val"), "shape", ())))
