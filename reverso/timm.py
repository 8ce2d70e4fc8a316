"""Top-down networks as timm models: ``import reverso.timm`` registers ``topdown_<name>`` for
every timm model, so that timm's tools (``create_model``, ``train.py``, ``validate.py``,
``features_only`` backbones) build top-down networks by name::

    import timm
    import reverso.timm

    model = timm.create_model("topdown_resnet18", num_classes=10, input_size=(3, 64, 64))

``timm.create_model("topdown_<name>", ...)`` builds timm's ``<name>`` (with ``pretrained``,
``pretrained_cfg``, ``pretrained_cfg_overlay`` and the model's own keyword arguments, through
timm's loading, so ``pretrained_cfg_overlay=dict(file=...)`` loads local weights) and converts it
with :func:`reverso.topdown`, whose options it takes as keyword arguments (``input_size``,
``arrangement``, ``merge``, ``upsample``, ``pyramid``, ``njet``, ``memory``, ``merge_width``,
``leaf_modules``). ``features_only=True`` wraps the network in timm's feature getter (the
intermediates of ``forward_intermediates``, finest first; ``feature_cls="fx"`` extracts them from
the fx graph instead). Registering takes a few milliseconds: nothing is converted until a model
is created.
"""

from __future__ import annotations

import timm
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import FeatureGetterNet
from timm.models._features_fx import FeatureGraphNet
from timm.models._registry import _model_entrypoints, register_model

from reverso.errors import OptionError

PREFIX = "topdown_"
#: the keyword arguments ``create_model`` hands to :func:`reverso.topdown` (the rest go to timm)
TOPDOWN_ARGUMENTS = (
    "input_size",
    "arrangement",
    "merge",
    "upsample",
    "pyramid",
    "njet",
    "memory",
    "merge_width",
    "leaf_modules",
)


def create(arch: str, pretrained: bool = False, **kwargs):
    """The top-down network of timm's ``arch`` (what ``timm.create_model(PREFIX + arch)`` calls)."""
    from reverso.convert.topdown import topdown

    options = {key: kwargs.pop(key) for key in TOPDOWN_ARGUMENTS if key in kwargs}
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    feature_cls = kwargs.pop("feature_cls", "getter")
    num_classes = kwargs.pop("num_classes", None)
    global_pool = kwargs.pop("global_pool", None)
    if global_pool == "" and num_classes:
        raise OptionError("global_pool='' gives the unpooled feature map: pass num_classes=0")
    # the bottom-up model keeps a classifier: its conversion then has a head to keep
    if num_classes:
        kwargs["num_classes"] = num_classes
    if global_pool:  # a named pooling is the bottom-up head's, which the top-down net keeps
        kwargs["global_pool"] = global_pool
    model = timm.create_model(arch, pretrained=pretrained, **kwargs)
    net = topdown(model, **options)
    if num_classes == 0 or features_only:
        net.reset_classifier(0, "" if features_only else global_pool)
    if features_only:
        return features(net, out_indices, feature_cls)
    return net


def features(net, out_indices=None, feature_cls: str = "getter"):
    """``net`` as a features-only backbone: timm's feature getter over ``forward_intermediates``
    (``"getter"``), or an fx graph extractor (``"fx"``), both listing the features finest first."""
    indices = tuple(range(len(net.feature_info))) if out_indices is None else out_indices
    if feature_cls == "getter":
        wrapped = FeatureGetterNet(net, out_indices=indices)
    elif feature_cls == "fx":
        wrapped = FinestFirstGraphNet(net, out_indices=indices)
    else:
        raise OptionError(f"feature_cls must be 'getter' or 'fx', got {feature_cls!r}")
    wrapped.pretrained_cfg = wrapped.default_cfg = pretrained_cfg_for_features(net.pretrained_cfg)
    return wrapped


class FinestFirstGraphNet(FeatureGraphNet):
    """timm's fx feature extractor, its features listed as ``feature_info`` lists them (finest
    first: the graph computes them coarse to fine, and timm's extractor lists them in the
    graph's order)."""

    def __init__(self, model, out_indices, **kwargs):
        super().__init__(model, out_indices, return_dict=True, **kwargs)
        self.keys = [str(i) for i in self.feature_info.out_indices]

    def forward(self, x):
        out = self.graph_module(x)
        return [out[key] for key in self.keys]


def _entry(arch: str):
    def entry(pretrained: bool = False, **kwargs):
        return create(arch, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = PREFIX + arch
    entry.__module__ = __name__
    entry.__doc__ = f"The top-down network of timm's {arch} (reverso.topdown of it)."
    return entry


def register() -> list[str]:
    """Register ``topdown_<name>`` for every timm model not registered yet; the new names."""
    names = []
    for arch in timm.list_models():
        name = PREFIX + arch
        if arch.startswith(PREFIX) or name in _model_entrypoints:
            continue
        register_model(_entry(arch))
        names.append(name)
    return names


def is_entry_point(name: str) -> bool:
    """Whether the timm model ``name`` is one of these entry points (a top-down network)."""
    entry = _model_entrypoints.get(name)
    return entry is not None and getattr(entry, "__module__", "") == __name__


__all__: list[str] = []  # register_model appends every name it registers
register()
