"""Each transform's name -> the function that rebuilds its network from a recipe.

:func:`build` rebuilds a whole chain: the source model through its registry
(:mod:`reverso.frontend.sources`), then each conversion by its builder here, which calls the same
public function the user called (:func:`reverso.topdown`, :func:`reverso.njet`, ...) with the
recipe's checked options. Weights come from the file afterwards, so every builder starts from
fresh (random) weights: an N-Jet conversion that projected its kernels is rebuilt with
``init="random"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from reverso.compiler import catalogue
from reverso.compiler.pipeline import Pipeline
from reverso.convert import structured, transforms
from reverso.convert.recipe import PassConfig, Recipe
from reverso.convert.topdown import topdown
from reverso.errors import ReversoError
from reverso.frontend.meta import to_meta, weightless
from reverso.frontend.sources import build as build_source
from reverso.frontend.sources import resolve_leaf
from reverso.options import TRANSFORM_OPTIONS
from reverso.passes import BUILTIN

Builder = Callable[[nn.Module, Recipe, tuple, tuple[str, ...]], nn.Module]


def _topdown(model: nn.Module, recipe: Recipe, leaves: tuple, trust: tuple[str, ...]):
    options = recipe.options.to_json()
    width = options.pop("width")
    if width is not None:  # a uniform width is given as the arrangement
        options["arrangement"] = width
    passes = Pipeline([_pass(config, trust) for config in recipe.pipeline])
    return topdown(
        model, input_size=recipe.input_size, passes=passes, leaf_modules=leaves, **options
    )


def _pass(config: PassConfig, trust: tuple[str, ...]):
    """A pass of a saved pipeline: reverso's own, or another package's when it is trusted."""
    if config.name not in BUILTIN:
        module = catalogue.module_of(config.name)
        if not any(module == t or module.startswith(t + ".") for t in trust):
            top = module.split(".")[0]
            raise ReversoError(
                f"the recipe's pipeline runs the pass {config.name!r} of {module}; reverso only "
                f"runs code from packages you trust. If you trust this file, pass "
                f"trust=[{top!r}]"
            )
    kwargs = dict(config.options)
    if config.name == "njet":
        kwargs["init"] = "random"  # the weights come from the file
    return (BUILTIN.get(config.name) or catalogue.get(config.name))(**kwargs)


def _njet(model, recipe, leaves, trust):
    options = recipe.options.to_json() | {"init": "random"}  # the weights come from the file
    return transforms.njet(model, input_size=recipe.input_size, **options)


def _antialias(model, recipe, leaves, trust):
    options = recipe.options.to_json()
    return transforms.antialias(model, input_size=recipe.input_size, leaf_modules=leaves, **options)


def _call(function) -> Builder:
    """A builder calling ``function(model, input_size, **options)``."""

    def builder(model, recipe, leaves, trust):
        return function(model, recipe.input_size, **recipe.options.to_json())

    return builder


#: transform name -> builder (the names are those of :data:`reverso.options.TRANSFORM_OPTIONS`)
BUILDERS: dict[str, Builder] = {
    "none": lambda model, recipe, leaves, trust: model,
    "topdown": _topdown,
    "njet": _njet,
    "antialias": _antialias,
    "checkpoint": _call(transforms.checkpoint),
    "reversible": _call(transforms.reversible),
    "frames": _call(structured.frames),
    "steerable": _call(structured.steerable),
    "hierarchical": _call(structured.hierarchical),
}
assert BUILDERS.keys() == TRANSFORM_OPTIONS.keys(), "a transform without a builder"


def build(
    recipe: Recipe,
    trust: tuple[str, ...] = (),
    where: str = "recipe",
    *,
    meta: bool = False,
    budget: int | None = None,
    sizes: list[int] | None = None,
) -> nn.Module:
    """The network ``recipe`` describes, with fresh weights (the whole chain). With ``meta``,
    without weights: built :func:`~reverso.frontend.meta.weightless` (making at most ``budget``
    tensors), on the meta device; ``sizes`` then receives the bytes of every network of the chain
    (the source model first)."""
    sizes = [] if sizes is None else sizes
    with weightless(budget=budget) if meta else contextlib.nullcontext():
        return _build(recipe, trust, where, meta, sizes)


def _build(recipe: Recipe, trust, where: str, meta: bool, sizes: list[int]) -> nn.Module:
    if recipe.base is not None:  # a chain: first the network this conversion was applied to
        model = _build(recipe.base, trust, f"{where}.base", meta, sizes)
    else:
        model = build_source(recipe.source, trust, f"{where}.source")
        if meta:  # the builder's small tensors were made for real
            model = to_meta(model)
            sizes.append(tensor_bytes(model))
    leaves = tuple(
        resolve_leaf(name, trust, f"{where}.leaf_modules[{i}]")
        for i, name in enumerate(recipe.leaf_modules)
    )  # after the model: the classes it uses are imported
    with torch.device("meta") if meta else contextlib.nullcontext():
        built = BUILDERS[recipe.transform](model, recipe, leaves, trust)
    if meta:
        built = to_meta(built)
        sizes.append(tensor_bytes(built))
    return built


def tensor_bytes(model: nn.Module) -> int:
    """The bytes of every parameter and buffer of ``model`` (shared ones once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())
