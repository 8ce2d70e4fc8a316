"""frames: every spatial conv reparametrised on a fixed frame (docs/methods/structured.md,
sections 1, 2 and 7).

Every ``nn.Conv2d`` with a kernel larger than 1x1 anywhere in the module tree becomes a
:class:`~reverso.nn.FrameConv2d` with the same settings, its coefficients the least-squares
projection of the conv's kernels: a complete frame (every named one) reproduces the outputs
exactly, so a trained model keeps working, and ``collapse()`` turns each layer back into a plain
conv after training. ``frame="alternate"`` alternates Gaussian-derivative and framelet frames
from conv to conv (the thesis's "image frame", inferred reading); a conv the framelets cannot
hold (a side other than 1 or 3) takes the Gaussian frame there.

Convs whose class overrides ``nn.Conv2d.forward`` (weight standardisation, dynamic 'same'
padding, ...) compute something else than ``F.conv2d`` with their weight; they are kept as they
are and listed in the report with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx
from torch import nn

from reverso.compiler.base import Pass, PassResult
from reverso.nn.frames import FrameConv2d
from reverso.options import FramesOptions
from reverso.rewrite.swaps import overrides_forward, refuse_if_nothing_swapped, spatial_convs


@dataclass
class FramesReport:
    layers: list[tuple[str, str, float]] = field(default_factory=list)  # name, frame, rel. error
    kept: list[tuple[str, str]] = field(default_factory=list)  # name, why

    @property
    def max_error(self) -> float:
        return max((e for _, _, e in self.layers), default=0.0)

    def __str__(self) -> str:
        lines = [f"{'layer':<40} {'frame':>9} {'rel. error':>10}"]
        lines += [f"{n:<40} {f:>9} {e:>10.2e}" for n, f, e in self.layers]
        lines += [f"{n:<40} kept: {why}" for n, why in self.kept]
        return "\n".join(lines)


class Frames(Pass):
    name = "frames"

    Options = FramesOptions  # frame, sigma

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        report = swap_convs_for_frames(gm, **self.options())
        ctx.results.frames_report = report
        return PassResult(gm, bool(report.layers))


def swap_convs_for_frames(
    root: nn.Module, *, frame: str = "gauss9", sigma: float = 1.0
) -> FramesReport:
    """Replace, in place, every spatial conv under ``root`` by a :class:`FrameConv2d` holding
    the projection of its kernels; the report lists each layer's frame and relative error."""
    FramesOptions.from_dict({"frame": frame, "sigma": sigma})
    report = FramesReport()
    for slot in spatial_convs(root):
        chosen, why = _frame_for(slot.conv, frame, len(report.layers))
        if why:
            report.kept.append((slot.name, why))
            continue
        layer, error = FrameConv2d.from_conv(slot.conv, chosen, sigma=sigma)
        slot.replace(layer)
        report.layers.append((slot.name, chosen, error))
    refuse_if_nothing_swapped(
        report.layers, report.kept, root, "frames: no spatial nn.Conv2d to reparametrise"
    )
    return report


def _frame_for(conv: nn.Conv2d, frame: str, index: int) -> tuple[str, str | None]:
    """The frame this conv takes, or why it stays as it is."""
    if overrides_forward(conv):
        return frame, overrides_forward(conv)
    fits_framelet = set(conv.kernel_size) <= {1, 3}
    if frame == "alternate":
        return ("framelet" if index % 2 and fits_framelet else "gauss9"), None
    if frame == "framelet" and not fits_framelet:
        return frame, f"a {conv.kernel_size[0]}x{conv.kernel_size[1]} kernel (framelets are 3-tap)"
    return frame, None
