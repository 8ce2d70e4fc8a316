"""Where a model comes from, as a saved file names it, and how reverso builds it again.

A source is a name in one of four registries, never a path to an attribute:

* ``{"timm": name, "kwargs": {...}}``: a model timm knows (``timm.is_model``), built with
  ``timm.create_model(name, pretrained=False, **kwargs)``;
* ``{"factory": "torchvision.models:name", ...}``: a torchvision classification builder
  (``torchvision.models.list_models(module=torchvision.models)``), called with ``weights=None``;
* ``{"factory": "reverso.models:name", ...}``: one of reverso's reference models;
* ``{"factory": "package.module:function", ...}``: a user's factory, called only when the caller
  trusts its package (:func:`check_trust`): the module is imported by its exact name, the function
  is one attribute of it, defined in that package, a plain function or class.

The keyword arguments are JSON scalars that shape the architecture (``num_classes``,
``in_chans``, depths, widths); arguments that load weights, name files or URLs
(:data:`DENIED`) are refused, so building a source never reads, writes or downloads anything.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

from reverso.errors import FileFormatError, OptionError, ReversoError
from reverso.options import MAX_CHANNELS, MAX_CLASSES, MAX_TEXT, shown

#: the registries a source names, besides users' factories
REGISTRIES = ("timm", "torchvision", "reverso")
#: factory prefixes of the registries a file names as factories
FACTORY_PREFIX = {"torchvision": "torchvision.models:", "reverso": "reverso.models:"}
#: packages reached through their registries only: trusting them would let a file call any of
#: their functions (``torch.hub.load`` runs a repository's code)
LIBRARIES = ("torch", "torchvision", "timm", "reverso", "safetensors", "huggingface_hub")
#: keyword arguments that load weights or name files, folders or URLs
DENIED = (
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "weights",
    "weights_backbone",
    "cache_dir",
    "hf_hub_id",
    "hf_hub_filename",
    "url",
    "file",
    "model_dir",
)
DENIED_SUFFIXES = ("_path", "_file", "_dir", "_url", "_uri", "_checkpoint", "_weights")
#: the most keyword arguments a source may hold, and the largest other int one may be
MAX_KWARGS = 32
MAX_INT = 4096

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
TIMM_NAME = re.compile(r"[A-Za-z0-9_.\-]+\Z")


@dataclass(frozen=True)
class Source:
    """A model in a registry: ``registry`` (timm, torchvision, reverso, or ``factory``), its
    ``name`` there (``package.module:function`` for a factory) and its keyword arguments."""

    registry: str
    name: str
    kwargs: Mapping = field(default_factory=dict)

    def to_json(self) -> dict:
        if self.registry == "timm":
            return {"timm": self.name, "kwargs": dict(self.kwargs)}
        prefix = FACTORY_PREFIX.get(self.registry, "")
        return {"factory": prefix + self.name, "kwargs": dict(self.kwargs)}

    @property
    def label(self) -> str:
        return self.name if self.registry == "factory" else f"{self.registry} {self.name}"

    @classmethod
    def from_json(cls, data, where: str = "source", error=FileFormatError) -> Source:
        """The source a recipe names, its form checked (the registries are asked in :func:`build`)."""
        if not isinstance(data, Mapping) or set(data) - {"timm", "factory", "kwargs"}:
            raise error(
                f"{where} must be an object with 'timm' or 'factory' and 'kwargs', got "
                f"{shown(data)}"
            )
        if ("timm" in data) == ("factory" in data):
            raise error(f"{where} must name either a timm model or a factory, not {shown(data)}")
        kwargs = check_kwargs(data.get("kwargs", {}), f"{where}.kwargs", error)
        name = data.get("timm", data.get("factory"))
        if isinstance(name, str) and len(name) > MAX_TEXT:  # before any name matching
            raise error(f"{where} must name a model in at most {MAX_TEXT} characters")
        if "timm" in data:
            name = data["timm"]
            if not isinstance(name, str) or not TIMM_NAME.match(name) or len(name) > MAX_TEXT:
                raise error(f"{where}.timm must be a timm model name, got {shown(name)}")
            return cls("timm", name, kwargs)
        spec = data["factory"]
        for registry, prefix in FACTORY_PREFIX.items():
            if isinstance(spec, str) and spec.startswith(prefix):
                name = spec[len(prefix) :]
                if not IDENTIFIER.match(name):
                    raise error(f"{where}.factory names no {registry} model: {shown(spec)}")
                return cls(registry, name, kwargs)
        check_factory_name(spec, f"{where}.factory", error)
        return cls("factory", spec, kwargs)


def check_kwargs(kwargs, where: str, error=FileFormatError) -> dict:
    """``kwargs`` checked: at most :data:`MAX_KWARGS` identifier keys, none of :data:`DENIED`,
    each value a JSON scalar (strings that are no path or URL, ints in range, finite floats)."""
    if not isinstance(kwargs, Mapping) or len(kwargs) > MAX_KWARGS:
        raise error(
            f"{where} must be an object of at most {MAX_KWARGS} arguments, got {shown(kwargs)}"
        )
    for key, value in kwargs.items():
        if not isinstance(key, str) or not IDENTIFIER.match(key):
            raise error(f"{where}: {shown(key)} is not an argument name")
        if key in DENIED or key.endswith(DENIED_SUFFIXES):
            raise error(
                f"{where}: the argument {key!r} loads weights or names a file, folder or URL; a "
                "recipe holds only the architecture (the weights are in the file)"
            )
        high = {"num_classes": MAX_CLASSES, "in_chans": MAX_CHANNELS}.get(key, MAX_INT)
        low = 0 if key == "num_classes" else 1 if key == "in_chans" else -MAX_INT
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not low <= value <= high:
                raise error(f"{where}.{key} must be an int in [{low}, {high}], got {value}")
        elif isinstance(value, float):
            if not math.isfinite(value) or abs(value) > MAX_INT:
                raise error(
                    f"{where}.{key} must be a finite number of at most {MAX_INT}, got {value}"
                )
        elif isinstance(value, str):
            if len(value) > MAX_TEXT or _looks_like_a_location(value):
                raise error(f"{where}.{key}: {shown(value)} looks like a path or URL; refused")
        else:
            raise error(
                f"{where}.{key} must be a JSON scalar (null, bool, number, string), got {shown(value)}"
            )
    return dict(kwargs)


def _looks_like_a_location(text: str) -> bool:
    return any(c in text for c in "/\\:~") or text.startswith(".") or not text.isascii()


def check_factory_name(spec, where: str, error=OptionError) -> tuple[str, str]:
    """``"package.module:function"`` split in two, each part a plain ASCII (dotted) identifier."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise error(f"{where} must be 'package.module:function', got {shown(spec)}")
    module, _, attr = spec.partition(":")
    if not DOTTED.match(module) or not IDENTIFIER.match(attr) or "__" in spec:
        raise error(
            f"{where} must be 'package.module:function' with plain ASCII names (one function "
            f"name after the colon, no dunder names), got {shown(spec)}"
        )
    return module, attr


