"""Stage analysis of a bottom-up CNN, in the vocabulary of the top-down spec.

The graph's *main path* is the chain of nodes that every input-to-output path passes through
(the dominators of the output). The pieces between consecutive main-path nodes are
*segments*: a single layer, or a multi-branch block (a residual block, an SE block, a dense
block) that must move as a whole. Segments become *units*: a conv layer takes the norm and
activation that follow it, a residual block stays one unit. Levels come from shapes
(l = log2(H / h)); a unit whose output level is above its input level holds a *transition*.
Units between transitions form *groups*; non-residual units before the first residual unit
form the *stem*; global pooling and everything after it (plus a trailing 1x1 conv classifier)
form the *head*.

The result is a :class:`StageReport`, computed once and kept in the compile context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx

from . import graph as g
from .errors import InputSizeError, NoDownsamplingError, UnsupportedTopologyError
from .shapes import channels, is_feature_map, level_of, propagate, spatial
from .tracing import example_input, resolve_input_size, resolve_model, size_hint, trace


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
    strided: dict[str, int] = field(default_factory=dict)  # node -> downsampling factor
    params: int = 0
    role: str = ""  # "stem", "G1", "T1", "head", ... (set once groups are known)

    @property
    def factor(self) -> int:
        return 2 ** (self.out_level - self.in_level)

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


def analyze(model, input_size=None, *, leaf_modules=()) -> StageReport:
    """Trace ``model`` and report its levels, units, groups, transitions, stem and head."""
    model = resolve_model(model)
    input_size = resolve_input_size(model, input_size)
    return analyze_graph(trace(model, input_size, leaf_modules=leaf_modules), input_size)


def analyze_graph(gm: fx.GraphModule, input_size: tuple[int, int, int]) -> StageReport:
    """Analyse a traced GraphModule whose nodes carry shapes for ``input_size``; tags its nodes."""
    return _Analysis(gm, input_size).run()


class _Analysis:
    def __init__(self, gm: fx.GraphModule, input_size):
        self.gm = gm
        self.input_size = tuple(input_size)
        self.hw = self.input_size[1:]

    # -- entry point -------------------------------------------------------------------------
    def run(self) -> StageReport:
        gm = self.gm
        # optional forward arguments were fixed at trace time and hold no tensor
        placeholders = [
            n
            for n in gm.graph.nodes
            if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)
        ]
        if len(placeholders) != 1:
            raise UnsupportedTopologyError(
                f"the model's forward takes {len(placeholders)} inputs "
                f"({', '.join(p.name for p in placeholders)}); reverso converts models with one image input"
            )
        self.input = placeholders[0]
        self.output = next(n for n in gm.graph.nodes if n.op == "output")
        result = self.output.args[0]
        if not isinstance(result, fx.Node) or not isinstance(result.meta.get("val"), torch.Tensor):
            raise UnsupportedTopologyError(
                "the model returns a tuple/dict instead of one logits tensor; wrap it so that "
                "forward returns the class scores only"
            )
        self.result = result
        self.scaling, self.maps = self._scaling_nodes()
        for n in gm.graph.nodes:
            if isinstance(n.meta.get("val"), torch.Tensor) and n not in self.scaling:
                g.tag(n)["global"] = True  # pooled vectors, SE gates: never upsampled
            elif n in self.scaling and n not in self.maps:
                g.tag(n)["reshaped"] = True  # channels-last, shuffled, tokens: not NCHW maps
        G = g.dataflow_graph(gm)
        # cut points are feature maps or global values; a split's tuple or a reshaped map
        # (channel shuffle) stays inside its segment
        self.chain = [
            n
            for n in g.main_chain(G, self.input, self.output)
            if n in (self.input, self.output)
            or (
                isinstance(n.meta.get("val"), torch.Tensor)
                and (n in self.maps or n not in self.scaling)
            )
        ]
        self.segment = self._segments(G)
        head_start = self._head_start()
        self.levels = self._levels()
        self._check_levels(head_start)
        units = self._units(head_start)
        return self._report(units)

    # -- which nodes scale with the input (feature maps) and which are global ---------------
    def _scaling_nodes(self) -> tuple[set[fx.Node], set[fx.Node]]:
        """Values whose size follows the input size, and among them the NCHW feature maps.

        Shapes are probed once more at twice the input size: global features (pooled vectors,
        SE gates) keep their size; feature maps grow in their last two dimensions; reshaped maps
        (channels-last, a channel shuffle's 5D view, tokens) grow elsewhere and stay inside units.
        """
        first = {n: n.meta.get("val") for n in self.gm.graph.nodes}
        c, h, w = self.input_size
        try:
            propagate(
                self.gm,
                example_input((c, 2 * h, 2 * w), dtype=self.gm.meta.get("dtype", torch.float32)),
            )
            second = {n: n.meta.get("val") for n in self.gm.graph.nodes}
        except Exception:
            second = None  # models that accept one input size only: every 4D value is a map
        finally:
            for n, v in first.items():
                n.meta["val"] = v

        def grown(a, b) -> set[int] | None:
            """Dimensions (but the batch) that grow; None for non-tensors."""
            if not isinstance(a, torch.Tensor) or a.dim() < 3:
                return None
            if b is None:
                return {2, 3} if a.dim() == 4 else set()
            if not isinstance(b, torch.Tensor) or a.dim() != b.dim():
                return set()
            return {i for i in range(1, a.dim()) if b.shape[i] > a.shape[i]}

        scaling, maps = set(), set()
        for n, a in first.items():
            b = second.get(n) if second is not None else None
            parts = (
                list(zip(a, b or [None] * len(a), strict=True))
                if isinstance(a, (tuple, list))
                else [(a, b)]
            )
            dims = [grown(x, y) for x, y in parts if isinstance(x, torch.Tensor)]
            if dims and all(d for d in dims):
                scaling.add(n)
                if isinstance(a, torch.Tensor) and a.dim() == 4 and dims[0] == {2, 3}:
                    maps.add(n)
        return scaling, maps

    # -- segments between consecutive main-path nodes ----------------------------------------
    def _segments(self, G) -> dict[fx.Node, int]:
        """Segment index of every node: i for nodes after chain[i-1] up to chain[i]."""
        index = {n: i for i, n in enumerate(self.chain)}
        reach = nx.descendants(G, self.input) | {self.input}
        sub = G.subgraph(reach)
        self.dataflow = set(sub.nodes)
        idom = nx.immediate_dominators(sub, self.input)
        seg: dict[fx.Node, int] = {self.input: 0}

        def find(n):
            path = []
            while n not in seg:
                if n in index:
                    seg[n] = index[n]
                    break
                path.append(n)
                n = idom[n]
            for p in path:
                # a non-main node belongs to the segment after its nearest main dominator
                seg[p] = seg[n] + 1 if n in index else seg[n]
            return seg[path[0]] if path else seg[n]

        for n in sub.nodes:
            find(n)
        # side nodes (parameters, sizes, constants) go with their first user
        for n in reversed(list(self.gm.graph.nodes)):
            if n not in seg and n.users:
                users = [seg[u] for u in n.users if u in seg]
                if users:
                    seg[n] = min(users)
        for n in self.gm.graph.nodes:
            if n not in seg and n.op not in ("placeholder", "output"):
                seg[n] = None  # dead code
        return seg

    def _head_start(self) -> int:
        """Index in the main chain of the first node that is no longer a scaling feature map."""
        for i, n in enumerate(self.chain[1:], start=1):
            if n not in self.scaling:
                return i
        raise UnsupportedTopologyError(
            "the model's output is a feature map; reverso expects class scores"
        )

    # -- levels and strided nodes -----------------------------------------------------------
    def _levels(self) -> dict[fx.Node, int]:
        """Level of every feature map: its input's level plus log2 of its stride.

        Strides are read from convs and pools (exact); only ops without one fall back to the
        ratio of sizes, so that unpadded convs, which shrink maps a little, never count as
        downsampling.
        """
        levels = {self.input: 0}
        for n in self.gm.graph.nodes:
            if n not in self.maps or n is self.input:
                continue
            sources = [a for a in n.all_input_nodes if a in levels]
            if not sources:  # e.g. a map rebuilt from channels-last values: measure it
                levels[n] = level_of(spatial(n), self.hw)
                continue
            base = max(sources, key=lambda a: levels[a])
            stride = g.stride_of(self.gm, n)
            if stride > 1 or _has_stride(self.gm, n):
                step = round(math.log2(stride)) if spatial(n) != spatial(base) else 0
            else:
                ratio = (spatial(base)[0] / spatial(n)[0] + spatial(base)[1] / spatial(n)[1]) / 2
                step = (
                    math.floor(math.log2(ratio) + 0.4) if ratio > 1 else (-1 if ratio < 0.75 else 0)
                )
            levels[n] = levels[base] + step
        return levels

    def _check_levels(self, head_start: int) -> None:
        body = {n for n, s in self.segment.items() if s is not None and 0 < s < head_start}
        self.strided: dict[fx.Node, int] = {}
        for n in self.gm.graph.nodes:
            if n not in body or n not in self.levels:
                continue
            ins = [a for a in n.all_input_nodes if a in self.levels]
            if not ins:
                continue
            step = self.levels[n] - max(self.levels[a] for a in ins)
            if step > 0:
                self.strided[n] = 2**step
            elif step < 0 or any(self.levels[a] != self.levels[ins[0]] for a in ins):
                lo = min(ins, key=lambda a: self.levels[a])
                raise UnsupportedTopologyError(
                    f"node {g.describe(self.gm, n)} combines or upsamples feature maps across "
                    f"resolutions (level {self.levels[lo]} -> {self.levels[n]}, from '{lo.name}'): "
                    "cross-resolution branches as in HRNet, DLA or U-Net cannot be reversed "
                    "into a single coarse-to-fine path"
                )
        self._check_strides_survive()

    def _check_strides_survive(self) -> None:
        """A strided op that no longer shrinks its input means the input is too small for the
        model's depth (checked everywhere: on tiny inputs such layers even look like head)."""
        n = g.stalled_stride(self.gm)
        if n is None:
            return
        h, w = spatial(g.feature_input(n))
        raise InputSizeError(
            f"input_size {self.input_size} is too small for this model: at node "
            f"{g.describe(self.gm, n)} (stride {g.stride_of(self.gm, n)}) the feature map is already "
            f"{h}x{w} and cannot be downsampled further."
            + size_hint(self.gm, self.input_size, self.gm.meta.get("dtype", torch.float32))
        )

    # -- units -------------------------------------------------------------------------------
    def _units(self, head_start: int) -> list[Unit]:
        gm = self.gm
        by_segment: dict[int, list[fx.Node]] = {}
        for n in gm.graph.nodes:
            s = self.segment.get(n)
            if s is not None and s > 0 and n.op != "output":
                by_segment.setdefault(s, []).append(n)
        self.preact = self._is_preact(by_segment, head_start)
        self._block_modules(by_segment, head_start)

        units: list[Unit] = []
        pending: list[fx.Node] = []  # norm/act nodes waiting to open the next unit
        owners: list[str | None] = []  # the block module each unit lies in
        entry = self.input

        def new_unit(kind: str, nodes: list[fx.Node], exit_: fx.Node, owner: str | None) -> None:
            nonlocal entry, pending
            units.append(
                Unit(len(units), kind, [n.name for n in pending + nodes], entry.name, exit_.name)
            )
            owners.append(owner)
            pending = []
            entry = exit_

        def extend_last(nodes: list[fx.Node], exit_: fx.Node, *, block: bool = False) -> None:
            nonlocal entry, pending
            units[-1].nodes += [n.name for n in pending + nodes]
            units[-1].exit = exit_.name
            if block:
                units[-1].kind = "block"
            pending = []
            entry = exit_

        for s in range(1, head_start):
            nodes = by_segment.get(s, [])
            exit_ = self.chain[s]
            strided_here = any(n in self.strided for n in nodes)
            owner = self._owner(nodes)
            is_block = len([n for n in nodes if n in self.dataflow]) > 1
            standalone_pool = g.is_pool(gm, exit_) and strided_here and not is_block
            same_block = (
                units
                and not standalone_pool
                and owner is not None
                and owners[-1] is not None
                and (owner == owners[-1] or owner.startswith(owners[-1] + "."))
                and units[-1].kind != "pool"
            )
            if same_block:  # a later part of the same block module (its 1x1 conv, its SE, its act)
                extend_last(nodes, exit_, block=is_block or g.width_defining(gm, exit_))
                units[-1].residual = units[-1].residual or (is_block and self._is_residual(nodes))
            elif is_block:
                new_unit("block", nodes, exit_, owner)
                units[-1].residual = self._is_residual(nodes)
            elif standalone_pool:
                new_unit("pool", nodes, exit_, None)
            elif strided_here or (
                exit_.op == "call_module"
                and not g.is_pointwise(gm, exit_)
                and next(g.module_of(gm, exit_).parameters(), None) is not None
            ):
                new_unit("layer", nodes, exit_, owner)
            elif units and not pending and self._attaches_backward(units[-1]):
                extend_last(nodes, exit_)
            else:
                pending += nodes  # attaches forward: the next unit's entry stays where it is
        # head: forward-attached norm/act before the pooling, then everything after
        head_nodes = list(pending)
        for s in range(head_start, len(self.chain)):
            head_nodes += [n for n in by_segment.get(s, []) if n.op != "output"]
        head = Unit(len(units), "head", [n.name for n in head_nodes], entry.name, self.result.name)
        units = self._move_fc_classifier(units, head)
        units.append(head)
        if len(units) < 2:
            raise NoDownsamplingError(
                "the model has no convolutional body before its head "
                f"(the first node, {g.describe(gm, self.chain[1])}, already leaves feature-map form)"
            )
        for i, u in enumerate(units):
            u.index = i
        self._measure(units)
        return units

    def _block_modules(self, by_segment: dict[int, list[fx.Node]], head_start: int) -> None:
        """Module paths the owner rule needs: layer counts and the residual blocks' own modules."""
        self.layer_count: dict[str, int] = {}
        for n in self.gm.graph.nodes:
            if n.op == "call_module" and (g.is_conv(self.gm, n) or g.is_linear(self.gm, n)):
                parts = n.target.split(".")
                for i in range(1, len(parts)):
                    key = ".".join(parts[:i])
                    self.layer_count[key] = self.layer_count.get(key, 0) + 1
        self.residual_blocks = set()
        for s in range(1, head_start):
            nodes = by_segment.get(s, [])
            if len([n for n in nodes if n in self.dataflow]) > 1 and self._is_residual(nodes):
                prefix = _common_module_prefix(nodes)
                while prefix and self._is_container(prefix):
                    prefix = prefix[:-1]
                if prefix:
                    self.residual_blocks.add(".".join(prefix))

    def _is_container(self, parts: list[str]) -> bool:
        root = self.gm.meta.get("root", self.gm)  # the original model keeps the module types
        module = root.get_submodule(".".join(parts)) if _has_module(root, parts) else None
        return module is None or isinstance(
            module, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
        )

    def _owner(self, nodes: list[fx.Node]) -> str | None:
        """The block module a segment belongs to: the deepest enclosing module that is not a
        container (Sequential, ModuleList, ModuleDict, the model), holds at least two conv/linear
        layers and does not itself hold residual blocks. None for layers that sit in containers."""
        common = _common_module_prefix(nodes)
        while common:
            path = ".".join(common)
            if (
                not self._is_container(common)
                and self.layer_count.get(path, 0) >= 2
                and not any(r.startswith(path + ".") for r in self.residual_blocks)
            ):
                return path
            common = common[:-1]
        return None

    def _attaches_backward(self, previous: Unit) -> bool:
        """Norms/activations after a layer or pool close it (conv-norm-act); after a residual
        block they close it in post-activation nets and open the next unit in pre-activation ones."""
        return previous.kind in ("layer", "pool") or not self.preact

    def _is_residual(self, nodes: list[fx.Node]) -> bool:
        """A block is residual if a skip joins its main path (add, or a concat with its input)."""
        inside = set(nodes)
        for n in nodes:
            ins = [a for a in n.all_input_nodes if a in self.levels]
            if g.is_add(n) and len(ins) >= 2:
                return True
            if g.is_cat(n) and any(a not in inside for a in ins):
                return True
        return False

    def _is_preact(self, by_segment: dict[int, list[fx.Node]], head_start: int) -> bool:
        """Pre-activation nets open most of their residual blocks with a norm on the main path."""
        votes = []
        for s in range(1, head_start):
            nodes = by_segment.get(s, [])
            if len([n for n in nodes if n in self.dataflow]) < 2 or not self._is_residual(nodes):
                continue
            entry, inside = self.chain[s - 1], set(nodes)
            votes.append(
                any(
                    g.is_norm(self.gm, u)
                    and any(
                        g.is_spatial_conv(self.gm, d) for d in g.descendants_within([u], inside)
                    )
                    for u in entry.users
                    if u in inside
                )
            )
        return bool(votes) and sum(votes) * 2 > len(votes)

    def _move_fc_classifier(self, units: list[Unit], head: Unit) -> list[Unit]:
        """Trailing 1x1 conv units whose output width is the number of classes belong to the head."""
        named = {n.name: n for n in self.gm.graph.nodes}
        num_classes = int(self.result.meta["val"].shape[-1])
        while units and units[-1].kind == "layer":
            unit = units[-1]
            conv = next((named[n] for n in unit.nodes if g.is_conv(self.gm, named[n])), None)
            if conv is None or g.conv_kernel(self.gm, conv) != 1 or channels(conv) != num_classes:
                break
            units.pop()
            head.nodes = unit.nodes + head.nodes
            head.entry = unit.entry
        return units

    def _measure(self, units: list[Unit]) -> None:
        named = {n.name: n for n in self.gm.graph.nodes}
        for u in units:
            nodes = [named[n] for n in u.nodes]
            entry, exit_ = named[u.entry], named[u.exit]
            u.in_level = self.levels.get(entry, 0)
            u.in_width = channels(entry) or 0
            if u.kind != "head":
                u.out_level = self.levels[exit_]
                u.out_width = channels(exit_)
                u.out_size = spatial(exit_)
            else:
                u.out_level = u.in_level
                u.out_width = int(exit_.meta["val"].shape[-1])
            u.strided = {n.name: self.strided[n] for n in nodes if n in self.strided}
            if u.kind != "head" and u.is_transition and not u.strided:
                raise UnsupportedTopologyError(
                    f"unit {u.nodes[0]} .. {u.exit} downsamples (x{u.factor}) inside reshaped tensors "
                    "(channels-last or token layouts, as in Swin's patch merging) rather than with a "
                    "strided conv or pooling on a feature map; reverso cannot mirror that downsampling"
                )
            self._check_single_transition(u, nodes)
            u.params = _params_of(self.gm, nodes)
            for n in nodes:
                g.tag(n)["unit"] = u.index
                if n in self.strided:
                    g.tag(n)["stride"] = self.strided[n]
            if u.kind != "head" and u.out_level - u.in_level < 0:
                raise UnsupportedTopologyError(
                    f"unit ending at '{u.exit}' upsamples; cannot reverse it"
                )

    def _check_single_transition(self, u: Unit, nodes: list[fx.Node]) -> None:
        strided = [n for n in nodes if n in self.strided]
        for a in strided:
            later = g.descendants_within(a.users, set(nodes))
            for b in strided:
                if b in later:
                    raise UnsupportedTopologyError(
                        f"unit ending at '{u.exit}' downsamples twice in sequence (at {g.describe(self.gm, a)} "
                        f"and then {g.describe(self.gm, b)}); reverso mirrors one transition per unit. "
                        "Mark the block as a leaf (leaf_modules=) only if it is a single layer."
                    )

    # -- stem, groups, head, prototypes ------------------------------------------------------
    def _report(self, units: list[Unit]) -> StageReport:
        gm = self.gm
        body = [u for u in units if u.kind != "head"]
        head = units[-1]
        transition_units = [u for u in body if u.is_transition]
        if not transition_units:
            raise NoDownsamplingError(
                "the model has no spatial downsampling to mirror: every layer of its convolutional "
                f"body (from '{body[0].nodes[0]}' to '{body[-1].exit}') keeps the input resolution. "
                "A top-down network needs a bottom-up model with strides or pooling."
            )
        first_is_transition = body[0].is_transition
        if first_is_transition and len(transition_units) == 1:
            u = body[0]
            raise NoDownsamplingError(
                f"the model's only downsampling is its first layer ('{u.exit}', x{u.factor}); the "
                f"top-down network reads that level directly, so nothing is left to reverse. "
                f"The body ends at '{body[-1].exit}', after which the head starts at '{head.nodes[0]}'"
                + (
                    " and works on tokens rather than feature maps (a transformer, as in ViT)."
                    if self._head_is_tokens(head)
                    else "."
                )
            )

        has_residual = any(u.residual for u in body)
        stem: list[Unit] = []
        if has_residual:
            for u in body:
                if u.residual or (u.is_transition and u is not body[0]):
                    break
                stem.append(u)
        rest = body[len(stem) :]
        items: list[Group | Transition] = []
        n_trans = 0
        current: Group | None = None
        for u in rest:
            first = u is body[0]
            if u.kind == "pool" and u.is_transition:
                items.append(
                    Transition(n_trans, u.index, "standalone", u.factor, list(u.strided), first)
                )
                n_trans += 1
                current = None
                continue
            if current is None or u.is_transition:
                t = None
                if u.is_transition:
                    t = Transition(n_trans, u.index, "inside", u.factor, list(u.strided), first)
                    n_trans += 1
                current = Group(len([i for i in items if isinstance(i, Group)]), [], u.out_level, t)
                items.append(current)
            current.units.append(u.index)
        for u in stem:
            u.role = "stem"
        for item in items:
            if isinstance(item, Group):
                for ui in item.units:
                    units[ui].role = f"G{item.index + 1}"
            else:
                units[item.unit].role = f"T{item.index + 1}"
        head.role = "head"

        body_nodes = [
            n for n in gm.graph.nodes if g.tag(n).get("unit", -1) in {u.index for u in body}
        ]
        return StageReport(
            input_size=self.input_size,
            units=units,
            stem=[u.index for u in stem],
            items=items,
            head=[head.index],
            num_classes=int(self.result.meta["val"].shape[-1]),
            preact=self.preact,
            levels=max(u.out_level for u in body),
            opening=self._opening_convs(body_nodes),
            prototypes=self._prototypes(body_nodes),
        )

    def _head_is_tokens(self, head: Unit) -> bool:
        named = {n.name: n for n in self.gm.graph.nodes}
        return any(
            isinstance(named[n].meta.get("val"), torch.Tensor) and named[n].meta["val"].dim() == 3
            for n in head.nodes
        )

    def _opening_convs(self, body_nodes: list[fx.Node]) -> dict[int, str]:
        """For each level, the first spatial conv whose output lies at that level."""
        opening: dict[int, str] = {}
        for n in body_nodes:
            if g.is_spatial_conv(self.gm, n) and n in self.levels:
                opening.setdefault(self.levels[n], n.name)
        for n in body_nodes:  # levels without a spatial conv fall back to any conv
            if g.is_conv(self.gm, n) and n in self.levels:
                opening.setdefault(self.levels[n], n.name)
        return opening

    def _prototypes(self, body_nodes: list[fx.Node]) -> dict[str, str]:
        """Layers whose *types* new layers copy (the model's conv, norm and activation)."""
        protos: dict[str, str] = {}
        for n in body_nodes:
            if g.is_conv(self.gm, n) and isinstance(g.module_of(self.gm, n), torch.nn.Conv2d):
                m = g.module_of(self.gm, n)
                if m.groups == 1:
                    protos.setdefault("conv", n.name)
            if n.op == "call_module" and g.is_norm(self.gm, n) and is_feature_map(n):
                protos.setdefault("norm", n.name)
            if g.is_activation(self.gm, n) and is_feature_map(n):
                protos.setdefault("act", n.name)
        return protos


def _has_stride(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Convs and pools, whose stride says exactly how much they downsample."""
    return (n.op == "call_function" and g.is_pool(gm, n)) or hasattr(g.module_of(gm, n), "stride")


def _common_module_prefix(nodes: list[fx.Node]) -> list[str]:
    """Common path of the segment's modules; for a single layer, the path of its parent."""
    paths = [n.target.split(".") for n in nodes if n.op == "call_module"]
    if not paths:
        return []
    common = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    if len(common) == min(len(p) for p in paths):
        common = common[:-1]
    return common


def _has_module(gm: fx.GraphModule, parts: list[str]) -> bool:
    try:
        gm.get_submodule(".".join(parts))
    except AttributeError:
        return False
    return True


def _params_of(gm: fx.GraphModule, nodes: list[fx.Node]) -> int:
    seen, total = set(), 0
    for n in nodes:
        if n.op == "call_module":
            tensors = list(gm.get_submodule(n.target).parameters())
        elif n.op == "get_attr":
            v = getattr_path(gm, n.target)
            tensors = [v] if isinstance(v, torch.nn.Parameter) else []
        else:
            tensors = []
        for p in tensors:
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def getattr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj
