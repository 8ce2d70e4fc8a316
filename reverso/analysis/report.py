"""What the analysis reports: units, transitions, groups, stem and head of a bottom-up CNN.

A :class:`StageReport` is computed once per conversion and kept in the compile context; it
refers to nodes of the traced bottom-up graph by name and to units by index.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Unit:
    """The smallest piece the compiler moves: one layer (+ norm/act) or one block."""

    index: int
    kind: str  # "layer" | "block" | "pool" | "head"
    nodes: list[str]
    entry: str  # the node feeding the unit
    exit: str  # the unit's output node
    in_level: int = 0
    out_level: int = 0
    in_width: int = 0
    out_width: int = 0
    out_size: tuple[int, int] = (0, 0)
    residual: bool = False
    grows: bool = False  # its output concatenates its input (a dense block): width in + k
    strided: dict[str, int] = field(default_factory=dict)  # node -> downsampling factor
    params: int = 0
    role: str = ""  # "stem", "G1", "T1", "head", ... (set once groups are known)

    @property
    def factor(self) -> int:
        return 2 ** (self.out_level - self.in_level)

    @property
    def own_width(self) -> int:
        """The width that defines the unit: what it reads if it grows, else what it outputs."""
        return self.in_width if self.grows else self.out_width

    @property
    def is_transition(self) -> bool:
        return self.out_level > self.in_level


@dataclass
class Transition:
    """A place where the level increases: a standalone op or the stride inside a unit."""

    index: int
    unit: int
    kind: str  # "standalone" | "inside"
    factor: int
    nodes: list[str]
    first: bool = False  # the model's very first layer: the top-down net reads that level directly


@dataclass
class Group:
    """A maximal run of units between two transitions."""

    index: int
    units: list[int]
    level: int
    transition: Transition | None = None  # inside-unit transition at its first unit


@dataclass
class StageReport:
    """Everything the passes need to know about the bottom-up model, computed once."""

    input_size: tuple[int, int, int]
    units: list[Unit]
    stem: list[int]
    items: list[Group | Transition]  # after the stem, in order
    head: list[int]
    num_classes: int
    preact: bool
    levels: int  # coarsest level of the body
    opening: dict[int, str]  # level -> node of the conv that opens that level
    prototypes: dict[str, str]  # "conv" / "norm" / "act" -> a node to copy the type from

    @property
    def groups(self) -> list[Group]:
        return [i for i in self.items if isinstance(i, Group)]

    @property
    def transitions(self) -> list[Transition]:
        found = [i for i in self.items if isinstance(i, Transition)]
        found += [gr.transition for gr in self.groups if gr.transition is not None]
        found += [
            Transition(
                -1, u, "inside", self.units[u].factor, list(self.units[u].strided), first=True
            )
            for u in self.stem
            if self.units[u].is_transition
        ]
        return sorted(found, key=lambda t: t.unit)

    @property
    def body(self) -> list[int]:
        out = list(self.stem)
        for item in self.items:
            out += item.units if isinstance(item, Group) else [item.unit]
        return out

    def unit_of(self, node_name: str) -> Unit | None:
        for u in self.units:
            if node_name in u.nodes:
                return u
        return None

    def __str__(self) -> str:
        rows = [
            ("unit", "role", "kind", "level", "size", "channels", "params", "transition", "nodes")
        ]
        trans = {t.unit: t for t in self.transitions}
        for u in self.units:
            t = trans.get(u.index)
            tr = ""
            if t is not None:
                tr = f"x{t.factor} {t.kind}" + (" (first layer)" if t.first else "")
            first, last = u.nodes[0], u.nodes[-1]
            rows.append(
                (
                    str(u.index),
                    u.role,
                    u.kind + (" (residual)" if u.residual else ""),
                    str(u.out_level) if u.kind != "head" else "-",
                    f"{u.out_size[0]}x{u.out_size[1]}" if u.kind != "head" else "-",
                    f"{u.in_width}->{u.out_width}",
                    f"{u.params:,}",
                    tr,
                    first if first == last else f"{first} .. {last}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        c, h, w = self.input_size
        summary = (
            f"input {c}x{h}x{w}, {len(self.groups)} groups, {len(self.transitions)} transitions, "
            f"coarsest level {self.levels}, {'pre' if self.preact else 'post'}-activation, "
            f"{self.num_classes} classes"
        )
        return summary + "\n" + "\n".join(lines)
