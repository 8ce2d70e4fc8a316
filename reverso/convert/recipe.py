"""The recipe: how to rebuild a converted network, as data with a schema.

Every conversion records one :class:`Recipe` on the network it returns (``net.reverso_recipe``),
:func:`reverso.save` writes it as JSON next to the weights, and :func:`reverso.load` reads it back
through :meth:`Recipe.from_json`, which checks every field before anything is built: its type and
range, the known strings of each choice, the length of every list and the depth of the whole, and
refuses keys it does not know. The JSON form::

    {"format": "reverso", "version": 1, "dtype": "float32",        (the file's first step only)
     "transform": "topdown",                                          (see TRANSFORM_OPTIONS)
     "source": {"timm": "resnet18", "kwargs": {"num_classes": 10}},   (or "base": a recipe)
     "input_size": [3, 224, 224],
     "options": {...},                                                (topdown; "kwargs" for others)
     "pipeline": [{"name": "filter_arrangement", "kwargs": {}}, ...], (topdown)
     "passes": ["filter_arrangement", ...],                           (topdown, the pipeline's names)
     "leaf_modules": ["timm.layers.blur_pool:BlurPool2d", "layer1.0"]}

A conversion of a network reverso made (a chain: frames of a top-down net) names the recipe of
that network as its ``base`` instead of a source.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from reverso.errors import FileFormatError, OptionError
from reverso.frontend.sources import Source, check_kwargs
from reverso.options import TRANSFORM_OPTIONS, Options, check_size, shown
from reverso.passes import BUILTIN

FORMAT = "reverso"
VERSION = 1
#: the longest chain of conversions, the deepest JSON nesting and the longest recipe a file holds
MAX_CHAIN = 16
MAX_DEPTH = 48
MAX_BYTES = 1 << 20
#: the most passes in a pipeline and leaf modules in a recipe
MAX_ITEMS = 64
#: the dtypes a saved network may have
DTYPES = ("float32", "float64", "float16", "bfloat16")

#: the keys each step may hold besides transform, source/base and input_size
STEP_KEYS = {
    "topdown": ("options", "pipeline", "passes", "leaf_modules"),
    "antialias": ("kwargs", "leaf_modules"),
}
FILE_KEYS = ("format", "version", "dtype")


@dataclass(frozen=True)
class PassConfig:
    """A pass of a top-down pipeline: its registered ``name`` and its options as JSON; ``options``
    None for a pass only the user's code knows (it cannot be saved)."""

    name: str
    options: Mapping | None

    @classmethod
    def of(cls, step) -> PassConfig:
        config = step.config()
        return cls(step.name, None if config is None else config["kwargs"])

    def to_json(self) -> dict | None:
        return None if self.options is None else {"name": self.name, "kwargs": dict(self.options)}


