"""The built-in passes, one per file, listed by name.

>>> import reverso
>>> reverso.passes.available()
['filter_arrangement', 'reverse_stages', 'downsample_to_upsample', 'multiscale_inputs', 'njet', 'antialias']
>>> reverso.passes.get("reverse_stages")
<class 'reverso.passes.reverse_stages.ReverseStages'>
"""

from __future__ import annotations

from reverso.errors import OptionError

from .antialias import Antialias
from .downsample_to_upsample import DownsampleToUpsample
from .filter_arrangement import FilterArrangement
from .multiscale_inputs import MultiscaleInputs
from .njet import NJet
from .reverse_stages import ReverseStages

#: the top-down pipeline, in the order it runs
DEFAULT = (FilterArrangement, ReverseStages, DownsampleToUpsample, MultiscaleInputs)

#: every built-in pass by name: the top-down pipeline, then the sibling rewrites
BUILTIN = {cls.name: cls for cls in (*DEFAULT, NJet, Antialias)}


def available() -> list[str]:
    """Names of the built-in passes."""
    return list(BUILTIN)


def get(name: str) -> type:
    """The built-in pass class called ``name``."""
    if name not in BUILTIN:
        raise OptionError(f"no built-in pass named {name!r}; available: {', '.join(BUILTIN)}")
    return BUILTIN[name]


__all__ = [
    "BUILTIN",
    "DEFAULT",
    "Antialias",
    "DownsampleToUpsample",
    "FilterArrangement",
    "MultiscaleInputs",
    "NJet",
    "ReverseStages",
    "available",
    "get",
]
