"""Receptive-field arithmetic: the value a node has (:class:`RF`) and the rules that combine
and upsample it (the top-down paper's, section 3.2, and the exact discrete ones; see
:mod:`reverso.study.receptive`)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RF:
    """Receptive field (smallest and largest, in input pixels), jump and level of a node."""

    min: float
    max: float
    jump: float

    @property
    def level(self) -> int:
        return round(math.log2(self.jump)) if self.jump > 0 else 0

    def through(self, kernel: float, stride: float = 1.0) -> RF:
        """After a layer with this (effective) kernel and stride."""
        if math.isinf(self.max):
            return self  # a value that already sees the whole input
        grow = (kernel - 1) * self.jump
        return RF(self.min + grow, self.max + grow, self.jump * stride)

    def upsampled(self, factor: float) -> RF:
        return RF(self.min, self.max, self.jump / factor)


INPUT = RF(1.0, 1.0, 1.0)
GLOBAL = RF(math.inf, math.inf, math.inf)


def meet(rfs: list[RF]) -> RF:
    """Paths with different receptive fields combined: keep the min and the max."""
    return RF(min(r.min for r in rfs), max(r.max for r in rfs), min(r.jump for r in rfs))


def upsampled(rf: RF, factor: float, mode: str, exact: bool) -> RF:
    """Upsampling by ``factor``. Under the exact rules an interpolating upsampler first reads two
    coarse pixels (four for bicubic); a nearest one repeats each coarse pixel ``factor`` times, so
    a window over the fine map can start anywhere inside a repeat: the repeat counts as a kernel
    of ``factor`` fine pixels (a 2-pixel window at x2 can read two coarse pixels, not one)."""
    if not exact:
        return rf.upsampled(factor)
    if mode == "nearest":
        return rf.upsampled(factor).through(max(1, math.ceil(factor)))
    return rf.through({"bicubic": 4}.get(mode, 2)).upsampled(factor)