@dataclass(frozen=True)
class Recipe:
    """How a network reverso made is rebuilt from the model it was converted from."""

    transform: str
    options: Options | None = None
    input_size: tuple[int, int, int] | None = None
    source: Source | None = None  # the model the chain starts from (first step only)
    base: Recipe | None = None  # the network this step converted (chains)
    pipeline: tuple[PassConfig, ...] = ()  # topdown only
    leaf_modules: tuple[str, ...] = ()  # classes as "package.module:Class", or module paths

    def __post_init__(self):
        if self.transform not in TRANSFORM_OPTIONS:
            raise OptionError(f"unknown transform {self.transform!r}")

    # -- the chain --------------------------------------------------------------------------
    @property
    def steps(self) -> list[Recipe]:
        """The chain, last conversion first."""
        steps, step = [], self
        while step is not None:
            steps.append(step)
            step = step.base
        return steps

    @property
    def first(self) -> Recipe:
        """The chain's first step: the one that names the source model."""
        return self.steps[-1]

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)

    def with_source(self, source: Source) -> Recipe:
        """The chain with its first step built from ``source``."""
        if self.base is None:
            return self.replace(source=source)
        return self.replace(base=self.base.with_source(source))

    # -- JSON -------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The recipe as JSON (without the file's format, version and dtype)."""
        data: dict = {"transform": self.transform}
        if self.base is not None:
            data["base"] = self.base.to_json()
        elif self.source is not None:
            data["source"] = self.source.to_json()
        data["input_size"] = list(self.input_size) if self.input_size is not None else None
        options = self.options.to_json() if self.options is not None else {}
        if self.transform == "topdown":
            data["options"] = options
            data["pipeline"] = [p.to_json() for p in self.pipeline]
            data["passes"] = [p.name for p in self.pipeline]
        else:
            data["kwargs"] = options
        if "leaf_modules" in STEP_KEYS.get(self.transform, ()):
            data["leaf_modules"] = list(self.leaf_modules)
        return data

    def file_json(self, dtype: str) -> str:
        """The JSON text a file holds: the recipe with its format, version and the network's
        dtype. Refuses a recipe :func:`reverso.load` could not rebuild."""
        for step in self.steps:
            custom = [p.name for p in step.pipeline if p.options is None]
            if custom:
                raise OptionError(
                    f"this network was compiled with passes reverso cannot rebuild "
                    f"({', '.join(custom)}: your own); save its state_dict instead, and recompile "
                    "with the same passes to load it"
                )
        data = {**self.to_json(), "format": FORMAT, "version": VERSION, "dtype": dtype}
        text = json.dumps(data, sort_keys=True)
        Recipe.from_text(text, "the recipe being saved", error=OptionError)  # what load will read
        return text

    @classmethod
    def from_text(cls, text, where: str = "recipe", error=FileFormatError) -> tuple[Recipe, str]:
        """A file's recipe and its dtype, from its JSON text, every field checked."""
        if not isinstance(text, str) or len(text.encode()) > MAX_BYTES:
            raise error(f"{where} is not a JSON text of at most {MAX_BYTES} bytes")
        depth = json_depth(text)
        if depth > MAX_DEPTH:
            raise error(f"{where} is nested {depth} levels deep; a recipe is at most {MAX_DEPTH}")
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError, FileFormatError) as err:
            raise error(f"{where} is not valid JSON ({str(err)[:200]})") from None
        if not isinstance(data, dict):
            raise error(f"{where} must be a JSON object, got {shown(data)}")
        if data.get("format") != FORMAT:
            raise error(f"{where}.format must be {FORMAT!r}, got {shown(data.get('format'))}")
        version = data.get("version")
        if type(version) is not int or version != VERSION:
            newer = type(version) is int and version > VERSION
            raise error(
                f"{where}.version is {shown(version)}; this reverso reads recipes of version "
                f"{VERSION} (the integer)" + ("; the file is newer than this reverso" * newer)
            )
        dtype = data.get("dtype", "float32")
        if dtype not in DTYPES:
            raise error(f"{where}.dtype must be one of {', '.join(DTYPES)}, got {shown(dtype)}")
        step = {k: v for k, v in data.items() if k not in FILE_KEYS}
        return cls.from_json(step, "", lambda message: error(f"{where}: {message}")), dtype

    @classmethod
    def from_json(cls, data, where: str = "", error=FileFormatError, depth: int = 0) -> Recipe:
        """One step of a recipe (and the chain below it), every field checked."""
        if not isinstance(data, Mapping):
            raise error(f"{where or 'it'} must be a JSON object, got {shown(data)}")
        transform = data.get("transform")
        if not isinstance(transform, str) or transform not in TRANSFORM_OPTIONS:
            raise error(
                f"{_at(where, 'transform')} must be one of {', '.join(TRANSFORM_OPTIONS)}, got "
                f"{shown(transform)}"
            )
        allowed = {"transform", "input_size", "source", "base", *STEP_KEYS.get(transform, ())}
        if transform != "topdown":
            allowed.add("kwargs")
        unknown = sorted(set(data) - allowed, key=str)
        if unknown:
            raise error(
                f"{_at(where, '')}unknown key {shown(unknown[0])} for transform {transform!r}; it holds "
                f"{', '.join(sorted(allowed))}"
            )
        if ("source" in data) == ("base" in data):
            raise error(
                f"{where or 'it'} must hold either a source or a base (the network converted)"
            )
        source = base = None
        if "base" in data:
            if depth + 1 >= MAX_CHAIN:
                raise error(f"{_at(where, '')}a chain of more than {MAX_CHAIN} conversions")
            base = cls.from_json(data["base"], _at(where, "base"), error, depth + 1)
        else:
            source = Source.from_json(data["source"], _at(where, "source"), error)
        size = data.get("input_size")
        input_size = None if size is None else check_size(size, _at(where, "input_size"), error)
        option_class = TRANSFORM_OPTIONS[transform]
        options = None
        if option_class is not None:
            key = "options" if transform == "topdown" else "kwargs"
            options = option_class.from_dict(data.get(key, {}), where=_at(where, key), error=error)
        elif data.get("kwargs"):
            raise error(f"{_at(where, 'kwargs')}: transform 'none' takes no options")
        pipeline = ()
        if transform == "topdown":
            pipeline = _pipeline(data.get("pipeline", []), _at(where, "pipeline"), error)
            names = data.get("passes", [p.name for p in pipeline])
            if (
                not isinstance(names, list)
                or len(names) > MAX_ITEMS
                or not all(isinstance(n, str) and len(n) <= 64 for n in names)
            ):
                raise error(f"{_at(where, 'passes')} must list pass names, got {shown(names)}")
        leaves = data.get("leaf_modules", [])
        if (
            not isinstance(leaves, list)
            or len(leaves) > MAX_ITEMS
            or not all(isinstance(n, str) and len(n) <= 200 and n.isascii() for n in leaves)
        ):
            raise error(
                f"{_at(where, 'leaf_modules')} must list module paths or 'package.module:Class' names, "
                f"got {shown(leaves)}"
            )
        return cls(transform, options, input_size, source, base, pipeline, tuple(leaves))


