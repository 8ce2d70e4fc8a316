"""The option records: one frozen dataclass per conversion (and the passes that run it)."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass

from reverso.errors import OptionError
from reverso.names import (
    ANTIALIAS_VARIANTS,
    ARRANGEMENTS,
    FRAME_CHOICES,
    HCNN_HEADS,
    HCNN_VARIANTS,
    MEMORY_MODES,
    MERGE_WIDTHS,
    MERGES,
    NJET_INITS,
    NJET_ROUTES,
    NJET_SIZE_RULES,
    NJET_SUBSAMPLING_RULES,
    PAD_MODES,
    PYRAMIDS,
    STEERABLE_MODES,
    STEERABLE_POSES,
    STEERABLE_UNITS,
    UPSAMPLE_MODES,
)
from reverso.options.fields import MAX_CHANNELS, MAX_SIGMA, Options, option, shown


@dataclass(frozen=True)
class TopDownOptions(Options):
    """The top-down layout (:func:`reverso.topdown`)."""

    label: typing.ClassVar[str] = "topdown"

    arrangement: str = option(
        "td",
        "channel widths: per group (td), one width (uni), or the "
        "bottom-up order with only the resolutions reversed (rev)",
        choices=ARRANGEMENTS,
    )
    width: int | None = option(
        None, "the uni width when given explicitly", low=1, high=MAX_CHANNELS
    )
    merge: str = option(
        "add_concat", "how a coarse path meets the finer image's branch", choices=MERGES
    )
    upsample: str = option(
        "nearest", "interpolation before each upsampled conv", choices=UPSAMPLE_MODES
    )
    pyramid: str = option(
        "gaussian", "how the image pyramid is blurred before subsampling", choices=PYRAMIDS
    )
    memory: str | None = option(
        None, "train with checkpointing or reversible blocks", choices=MEMORY_MODES
    )
    merge_width: str = option(
        "unit", "the width a merge fuses at (inner: bottleneck)", choices=MERGE_WIDTHS
    )

    def __post_init__(self):
        if self.width is not None and self.arrangement != "uni":
            raise OptionError(f"a width ({self.width}) is given only with arrangement='uni'")

    @classmethod
    def create(
        cls, *, arrangement, merge, upsample, pyramid, memory, merge_width
    ) -> TopDownOptions:
        """The options of :func:`reverso.topdown`'s arguments (an int arrangement is a uniform
        width). The defaults are the fields'; ``topdown``'s match them (checked by a test)."""
        width = None
        if isinstance(arrangement, int) and not isinstance(arrangement, bool):
            arrangement, width = "uni", arrangement
        elif not isinstance(arrangement, str):
            raise OptionError(
                f"arrangement must be 'td', 'uni', 'rev' or an int width, got {shown(arrangement)}"
            )
        if isinstance(memory, Mapping):
            raise OptionError(
                f"memory takes a mode, None, 'checkpoint' or 'reversible', not settings "
                f"({shown(memory)}); to set them, transform the top-down net yourself: "
                "reverso.checkpoint(net, budget=...) or reverso.reversible(net, ...)"
            )
        values = {
            "arrangement": arrangement,
            "width": width,
            "merge": merge,
            "upsample": upsample,
            "pyramid": pyramid,
            "memory": memory,
            "merge_width": merge_width,
        }
        return cls.from_dict(values, where="")


@dataclass(frozen=True)
class NJetOptions(Options):
    """N-Jet convolutions (:func:`reverso.njet`, the ``njet`` pass, ``topdown(njet=...)``):
    the swap's settings and those of every :class:`~reverso.nn.NJetConv2d` it makes."""

    label: typing.ClassVar[str] = "njet"

    order: int = option(3, "the highest derivative order of the basis", low=0, high=8)
    sigma: float = option(1.0, "the initial scale (pixels)", above=0, high=MAX_SIGMA)
    learn_sigma: bool = option(True, "learn the scale")
    init: str = option(
        "random",
        "fresh weights (random) or the kernels' least-squares projection on the basis (project)",
        choices=NJET_INITS,
    )
    extent: float = option(2.0, "the kernel's half-width in sigmas", above=0, high=8)
    size_rule: str = option("paper", "how the kernel size follows sigma", choices=NJET_SIZE_RULES)
    sigma_min: float = option(0.3, "the smallest scale", above=0, high=MAX_SIGMA)
    sigma_max: float | None = option(
        None, "the largest scale (null: unbounded)", above=0, high=MAX_SIGMA
    )
    route: str = option("auto", "how the conv is computed", choices=NJET_ROUTES)
    safe_subsampling: bool = option(False, "subsample only as far as sigma allows")
    subsampling_rate: float = option(4.0, "the safe-subsampling rate r", above=0, high=64)
    subsampling_rule: str = option(
        "paper", "the safe-subsampling curve", choices=NJET_SUBSAMPLING_RULES
    )

    #: the fields the swap reads; the others are the layers'
    SWAP: typing.ClassVar[tuple[str, ...]] = ("init",)

    def layer_kwargs(self) -> dict:
        """The keyword arguments of each :class:`~reverso.nn.NJetConv2d`."""
        return {k: v for k, v in self.to_json().items() if k not in self.SWAP}


