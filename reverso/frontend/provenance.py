"""Where a model came from, so that :func:`reverso.load` can rebuild it from a file.

The answer is a :class:`~reverso.frontend.sources.Source`: a timm model (from its
``pretrained_cfg``), one of reverso's reference models, a torchvision builder (recognised from the
model's structure), or a factory named with :func:`remember_source`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import nn

from reverso.errors import OptionError
from reverso.frontend.sources import Source, check_factory_name, check_kwargs


def source_of(model: nn.Module) -> Source | None:
    """Where ``model`` came from, as :func:`reverso.load` rebuilds it: a timm model, a model built
    by :func:`reverso.models.create` or marked with :func:`remember_source`; None otherwise."""
    remembered = getattr(model, "reverso_source", None)  # the JSON form of a Source
    if remembered is not None:
        return Source.from_json(remembered, f"{type(model).__name__}.reverso_source", OptionError)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if arch is None or not type(model).__module__.startswith("timm."):
        return None
    kwargs = {}
    if isinstance(getattr(model, "num_classes", None), int):
        kwargs["num_classes"] = model.num_classes
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        kwargs["in_chans"] = first_conv.in_channels
    return Source("timm", arch, kwargs)


def remember_source(model: nn.Module, factory: str, **kwargs) -> nn.Module:
    """Mark ``model`` as built by ``factory(**kwargs)`` (``"package.module:function"``, with
    keyword arguments that are JSON scalars) so that a converted copy saved with
    :func:`reverso.save` can be rebuilt by :func:`reverso.load` (given ``trust=``)."""
    check_factory_name(factory, "factory", OptionError)
    source = Source("factory", factory, check_kwargs(kwargs, "source_kwargs", OptionError))
    model.reverso_source = source.to_json()
    return model


def qualified_name(leaf: type | str) -> str:
    """A leaf module class as ``"package.module:Class"``; a module path (``"layer1.0"``) as is."""
    return leaf if isinstance(leaf, str) else f"{leaf.__module__}:{leaf.__qualname__}"


@dataclass(frozen=True)
class SourceModel:
    """What a converted model remembers of the model it was converted from: its class, and the
    shapes of its state, from which :func:`torchvision_source` recognises a torchvision builder
    when the model is saved (not at conversion time: that search builds candidates)."""

    class_name: str  # "package.module:Class"
    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @staticmethod
    def of(model: nn.Module) -> SourceModel:
        shapes = tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
        return SourceModel(qualified_name(type(model)), shapes)

    @staticmethod
    def original(model: nn.Module) -> SourceModel:
        """The model a chain of conversions started from: what ``model`` remembers if reverso
        made it, else ``model`` itself."""
        return getattr(model, "reverso_source_model", None) or SourceModel.of(model)

    @property
    def short_name(self) -> str:
        return self.class_name.rpartition(":")[2]


@functools.lru_cache(maxsize=32)  # saving the same model again is instant
def torchvision_source(source: SourceModel) -> Source | None:
    """The torchvision builder of the same module that, called with no weights and the same
    ``num_classes``, gives exactly the model's state (names and shapes); None when none does."""
    module = source.class_name.partition(":")[0]
    if not module.startswith("torchvision.models"):
        return None
    import torchvision.models as tvm

    wanted = dict(source.shapes)
    for name in sorted(tvm.list_models(module=tvm)):
        builder = tvm.get_model_builder(name)
        if builder.__module__ != module:
            continue
        kwargs: dict = {}
        shapes = _built_shapes(builder, kwargs)
        if shapes is not None and shapes.keys() == wanted.keys() and shapes != wanted:
            classes = _classes_if_only_the_classifier_differs(shapes, wanted)
            if classes is not None:
                kwargs = {"num_classes": classes}
                shapes = _built_shapes(builder, kwargs)
        if shapes == wanted:
            return Source("torchvision", name, kwargs)
    return None


def _built_shapes(builder, kwargs: dict) -> dict | None:
    """The state shapes of ``builder(weights=None, **kwargs)``, built without weights."""
    from reverso.frontend.meta import weightless

    try:
        with weightless():
            model = builder(weights=None, **kwargs)
    except Exception:  # some builders cannot run on meta tensors: they are not candidates
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _classes_if_only_the_classifier_differs(built: dict, wanted: dict) -> int | None:
    """The one size in which the differing tensors differ (their first dimension), if the
    tensors that differ do so only there: the classifier of another number of classes."""
    sizes = set()
    for key, shape in built.items():
        other = wanted[key]
        if shape != other:
            if len(shape) != len(other) or shape[1:] != other[1:]:
                return None
            sizes.add(other[0])
    return sizes.pop() if len(sizes) == 1 else None