def check_trust(trust: Iterable[str]) -> tuple[str, ...]:
    """The packages a caller trusts, checked: ASCII package names, none of the standard library or
    of the libraries reverso reaches through their registries (:data:`LIBRARIES`)."""
    if isinstance(trust, (str, bytes)) or not isinstance(trust, Iterable):
        raise OptionError(
            f"trust must list package names (e.g. trust=['mypkg']), got {shown(trust)}"
        )
    trust = tuple(trust)
    for name in trust:
        if not isinstance(name, str) or not DOTTED.match(name) or "__" in name:
            raise OptionError(
                f"trust must list package names (e.g. trust=['mypkg']), got {shown(name)}"
            )
        top = name.split(".")[0]
        if top in LIBRARIES or top in sys.stdlib_module_names or top == "builtins":
            raise OptionError(
                f"trust={name!r} would let a file call any function of {top!r}; reverso builds "
                "timm, torchvision and its own models by name without trust=, and trusts only "
                "your own packages"
            )
    return trust


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _import(module_name: str, trust, where: str, asked: str, error, libraries=()):
    """The module named exactly ``module_name`` and the package that allowed it: one of
    ``trust`` must hold it (it is imported as ``import`` would), or one of ``libraries`` (it must
    be imported already: importing some of their modules has side effects)."""
    if any(_inside(module_name, library) for library in libraries):
        module = sys.modules.get(module_name)
        if module is None:
            raise error(
                f"{where}: {module_name} is not a module the model's libraries have loaded; a "
                "leaf class must be one the source model uses"
            )
        return module, module_name.split(".")[0]
    package = next((t for t in trust if _inside(module_name, t)), None)
    if package is None:
        top = module_name.split(".")[0]
        suggestion = (
            f" If you trust this file and {top!r} is your own package, pass trust=[{top!r}]"
            if top not in LIBRARIES and top not in sys.stdlib_module_names
            else ""
        )
        raise ReversoError(
            f"{where} {asked}; reverso only calls code from packages you trust.{suggestion}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise error(f"{where}: cannot import {module_name} ({err})") from err
    if module.__name__ != module_name:  # an alias in sys.modules
        raise error(f"{where}: {module_name} is an alias of {module.__name__}")
    return module, package


def resolve_factory(spec: str, trust: tuple[str, ...], where: str, error=FileFormatError):
    """The function ``spec`` names, if its package is trusted (see the module)."""
    module_name, attr = check_factory_name(spec, where, error)
    module, package = _import(
        module_name, trust, where, f"asks to build its model with {spec}", error
    )
    obj = module.__dict__.get(attr)
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        raise error(f"{where}: {spec} is not a function or class defined in {module_name}")
    if not _inside(getattr(obj, "__module__", "") or "", package):
        raise error(
            f"{where}: {spec} is {obj.__module__}.{obj.__qualname__}, defined outside {package!r}"
        )
    return obj


def build(source: Source, trust: tuple[str, ...] = (), where: str = "source") -> nn.Module:
    """The model ``source`` names, built through its registry (on the current default device);
    it remembers its source (``reverso_source``)."""
    try:
        model = _build(source, trust, where)
    except ReversoError:
        raise
    except Exception as err:  # timm's, torchvision's or reverso's builder refused the arguments
        if source.registry == "factory":  # the trusted package's own error
            raise
        raise FileFormatError(
            f"{where}: {source.label} cannot be built with {shown(dict(source.kwargs))} "
            f"({type(err).__name__}: {str(err)[:200]})"
        ) from err
    if not isinstance(model, nn.Module):
        raise FileFormatError(
            f"{where}: {source.name} returned {type(model).__name__}, not a module"
        )
    model.reverso_source = source.to_json()
    return model


def _build(source: Source, trust: tuple[str, ...], where: str):
    if source.registry == "timm":
        import timm

        entry_points = sys.modules.get("reverso.timm")  # registered by import reverso.timm
        if entry_points is not None and entry_points.is_entry_point(source.name):
            raise FileFormatError(
                f"{where}: {source.name} is reverso's top-down entry point in timm; a recipe "
                "names the bottom-up model it converts"
            )
        if not timm.is_model(source.name):
            raise FileFormatError(
                f"{where}: timm {timm.__version__} has no model {shown(source.name)}"
                + _close(source.name, timm.list_models())
            )
        return timm.create_model(source.name, pretrained=False, **source.kwargs)
    if source.registry == "torchvision":
        import torchvision.models as tvm

        if source.name not in tvm.list_models(module=tvm):
            raise FileFormatError(
                f"{where}: {shown(source.name)} is not a torchvision classification model"
                + _close(source.name, tvm.list_models(module=tvm))
            )
        return tvm.get_model_builder(source.name)(weights=None, **source.kwargs)
    if source.registry == "reverso":
        from reverso import models

        if source.name not in models.MODELS:
            raise FileFormatError(f"{where}: reverso has no reference model {shown(source.name)}")
        return models.create(source.name, **source.kwargs)
    return resolve_factory(source.name, trust, where)(**source.kwargs)


def resolve_leaf(name, trust: tuple[str, ...], where: str, error=FileFormatError):
    """A leaf module recorded in a recipe: a module path (``"layer1.0"``) as it is, a class as
    ``"package.module:Class"`` (torch's, timm's, torchvision's, reverso's or a trusted package's;
    it must be an ``nn.Module`` class defined in that module)."""
    if not isinstance(name, str) or len(name) > MAX_TEXT:
        raise error(f"{where} must be a module path or 'package.module:Class', got {shown(name)}")
    if ":" not in name:
        if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", name):
            raise error(f"{where}: {shown(name)} is not a module path like 'layer1.0'")
        return name
    module_name, _, qualname = name.partition(":")
    if not DOTTED.match(module_name) or not DOTTED.match(qualname) or "__" in name:
        raise error(f"{where}: {shown(name)} is not 'package.module:Class'")
    asked, libraries = f"names the leaf class {name}", ("torch", "timm", "torchvision", "reverso")
    obj, _ = _import(module_name, trust, where, asked, error, libraries)
    for part in qualname.split("."):
        obj = (obj.__dict__ if inspect.ismodule(obj) else vars(obj)).get(part)
        if not inspect.isclass(obj):
            break
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module_name):
        raise error(f"{where}: {name} is not an nn.Module class defined in {module_name}")
    return obj


def _close(name: str, choices) -> str:
    from reverso.names import close_matches

    if not name.isascii():
        return ""
    close = close_matches(name, choices, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""
