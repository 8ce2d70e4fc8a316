"""reverso: a pluggable torch.fx compiler from bottom-up CNNs to top-down networks.

>>> import reverso
>>> td = reverso.topdown("resnet18", input_size=(3, 64, 64))
>>> print(reverso.analyze("resnet18", (3, 64, 64)))
"""

from . import data, graph, models, nn, passes
from .analysis import StageReport, analyze
from .context import CompileContext, TopDownOptions
from .erf import ERF, erf
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
from .receptive import RF, RFReport, receptive_fields
from .robustness import RobustnessReport, plot_robustness, robustness
from .saving import load, save
from .shift import consistency as shift_consistency
from .shift import shift_adversary_accuracy
from .summary import Summary, side_by_side, summary
from .topdown import remember_source, topdown
from .tracing import trace
from .train import TrainResult, evaluate, train
from .transforms import antialias, njet
from .widths import register_width_rule

__version__ = "0.1.0"

__all__ = [
    "ERF",
    "RF",
    "CompileContext",
    "DatasetError",
    "FileFormatError",
    "InputSizeError",
    "NoDownsamplingError",
    "OptionError",
    "Pass",
    "PassError",
    "PassResult",
    "Pipeline",
    "RFReport",
    "ReversoError",
    "RobustnessReport",
    "StageReport",
    "Summary",
    "TopDownNet",
    "TopDownOptions",
    "TraceError",
    "TrainResult",
    "UnsupportedTopologyError",
    "WidthError",
    "analyze",
    "antialias",
    "data",
    "default_pipeline",
    "erf",
    "evaluate",
    "gradcam",
    "graph",
    "load",
    "models",
    "njet",
    "nn",
    "passes",
    "plot_robustness",
    "receptive_fields",
    "register_width_rule",
    "remember_source",
    "robustness",
    "save",
    "shift_adversary_accuracy",
    "shift_consistency",
    "side_by_side",
    "summary",
    "topdown",
    "trace",
    "train",
]