def _at(where: str, key) -> str:
    """The path of a field: ``options.merge`` (with key ``""``: ``"options: "``, or nothing at
    the top)."""
    if key == "":
        return f"{where}: " if where else ""
    return f"{where}.{key}" if where else str(key)


def json_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in a JSON text (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _refuse_constant(name: str):
    raise FileFormatError(f"{name} is not a JSON number")


def _pipeline(configs, where: str, error) -> tuple[PassConfig, ...]:
    """The saved pipeline, each pass a built-in or registered one with its options checked."""
    from reverso.compiler import catalogue

    if not isinstance(configs, list) or len(configs) > MAX_ITEMS:
        raise error(f"{where} must list at most {MAX_ITEMS} passes, got {shown(configs)}")
    checked = []
    for i, config in enumerate(_split_passes(configs)):
        at = f"{where}[{i}]"
        if not isinstance(config, Mapping) or set(config) != {"name", "kwargs"}:
            raise error(f"{at} must be an object with 'name' and 'kwargs', got {shown(config)}")
        name, kwargs = config["name"], config["kwargs"]
        if not isinstance(name, str) or name not in catalogue.names():
            raise error(
                f"{at}.name {shown(name)} is no registered pass; this reverso knows "
                f"{', '.join(catalogue.names())}"
            )
        if name in BUILTIN and not BUILTIN[name].inside_topdown:
            raise error(f"{at}.name: the pass {name!r} does not run inside a top-down pipeline")
        option_class = BUILTIN[name].Options if name in BUILTIN else None
        if option_class is not None:
            kwargs = option_class.from_dict(kwargs, where=f"{at}.kwargs", error=error).to_json()
        elif name in BUILTIN:
            if kwargs != {}:
                raise error(f"{at}.kwargs: the pass {name!r} takes no options, got {shown(kwargs)}")
        else:  # another package's pass: imported only when trusted (reverso.convert.builders)
            kwargs = check_kwargs(kwargs, f"{at}.kwargs", error)
        checked.append(PassConfig(name, kwargs))
    return tuple(checked)


def _split_passes(configs: list) -> list:
    """A pipeline saved before ``downsample_to_upsample`` was split (reverso 0.1.0 files) gets the
    passes that now do its other rewrites, around it: the same network is built."""
    names = [c.get("name") if isinstance(c, Mapping) else None for c in configs]
    if "downsample_to_upsample" not in names or "stride_one" in names:
        return configs
    i = names.index("downsample_to_upsample")
    stride_one = {"name": "stride_one", "kwargs": {}}
    drop = {"name": "drop_projections", "kwargs": {}}
    return [*configs[:i], stride_one, configs[i], drop, *configs[i + 1 :]]


def recipe_of(model: nn.Module) -> Recipe | None:
    """The recipe of a network reverso made (the last conversion of a chain); None otherwise."""
    recipe = getattr(model, "reverso_recipe", None)
    return recipe if isinstance(recipe, Recipe) else None


def origin(model: nn.Module) -> dict:
    """What a conversion of ``model`` records as its input: ``{"base": recipe}`` when reverso made
    ``model`` (a chain: ``reverso.frames(reverso.topdown(m))``), else ``{"source": ...}`` (None
    when reverso cannot tell; :func:`reverso.save` then asks for it)."""
    from reverso.frontend.provenance import source_of

    base = recipe_of(model)
    return {"base": base} if base is not None else {"source": source_of(model)}
