"""The built-in passes, one per file, listed by name (installed as ``reverso.passes``).

>>> import reverso
>>> reverso.passes.available()
['filter_arrangement', 'stride_one', 'reverse_stages', 'downsample_to_upsample', 'drop_projections', 'multiscale_inputs', 'njet', 'antialias', 'checkpoint', 'reversible', 'frames', 'steerable', 'hierarchical']
>>> reverso.passes.get("reverse_stages")
<class 'reverso.passes.reverse_stages.ReverseStages'>

Each is registered under the entry-point group ``reverso.passes`` (``pyproject.toml``), which
is how the compiler finds a pass by name.
"""

from __future__ import annotations

from pathlib import Path

from reverso.compiler import catalogue
from reverso.compiler.pipeline import Pipeline

from .antialias import Antialias
from .checkpoint import Checkpoint
from .downsample_to_upsample import DownsampleToUpsample
from .drop_projections import DropProjections
from .filter_arrangement import FilterArrangement
from .frames import Frames
from .hierarchical import Hierarchical
from .multiscale_inputs import MultiscaleInputs
from .njet import NJet
from .reverse_stages import ReverseStages
from .reversible import Reversible
from .steerable import Steerable
from .stride_one import StrideOne

#: the top-down pipeline, in the order it runs
DEFAULT = (
    FilterArrangement,
    StrideOne,  # before the reordering: the graph between passes never downsamples a tiny map
    ReverseStages,
    DownsampleToUpsample,
    DropProjections,
    MultiscaleInputs,
)

#: every built-in pass by name: the top-down pipeline, then the sibling rewrites
BUILTIN = {
    cls.name: cls
    for cls in (*DEFAULT, NJet, Antialias, Checkpoint, Reversible, Frames, Steerable, Hierarchical)
}


def available() -> list[str]:
    """Names of the built-in passes."""
    return list(BUILTIN)


def get(name: str) -> type:
    """The pass class called ``name`` (built-in, or registered by another package)."""
    return catalogue.get(name)


def default_pipeline(*, dump_dir: str | Path | None = None) -> Pipeline:
    """The built-in top-down pipeline, in order."""
    return Pipeline([cls() for cls in DEFAULT], dump_dir=dump_dir)


__all__ = [
    "BUILTIN",
    "DEFAULT",
    "Antialias",
    "Checkpoint",
    "DownsampleToUpsample",
    "DropProjections",
    "FilterArrangement",
    "Frames",
    "Hierarchical",
    "MultiscaleInputs",
    "NJet",
    "ReverseStages",
    "Reversible",
    "Steerable",
    "StrideOne",
    "available",
    "default_pipeline",
    "get",
]
