"""The user's choices for a top-down conversion, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from reverso.errors import OptionError, check_choice
from reverso.names import ARRANGEMENTS, MEMORY_MODES, MERGE_WIDTHS, MERGES, PYRAMIDS, UPSAMPLE_MODES


@dataclass(frozen=True)
class TopDownOptions:
    arrangement: str = "td"
    width: int | None = None  # the uni width when given explicitly
    merge: str = "add_concat"
    upsample: str = "nearest"
    pyramid: str = "gaussian"
    memory: str | None = None  # None | "checkpoint" | "reversible": applied to the emitted net
    merge_width: str = "unit"  # "unit" | "inner": the width a merge's fuse conv works at

    @classmethod
    def create(
        cls,
        arrangement="td",
        merge="add_concat",
        upsample="nearest",
        pyramid="gaussian",
        memory=None,
        merge_width="unit",
    ) -> TopDownOptions:
        width = None
        if isinstance(arrangement, bool) or not isinstance(arrangement, (str, int)):
            raise OptionError(
                f"arrangement must be 'td', 'uni', 'rev' or an int width, got {arrangement!r}"
            )
        if isinstance(arrangement, int):
            if arrangement < 1:
                raise OptionError(f"a uniform width must be a positive int, got {arrangement}")
            arrangement, width = "uni", arrangement
        for name, value, allowed in (
            ("arrangement", arrangement, ARRANGEMENTS),
            ("merge", merge, MERGES),
            ("upsample", upsample, UPSAMPLE_MODES),
            ("pyramid", pyramid, PYRAMIDS),
            ("memory", memory, MEMORY_MODES),
            ("merge_width", merge_width, MERGE_WIDTHS),
        ):
            check_choice(name, value, allowed)
        return cls(arrangement, width, merge, upsample, pyramid, memory, merge_width)
