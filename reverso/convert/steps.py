"""How a conversion applies one rewrite to a model and records its recipe.

Two kinds of rewrite: a *module swap* changes layers in a copy of the model, which keeps its class
(a timm model stays a timm model); a *graph rewrite* runs a pass on the traced model and returns a
GraphModule with readable code (on a TopDownNet, on its ``features``). Both leave the
:class:`~reverso.convert.recipe.Recipe` that rebuilds the result on it as ``reverso_recipe``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch.fx as fx
from torch import nn

from reverso import ir
from reverso.compiler.base import Pass
from reverso.compiler.pipeline import Pipeline
from reverso.convert.recipe import Recipe, origin, recipe_of
from reverso.errors import ReversoError
from reverso.frontend.provenance import SourceModel
from reverso.frontend.tracing import resolve_input_size, resolve_model, trace
from reverso.ir.shapes import mark_shapes_current, output_shapes, propagate
from reverso.nn.reversible import InvertibleGraphModule
from reverso.options import Options
from reverso.planner.context import Context

#: timm-style attributes a rewritten model keeps
MODEL_ATTRIBUTES = ("num_classes", "num_features", "pretrained_cfg", "default_cfg", "feature_info")


def module_swap(
    model: nn.Module | str, input_size, options: Options, swap: Callable[[nn.Module], None]
) -> nn.Module:
    """A copy of ``model`` (same class) changed in place by ``swap(copy)``, with its output shape
    checked when an input size is known, and the recipe of ``options`` recorded."""
    model = resolve_model(model)
    converted = copy.deepcopy(model)
    converted.reverso_source_model = SourceModel.original(model)
    swap(converted)
    if input_size is not None or getattr(model, "pretrained_cfg", None):
        input_size = resolve_input_size(model, input_size)
        check_same_output(model, converted, input_size)
    converted.reverso_recipe = Recipe(options.label, options, input_size, **origin(model))
    return converted


def graph_rewrite(model: nn.Module | str, input_size, step: Pass) -> nn.Module:
    """Run one graph pass on a traced copy of ``model`` (on a TopDownNet's features)."""
    from reverso.convert.network import TopDownNet

    model = resolve_model(model)
    batch, size = batch_and_size(model, input_size)
    ctx = Context(model, size)
    ctx.batch = batch
    if isinstance(model, TopDownNet):
        gm = copy.deepcopy(model)
        propagate(gm.features, ctx.example_input())
        gm.features = Pipeline([step]).run(gm.features, ctx)
        removed = ir.remove_dead_code(gm.features)  # weights a rebuilt unit no longer reads
    else:
        gm = ir.own_copy(working_copy(trace(model, size)), model)
        gm = Pipeline([step]).run(gm, ctx)
        removed = ir.remove_dead_code(gm)
        if step.options().get("stem") == step.options().get("transitions") == "psi":
            gm = InvertibleGraphModule(gm, gm.graph, class_name=type(model).__name__)
        keep_model_attributes(gm, model)
    gm.reverso_source_model = SourceModel.original(model)
    gm.reverso_recipe = Recipe(step.name, step.settings, size, **origin(model))
    # files saved before reverso removed them still hold them (see reverso.convert.saving)
    gm.removed_modules = (*getattr(model, "removed_modules", ()), *removed)
    return gm


def keep_model_attributes(gm: nn.Module, model: nn.Module) -> None:
    """Copy ``model``'s timm-style attributes (:data:`MODEL_ATTRIBUTES`) onto ``gm``."""
    for name in MODEL_ATTRIBUTES:
        if hasattr(model, name) and not isinstance(getattr(model, name), nn.Module):
            setattr(gm, name, copy.deepcopy(getattr(model, name)))


def working_copy(bu: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule with its own graph (and tags) whose modules are the bottom-up ones.

    Passes never change a module in place (they install new ones), so sharing is safe; the
    emitted network copies whatever it still shares with the user's model.
    """
    graph = copy.deepcopy(bu.graph)
    for n in graph.nodes:
        ir.copy_tags(n, n)  # a record of its own (node copies share their meta's values)
    gm = fx.GraphModule(bu, graph, class_name=type(bu).__name__)
    mark_shapes_current(gm)  # the copied nodes carry the traced shapes
    return gm


def batch_and_size(model: nn.Module, input_size) -> tuple[int, tuple[int, int, int]]:
    """``(N, C, H, W)`` or ``(C, H, W)`` -> (N or 1, (C, H, W)); a network reverso made knows
    the size it was converted at."""
    if input_size is not None and not isinstance(input_size, str) and len(input_size) == 4:
        return int(input_size[0]), resolve_input_size(model, tuple(input_size[1:]))
    recipe = recipe_of(model)
    if input_size is None and recipe is not None:
        input_size = recipe.input_size
    return 1, resolve_input_size(model, input_size)


def check_same_output(original: nn.Module, converted: nn.Module, input_size) -> None:
    a = output_shape(original, input_size)
    b = output_shape(converted, input_size)
    if a != b:  # pragma: no cover - guarded by the size-preserving padding
        raise ReversoError(f"the converted model outputs {b} instead of {a} for input {input_size}")


def output_shape(model: nn.Module, input_size):
    """The shape of each tensor the model returns (a tuple, list or dict of them too)."""
    return output_shapes(trace(model, input_size))
