"""reverso: a pluggable torch.fx compiler from bottom-up CNNs to top-down networks.

>>> import reverso
>>> td = reverso.topdown("resnet18", input_size=(3, 64, 64))
>>> print(reverso.analyze("resnet18", (3, 64, 64)))

Names are imported on first use (PEP 562), so ``import reverso`` and ``reverso --help`` do not
pay for importing torch, timm and foolbox until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> (module it lives in, attribute there)
_EXPORTS: dict[str, tuple[str, str]] = {
    "ERF": ("study.erf", "ERF"),
    "RF": ("study.receptive", "RF"),
    "CompileContext": ("planner.context", "CompileContext"),
    "DatasetError": ("errors", "DatasetError"),
    "FileFormatError": ("errors", "FileFormatError"),
    "InputSizeError": ("errors", "InputSizeError"),
    "NoDownsamplingError": ("errors", "NoDownsamplingError"),
    "OptionError": ("errors", "OptionError"),
    "Pass": ("compiler.base", "Pass"),
    "PassError": ("errors", "PassError"),
    "PassResult": ("compiler.base", "PassResult"),
    "Pipeline": ("compiler.pipeline", "Pipeline"),
    "RFReport": ("study.receptive", "RFReport"),
    "ReversoError": ("errors", "ReversoError"),
    "RobustnessReport": ("study.robustness", "RobustnessReport"),
    "StageReport": ("analysis", "StageReport"),
    "Summary": ("study.summary", "Summary"),
    "TopDownNet": ("convert.network", "TopDownNet"),
    "TopDownOptions": ("options", "TopDownOptions"),
    "TraceError": ("errors", "TraceError"),
    "TrainResult": ("study.train", "TrainResult"),
    "UnsupportedTopologyError": ("errors", "UnsupportedTopologyError"),
    "WidthError": ("errors", "WidthError"),
    "analyze": ("analysis", "analyze"),
    "antialias": ("convert.transforms", "antialias"),
    "checkpoint": ("convert.transforms", "checkpoint"),
    "default_pipeline": ("passes", "default_pipeline"),
    "erf": ("study.erf", "erf"),
    "frames": ("convert.structured", "frames"),
    "steerable": ("convert.structured", "steerable"),
    "hierarchical": ("convert.structured", "hierarchical"),
    "collapse_frames": ("convert.structured", "collapse_frames"),
    "evaluate": ("study.train", "evaluate"),
    "gradcam": ("study.gradcam", "gradcam"),
    "load": ("convert.saving", "load"),
    "njet": ("convert.transforms", "njet"),
    "per_branch": ("study.branches", "per_branch"),
    "plot_erfs": ("study.figures", "plot_erfs"),
    "plot_robustness": ("study.figures", "plot_robustness"),
    "plot_training": ("study.figures", "plot_training"),
    "receptive_fields": ("study.receptive", "receptive_fields"),
    "register_width_rule": ("rewrite.widths", "register_width_rule"),
    "remember_source": ("frontend.provenance", "remember_source"),
    "reversible": ("convert.transforms", "reversible"),
    "robustness": ("study.robustness", "robustness"),
    "save": ("convert.saving", "save"),
    "saved_bytes": ("study.memory", "saved_bytes"),
    "shift_adversary_accuracy": ("study.shift", "shift_adversary_accuracy"),
    "shift_consistency": ("study.shift", "consistency"),
    "side_by_side": ("study.summary", "side_by_side"),
    "summary": ("study.summary", "summary"),
    "topdown": ("convert.topdown", "topdown"),
    "trace": ("frontend.tracing", "trace"),
    "train": ("study.train", "train"),
}
_SUBMODULES = (
    "analysis", "cli", "compiler", "convert", "demo", "frontend", "ir", "models", "names", "nn",
    "options", "passes", "planner", "rewrite", "settings", "study", "support", "testing",
)  # fmt: skip
#: short names for the study tools' modules: ``reverso.data.mnist5k()``
_ALIASES = {"data": "study.data"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, *_ALIASES])


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
    elif name in _SUBMODULES or name in _ALIASES:
        value = importlib.import_module(f".{_ALIASES.get(name, name)}", __name__)
    else:
        raise AttributeError(f"module 'reverso' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what static tools see; at run time these come from __getattr__
    from . import (
        analysis,
        cli,
        compiler,
        convert,
        frontend,
        ir,
        models,
        names,
        nn,
        options,
        passes,
        planner,
        rewrite,
        settings,
        study,
        testing,
    )
    from .analysis import StageReport, analyze
    from .compiler.base import Pass, PassResult
    from .compiler.pipeline import Pipeline
    from .convert.network import TopDownNet
    from .convert.saving import load, save
    from .convert.structured import collapse_frames, frames, hierarchical, steerable
    from .convert.topdown import topdown
    from .convert.transforms import antialias, checkpoint, njet, reversible
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
    from .frontend.provenance import remember_source
    from .frontend.tracing import trace
    from .options import TopDownOptions
    from .passes import default_pipeline
    from .planner.context import CompileContext
    from .rewrite.widths import register_width_rule
    from .study import data
    from .study.branches import per_branch
    from .study.erf import ERF, erf
    from .study.figures import plot_erfs, plot_robustness, plot_training
    from .study.gradcam import gradcam
    from .study.memory import saved_bytes
    from .study.receptive import RF, RFReport, receptive_fields
    from .study.robustness import RobustnessReport, robustness
    from .study.shift import consistency as shift_consistency
    from .study.shift import shift_adversary_accuracy
    from .study.summary import Summary, side_by_side, summary
    from .study.train import TrainResult, evaluate, train
