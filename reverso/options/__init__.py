"""The options of every conversion, one typed record each: the single place that says what a
setting may be.

Each record is a frozen dataclass whose fields carry their type (the annotation), default, allowed
values or range and help text (:func:`option`). :meth:`Options.from_dict` checks values a caller
gives (an :class:`~reverso.errors.OptionError` naming the field, with a did-you-mean for unknown
names) and a file holds (a :class:`~reverso.errors.FileFormatError` naming the field, when the
caller asks for that error); :meth:`Options.to_json` writes them for a saved recipe. The passes
and conversions validate through these records, and :func:`reverso.load` through the same ones.

This module imports no torch, so the command line can read it for ``--help``.
"""

from reverso.options.fields import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_SIDE,
    MAX_SIGMA,
    MAX_TEXT,
    Options,
    check_size,
    check_value,
    option,
    shown,
)
from reverso.options.records import (
    TRANSFORM_OPTIONS,
    AntialiasOptions,
    CheckpointOptions,
    FramesOptions,
    HierarchicalOptions,
    NJetOptions,
    ReversibleOptions,
    SteerableOptions,
    TopDownOptions,
)

__all__ = [
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_SIDE",
    "MAX_SIGMA",
    "MAX_TEXT",
    "TRANSFORM_OPTIONS",
    "AntialiasOptions",
    "CheckpointOptions",
    "FramesOptions",
    "HierarchicalOptions",
    "NJetOptions",
    "Options",
    "ReversibleOptions",
    "SteerableOptions",
    "TopDownOptions",
    "check_size",
    "check_value",
    "option",
    "shown",
]
