"""Saving and loading converted models: one safetensors file, weights plus a JSON recipe.

The recipe says how to rebuild the module: the source model (a timm name, or a
``"package.module:function"`` factory with its keyword arguments), the transform (``topdown``,
``njet``, ``antialias``, ``checkpoint``, ``reversible``, ``frames``, ``steerable``,
``hierarchical`` or ``none``) with its options and passes. A conversion of a network reverso made
(a chain, e.g. frames of a top-down net) names the recipe of that network as its ``"base"``
instead of a source. :func:`load` rebuilds the module from the recipe, then loads the weights
strictly. Nothing is unpickled: safetensors holds
raw tensors and the recipe is JSON.

A recipe could name any function, so :func:`load` only calls factories of reverso itself, of timm,
or of packages the caller lists in ``trust=``. A SHA-256 of the weights and the recipe is stored
too: a file changed after saving (corruption, hand edits) is refused. The checksum is not a
signature: someone who rewrites the file can recompute it. Only load files whose origin you trust.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from reverso import models
from reverso.errors import FileFormatError, OptionError, ReversoError

FORMAT = "reverso"
VERSION = 1
TRANSFORMS = (
    "topdown", "njet", "antialias", "checkpoint", "reversible", "frames", "steerable",
    "hierarchical", "none",
)  # fmt: skip
#: factories from these packages are always trusted (reverso's own, and torchvision's builders,
#: which reverso recognises from a model's structure)
TRUSTED = ("reverso", "torchvision")


def save(
    model: nn.Module,
    path: str | Path,
    *,
    source: str | dict | None = None,
    source_kwargs: dict | None = None,
    input_size=None,
) -> Path:
    """Write ``model``'s weights and the recipe that rebuilds it to ``path`` (safetensors).

    ``model`` is a :class:`~reverso.TopDownNet`, the result of :func:`reverso.njet` or
    :func:`reverso.antialias`, or a plain model (transform ``"none"``). ``source`` names where the
    original model came from when reverso cannot tell (your own model class):
    ``"package.module:function"`` called with ``source_kwargs``.
    """
    from safetensors.torch import save_file

    recipe = _recipe_of(model, source, source_kwargs, input_size)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    try:
        text = json.dumps(recipe, sort_keys=True)
    except TypeError as err:
        raise OptionError(
            f"the recipe of this model is not JSON ({err}); pass options as plain numbers/strings"
        ) from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "recipe": text, "sha256": _checksum(tensors, text)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def _iterable(value) -> list:
    try:
        return list(value)
    except TypeError:
        return [value]


def load(
    path: str | Path, *, trust: Iterable[str] = (), device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the module saved at ``path`` and load its weights.

    ``trust`` lists packages (e.g. ``["mypkg"]``) whose factories a recipe may call; reverso's
    own and timm models need none.
    """
    from safetensors import safe_open

    if isinstance(trust, str) or not all(isinstance(t, str) for t in _iterable(trust)):
        raise OptionError(f"trust must list package names (e.g. trust=['mypkg']), got {trust!r}")
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"no file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except Exception as err:
        raise FileFormatError(
            f"{path} is not a readable safetensors file ({err}); was it written by reverso.save?"
        ) from err
    if metadata.get("format") != FORMAT or "recipe" not in metadata:
        raise FileFormatError(f"{path} is a safetensors file but not one written by reverso.save")
    if metadata.get("sha256") != _checksum(tensors, metadata["recipe"]):
        raise FileFormatError(
            f"{path} was changed after it was saved: the SHA-256 of its weights and recipe does "
            "not match the one stored with them"
        )
    try:
        recipe = json.loads(metadata["recipe"])
    except json.JSONDecodeError as err:
        raise FileFormatError(f"the recipe in {path} is not valid JSON ({err})") from err
    _check_recipe(recipe, path)
    model = _build(recipe, tuple(trust), path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise FileFormatError(
            f"the weights in {path} do not fit the model its recipe rebuilds ({err}); the source "
            "model's code may have changed since the file was saved"
        ) from err
    dtype = getattr(torch, recipe.get("dtype", "float32"), None)
    if isinstance(dtype, torch.dtype):
        model.to(dtype=dtype)
    return model.to(device)


def conversion_recipe(model: nn.Module) -> dict | None:
    """A copy of the recipe of a network reverso made (the last conversion of a chain, whose
    ``"base"`` is the recipe of the one before); None for any other model."""
    from reverso.convert.network import TopDownNet

    recipe = getattr(model, "reverso_recipe", None)
    if recipe is not None:
        return copy.deepcopy(dict(recipe))
    if isinstance(model, TopDownNet):
        return {"transform": "topdown", **copy.deepcopy(model.recipe)}
    return None


def origin(model: nn.Module) -> dict:
    """What a conversion of ``model`` records as its input: ``{"base": recipe}`` when reverso made
    ``model`` (a chain: ``reverso.frames(reverso.topdown(m))``, ``reverso.topdown(reverso.njet(m))``),
    else ``{"source": how to build model}``."""
    from reverso.frontend.provenance import source_of

    base = conversion_recipe(model)
    return {"base": base} if base is not None else {"source": source_of(model)}


def _recipe_of(model, source, source_kwargs, input_size) -> dict:
    from reverso.frontend.provenance import (
        SourceModel,
        remember_source,
        source_of,
        torchvision_source,
    )
    from reverso.frontend.tracing import model_dtype

    recipe = conversion_recipe(model)
    if recipe is None:
        recipe = {"transform": "none", "source": source_of(model), "input_size": None, "kwargs": {}}
    first = recipe  # the chain's first conversion: the one that names the source model
    while "base" in first:
        _refuse_custom_passes(first)
        first = first["base"]
    _refuse_custom_passes(first)
    if source is not None:
        if isinstance(source, str):
            holder = nn.Module()
            first["source"] = remember_source(
                holder, source, **(source_kwargs or {})
            ).reverso_source
        else:
            first["source"] = dict(source)
    if input_size is not None:
        recipe["input_size"] = list(input_size)
    if not first.get("source"):
        original = SourceModel.original(model)
        first["source"] = copy.deepcopy(torchvision_source(original))
        if first["source"] is None:
            raise OptionError(
                f"reverso cannot tell how to rebuild the original {original.short_name} "
                f"({original.class_name}): pass source='package.module:function' (and "
                "source_kwargs=) naming the factory that builds it, or mark the model with "
                "reverso.remember_source before converting"
            )
    recipe["dtype"] = str(model_dtype(model)).removeprefix("torch.")
    recipe.update(format=FORMAT, version=VERSION)
    return recipe


def _refuse_custom_passes(recipe: dict) -> None:
    """A top-down recipe whose pipeline holds a user's pass cannot be rebuilt by :func:`load`."""
    if recipe.get("transform") == "topdown" and any(p is None for p in recipe.get("pipeline", [])):
        names = [n for n, c in zip(recipe["passes"], recipe["pipeline"], strict=False) if c is None]
        raise OptionError(
            f"this network was compiled with passes reverso cannot rebuild ({', '.join(names)}: "
            "your own); save its state_dict instead, and recompile with the same passes to load it"
        )


def _checksum(tensors: dict[str, torch.Tensor], recipe: str) -> str:
    digest = hashlib.sha256(recipe.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


#: the longest chain of conversions a file may hold
MAX_CHAIN = 16


def _check_recipe(recipe, path, depth: int = 0) -> None:
    if not isinstance(recipe, dict):
        raise FileFormatError(f"the recipe in {path} is not a JSON object")
    if depth == 0 and recipe.get("version") != VERSION:
        raise FileFormatError(
            f"{path} has recipe version {recipe.get('version')}; this reverso reads version {VERSION}"
        )
    if recipe.get("transform") not in TRANSFORMS:
        raise FileFormatError(f"{path}: unknown transform {recipe.get('transform')!r}")
    if "base" in recipe:  # the conversion before this one
        if "source" in recipe or depth >= MAX_CHAIN:
            raise FileFormatError(
                f"{path}: a recipe step names both a source and a base, or the chain is longer "
                f"than {MAX_CHAIN}"
            )
        _check_recipe(recipe["base"], path, depth + 1)
        return
    source = recipe.get("source")
    if not isinstance(source, dict) or not (("timm" in source) ^ ("factory" in source)):
        raise FileFormatError(f"{path}: the recipe's source must name a timm model or a factory")
    if not isinstance(source.get("kwargs", {}), dict):
        raise FileFormatError(f"{path}: the source's kwargs must be a JSON object")


def _build(recipe: dict, trust: tuple[str, ...], path: Path) -> nn.Module:
    from reverso.compiler.pipeline import Pipeline
    from reverso.convert import transforms
    from reverso.convert.topdown import topdown

    if "base" in recipe:  # a chain: first rebuild the network this conversion was applied to
        source = _build(recipe["base"], trust, path)
    else:
        source = _source_model(recipe["source"], trust, path)
    transform = recipe["transform"]
    input_size = tuple(recipe["input_size"]) if recipe.get("input_size") else None
    leaves = [_leaf(name, trust, path) for name in recipe.get("leaf_modules", [])]
    try:
        if transform == "none":
            return source
        if transform == "njet":
            kwargs = dict(recipe["kwargs"], init="random")  # the weights come from the file
            return transforms.njet(source, input_size=input_size, **kwargs)
        if transform in ("frames", "steerable", "hierarchical"):
            from reverso.convert import structured

            return getattr(structured, transform)(source, input_size, **recipe["kwargs"])
        if transform in ("checkpoint", "reversible"):
            return getattr(transforms, transform)(source, input_size, **recipe["kwargs"])
        if transform == "antialias":
            return transforms.antialias(
                source, input_size=input_size, leaf_modules=leaves, **recipe["kwargs"]
            )
        passes = []
        for config in _split_passes(recipe.get("pipeline", [])):
            from reverso.passes import get

            kwargs = dict(config["kwargs"])
            if config["name"] == "njet":
                kwargs["init"] = "random"
            passes.append(get(config["name"])(**kwargs))
        options = dict(recipe.get("options", {}))
        width = options.pop("width", None)
        if width is not None:  # a uniform width is given as the arrangement
            options["arrangement"] = width
        return topdown(
            source, input_size=input_size, passes=Pipeline(passes), leaf_modules=leaves, **options
        )
    except ReversoError:
        raise
    except (TypeError, KeyError, ValueError) as err:
        raise FileFormatError(
            f"{path}: the recipe's options do not rebuild a model ({err!r})"
        ) from err


def _source_model(source: dict, trust: tuple[str, ...], path: Path) -> nn.Module:
    kwargs = source.get("kwargs", {})
    if "timm" in source:
        import timm

        if not timm.is_model(source["timm"]):
            raise FileFormatError(
                f"{path}: timm has no model {source['timm']!r} (timm {timm.__version__})"
            )
        return timm.create_model(source["timm"], pretrained=False, **kwargs)
    module, _, name = source["factory"].partition(":")
    if module == "reverso.models" and name in models.MODELS:
        return models.create(name, **kwargs)  # with the paper's input size
    factory = _trusted(source["factory"], trust, path)
    built = factory(**kwargs)
    if not isinstance(built, nn.Module):
        raise FileFormatError(
            f"{path}: {source['factory']} returned {type(built).__name__}, not a module"
        )
    built.reverso_source = dict(source)
    return built


def _trusted(spec: str, trust: tuple[str, ...], path: Path):
    """Import ``package.module:name`` if its package is trusted."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise FileFormatError(f"{path}: {spec!r} is not 'package.module:name'")
    module_name, _, attr = spec.partition(":")
    package = module_name.split(".")[0]
    if package not in TRUSTED + trust:
        raise ReversoError(
            f"{path} asks to build its model with {spec}; reverso only calls code from packages "
            f"you trust. If you trust this file, pass trust=[{package!r}] to reverso.load"
        )
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise FileFormatError(f"{path}: cannot import {spec} ({err})") from err
    if not callable(obj):
        raise FileFormatError(f"{path}: {spec} is not callable")
    return obj


def _leaf(name: str, trust: tuple[str, ...], path: Path):
    """A recorded leaf module: a module path as is, a class as ``package.module:Class``."""
    if ":" not in name:
        return name
    package = name.split(".")[0].split(":")[0]
    if package in ("torch", "timm", "torchvision"):
        trust = (*trust, package)
    return _trusted(name, trust, path)


def _split_passes(configs: list[dict]) -> list[dict]:
    """A pipeline saved before ``downsample_to_upsample`` was split (reverso 0.1.0 files) gets the
    passes that now do its other rewrites, around it: the same network is built."""
    names = [c.get("name") for c in configs]
    if "downsample_to_upsample" not in names or "stride_one" in names:
        return configs
    i = names.index("downsample_to_upsample")
    stride_one = {"name": "stride_one", "kwargs": {}}
    drop = {"name": "drop_projections", "kwargs": {}}
    return [*configs[:i], stride_one, configs[i], drop, *configs[i + 1 :]]
