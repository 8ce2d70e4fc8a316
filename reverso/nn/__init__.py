"""The layers reverso's passes emit; each works and is tested on its own."""

from .blur import GaussianBlur2d
from .blurpool import BlurPool2d, CeilModePad, ValidAvgPool2d
from .checkpoint import CheckpointSegment, kept_running_stats
from .filters import (
    FixedBuffers,
    binomial_taps,
    gaussian_taps,
    init_non_persistent_buffers,
    triangle_taps,
)
from .frames import FRAMES, FrameConv2d, frame_atoms, project_kernels
from .hierarchical import HConv2d, HLift, HReadout
from .merge import MERGES, Merge
from .njet import NJetConv2d, structured_receptive_field
from .padding import SameConv2d, SamePad2d
from .pyramid import PYRAMIDS, ImagePyramid, blur_subsample
from .reversible import CouplingBlock, InjectivePad, InvertibleGraphModule, ReversibleSequence
from .space_to_depth import DepthToSpace, NeighbourhoodToDepth, SpaceToDepth
from .steerable import DynamicSteerableConv2d
from .steering import steering_matrix
from .upsample import UPSAMPLE_MODES, Upsample

#: reverso's own layers: always traced as leaves
LAYERS = (
    ImagePyramid,
    Upsample,
    Merge,
    NJetConv2d,
    FrameConv2d,
    DynamicSteerableConv2d,
    HConv2d,
    HLift,
    HReadout,
    BlurPool2d,
    CeilModePad,
    SamePad2d,
    SameConv2d,
    ValidAvgPool2d,
    GaussianBlur2d,
    SpaceToDepth,
    DepthToSpace,
    NeighbourhoodToDepth,
    CheckpointSegment,
    ReversibleSequence,
    InjectivePad,
)

__all__ = [
    "FRAMES",
    "LAYERS",
    "MERGES",
    "PYRAMIDS",
    "UPSAMPLE_MODES",
    "BlurPool2d",
    "CheckpointSegment",
    "CouplingBlock",
    "DepthToSpace",
    "DynamicSteerableConv2d",
    "FixedBuffers",
    "FrameConv2d",
    "GaussianBlur2d",
    "HConv2d",
    "HLift",
    "HReadout",
    "ImagePyramid",
    "InjectivePad",
    "InvertibleGraphModule",
    "Merge",
    "NJetConv2d",
    "NeighbourhoodToDepth",
    "ReversibleSequence",
    "SameConv2d",
    "SamePad2d",
    "SpaceToDepth",
    "Upsample",
    "binomial_taps",
    "blur_subsample",
    "frame_atoms",
    "gaussian_taps",
    "init_non_persistent_buffers",
    "kept_running_stats",
    "project_kernels",
    "steering_matrix",
    "structured_receptive_field",
    "triangle_taps",
]
