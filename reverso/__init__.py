"""reverso: a pluggable torch.fx compiler from bottom-up CNNs to top-down networks.

>>> import reverso
>>> td = reverso.topdown("resnet18", input_size=(3, 64, 64))
>>> print(reverso.analyze("resnet18", (3, 64, 64)))

Names are imported on first use (PEP 562), so ``import reverso`` and ``reverso --help`` do not
pay for importing torch, timm and foolbox until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> (module it lives in, attribute there)
_EXPORTS: dict[str, tuple[str, str]] = {
    "ERF": ("erf", "ERF"),
    "RF": ("receptive", "RF"),
    "CompileContext": ("context", "CompileContext"),
    "DatasetError": ("errors", "DatasetError"),
    "FileFormatError": ("errors", "FileFormatError"),
    "InputSizeError": ("errors", "InputSizeError"),
    "NoDownsamplingError": ("errors", "NoDownsamplingError"),
    "OptionError": ("errors", "OptionError"),
    "Pass": ("pipeline", "Pass"),
    "PassError": ("errors", "PassError"),
    "PassResult": ("pipeline", "PassResult"),
    "Pipeline": ("pipeline", "Pipeline"),
    "RFReport": ("receptive", "RFReport"),
    "ReversoError": ("errors", "ReversoError"),
    "RobustnessReport": ("robustness", "RobustnessReport"),
    "StageReport": ("analysis", "StageReport"),
    "Summary": ("summary", "Summary"),
    "TopDownNet": ("network", "TopDownNet"),
    "TopDownOptions": ("context", "TopDownOptions"),
    "TraceError": ("errors", "TraceError"),
    "TrainResult": ("train", "TrainResult"),
    "UnsupportedTopologyError": ("errors", "UnsupportedTopologyError"),
    "WidthError": ("errors", "WidthError"),
    "analyze": ("analysis", "analyze"),
    "antialias": ("transforms", "antialias"),
    "default_pipeline": ("pipeline", "default_pipeline"),
    "erf": ("erf", "erf"),
    "evaluate": ("train", "evaluate"),
    "gradcam": ("gradcam", "gradcam"),
    "load": ("saving", "load"),
    "njet": ("transforms", "njet"),
    "plot_erfs": ("erf", "plot_erfs"),
    "plot_robustness": ("robustness", "plot_robustness"),
    "plot_training": ("train", "plot_training"),
    "receptive_fields": ("receptive", "receptive_fields"),
    "register_width_rule": ("widths", "register_width_rule"),
    "remember_source": ("provenance", "remember_source"),
    "robustness": ("robustness", "robustness"),
    "save": ("saving", "save"),
    "shift_adversary_accuracy": ("shift", "shift_adversary_accuracy"),
    "shift_consistency": ("shift", "consistency"),
    "side_by_side": ("summary", "side_by_side"),
    "summary": ("summary", "summary"),
    "topdown": ("topdown", "topdown"),
    "trace": ("tracing", "trace"),
    "train": ("train", "train"),
}
_SUBMODULES = ("data", "graph", "models", "nn", "passes", "testing")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'reverso' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Several public functions share their name with the module that defines them
    (``reverso.gradcam``, ``reverso.train``, ...). Importing such a module makes Python set it as
    an attribute of the package; the function keeps the name instead (the module stays reachable
    through ``sys.modules`` and ``from reverso.gradcam import ...``)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # what static tools see; at run time these come from __getattr__
    from . import data, graph, models, nn, passes, testing
    from .analysis import StageReport, analyze
    from .context import CompileContext, TopDownOptions
    from .erf import ERF, erf, plot_erfs
    from .errors import (
        DatasetError,
        FileFormatError,
        InputSizeError,
        NoDownsamplingError,
        OptionError,
        PassError,
        ReversoError,
        TraceError,
        UnsupportedTopologyError,
        WidthError,
    )
    from .gradcam import gradcam
    from .network import TopDownNet
    from .pipeline import Pass, PassResult, Pipeline, default_pipeline
    from .provenance import remember_source
    from .receptive import RF, RFReport, receptive_fields
    from .robustness import RobustnessReport, plot_robustness, robustness
    from .saving import load, save
    from .shift import consistency as shift_consistency
    from .shift import shift_adversary_accuracy
    from .summary import Summary, side_by_side, summary
    from .topdown import topdown
    from .tracing import trace
    from .train import TrainResult, evaluate, plot_training, train
    from .transforms import antialias, njet
    from .widths import register_width_rule