@dataclass(frozen=True)
class AntialiasOptions(Options):
    """Anti-aliased downsampling (:func:`reverso.antialias`)."""

    label: typing.ClassVar[str] = "antialias"

    filter_size: int = option(4, "the blur's binomial filter size (1: no blur)", low=1, high=7)
    stem: bool = option(False, "also anti-alias the first strided conv")
    pad_mode: str = option("reflect", "the blur's padding", choices=PAD_MODES)
    variant: str = option(
        "reverso",
        "reverso's rules, or the official antialiased-cnns models",
        choices=ANTIALIAS_VARIANTS,
    )


@dataclass(frozen=True)
class CheckpointOptions(Options):
    """Activation checkpointing (:func:`reverso.checkpoint`)."""

    label: typing.ClassVar[str] = "checkpoint"

    budget: float | None = option(
        None, "bytes of activations to keep (null: the least peak)", above=0, high=1e15
    )


@dataclass(frozen=True)
class ReversibleOptions(Options):
    """Reversible residual runs (:func:`reverso.reversible`)."""

    label: typing.ClassVar[str] = "reversible"

    transitions: str = option(
        "keep", "downsamplings kept, or psi(2) coupling blocks", choices=("keep", "psi")
    )
    stem: str = option("keep", "the stem kept, or a psi stem", choices=("keep", "psi"))
    memory_saving: bool = option(True, "rebuild activations from outputs in backward")
    mid: str = option("keep", "inner widths kept or halved", choices=("keep", "half"))
    post_act: str = option(
        "refuse",
        "an activation between units: refuse, or move it into the next unit",
        choices=("refuse", "move"),
    )


@dataclass(frozen=True)
class FramesOptions(Options):
    """Frame convolutions (:func:`reverso.frames`)."""

    label: typing.ClassVar[str] = "frames"

    frame: str = option(
        "gauss9", "the fixed frame the kernels are written in", choices=FRAME_CHOICES
    )
    sigma: float = option(1.0, "the Gaussian frame's scale", above=0, high=MAX_SIGMA)


@dataclass(frozen=True)
class SteerableOptions(Options):
    """Dynamic steerable convolutions or blocks (:func:`reverso.steerable`)."""

    label: typing.ClassVar[str] = "steerable"

    unit: str = option("conv", "steerable convs, or residual blocks", choices=STEERABLE_UNITS)
    order: int = option(2, "the frame's highest derivative order", low=1, high=8)
    sigma: float = option(1.0, "the frame's scale", above=0, high=MAX_SIGMA)
    pose: str = option(
        "per_in", "one pose per input channel, or per pixel", choices=STEERABLE_POSES
    )
    mode: str = option("angle", "one angle, or the gates themselves", choices=STEERABLE_MODES)
    every: int = option(2, "convert every n-th candidate", low=1, high=1024)


@dataclass(frozen=True)
class HierarchicalOptions(Options):
    """Hierarchical attribute CNNs (:func:`reverso.hierarchical`)."""

    label: typing.ClassVar[str] = "hierarchical"

    K: int = option(16, "attributes per layer (widths (K / 2) K)", low=2, high=256, parity="even")
    Q: int = option(32, "spatial filters per layer", low=1, high=4096)
    variant: str = option(
        "plus", "ELU between the spatial and attribute filters (plus) or not", choices=HCNN_VARIANTS
    )
    head: str = option("keep", "keep the model's head, or end with the readout", choices=HCNN_HEADS)
    attr_kernel: tuple[int, int] = option(
        (7, 11), "the attribute filters' sizes (odd)", low=1, high=63, parity="odd"
    )


#: the option record of each transform (``none``: a model saved as it is)
TRANSFORM_OPTIONS: dict[str, type[Options] | None] = {
    "topdown": TopDownOptions,
    "njet": NJetOptions,
    "antialias": AntialiasOptions,
    "checkpoint": CheckpointOptions,
    "reversible": ReversibleOptions,
    "frames": FramesOptions,
    "steerable": SteerableOptions,
    "hierarchical": HierarchicalOptions,
    "none": None,
}
