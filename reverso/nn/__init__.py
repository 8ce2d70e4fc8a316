"""The layers reverso's passes emit; each works and is tested on its own."""

from .filters import binomial_taps, gaussian_taps, triangle_taps
from .merge import MERGES, Merge
from .pyramid import PYRAMIDS, ImagePyramid, blur_subsample
from .upsample import UPSAMPLE_MODES, Upsample

__all__ = [
    "MERGES",
    "PYRAMIDS",
    "UPSAMPLE_MODES",
    "ImagePyramid",
    "Merge",
    "Upsample",
    "binomial_taps",
    "blur_subsample",
    "gaussian_taps",
    "triangle_taps",
]
