"""Stage 1b: layers that read the map's positions by number or order have no top-down form.

A top-down network runs every layer on maps of other sizes than the bottom-up one (its head
reads the finest map). Layers that work at any size keep their role there; two kinds of reader
do not, and are refused by name instead of converted into a different model:

- a *fixed-position read*: an int index (``y[:, -1]``, ``x[..., 0, 0]``, ``x.select(1, 3)``) or
  a slice with a constant end on a dimension whose length follows the input size. It reads
  another pixel in the top-down net. Positions a model prepends of its own (a class token
  concatenated before the flattened map) keep their index at every size and are allowed;
- a *recurrent layer over the flattened map* (RNN/LSTM/GRU whose sequence is the map's
  positions in raster order): its result depends on how many positions there are and in which
  order. A recurrent layer along one axis (Sequencer's rows and columns) is a spatial mixing
  layer of its level and converts.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from reverso.analysis.probe import Probe
from reverso.errors import UnsupportedTopologyError
from reverso.ir import describe, owner_class

BODY_ONLY = (
    "convert the convolutional body with a pooled classifier "
    "(nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(C, classes))) and run "
    "your own head on the top-down net's forward_features"
)


def refuse_position_readers(gm: fx.GraphModule, values: Probe) -> None:
    """Refuse the first layer that reads positions by number or order (see the module doc)."""
    if not values.grown:
        return  # the model was probed at one size only: nothing tells positions apart
    for n in gm.graph.nodes:
        if n.op == "call_module":
            _refuse_raster_recurrence(gm, n, values)
        else:
            _refuse_fixed_position(gm, n, values)


def _refuse_raster_recurrence(gm: fx.GraphModule, n: fx.Node, values: Probe) -> None:
    module = gm.get_submodule(n.target)
    if not isinstance(module, nn.RNNBase) or not n.args:
        return
    seq = n.args[0]
    dim = 1 if module.batch_first else 0
    small, large = seq.meta.get("val"), values.grown.get(seq)
    if not (_is_tensor(small, dim) and _is_tensor(large, dim)):
        return
    batch = 1 - dim
    if large.shape[batch] != small.shape[batch]:
        return  # rows or columns folded into the batch: a recurrence along one axis
    if not _follows_area(seq, int(small.shape[dim]), int(large.shape[dim]), values):
        return
    err = UnsupportedTopologyError(
        f"{describe(gm, n)} reads the feature map's positions as one sequence, in raster order: "
        "its result depends on how many positions there are and in which order, and the "
        f"top-down net gives it a map of another size, so it has no top-down form. Instead, "
        f"{BODY_ONLY}"
    )
    err.module_class = None  # running it whole does not change what it reads
    raise err


def _refuse_fixed_position(gm: fx.GraphModule, n: fx.Node, values: Probe) -> None:
    reads = _position_reads(n)
    if not reads:
        return
    source = n.args[0]
    small, large = source.meta.get("val"), values.grown.get(source)
    if not isinstance(small, torch.Tensor) or not isinstance(large, torch.Tensor):
        return
    if small.dim() != large.dim():
        return
    for dim, index, what in reads:
        if not 0 <= dim < small.dim() or large.shape[dim] <= small.shape[dim]:
            continue  # a dimension of fixed length: channels, heads, the batch
        own = _own_positions(int(small.shape[dim]), int(large.shape[dim]))
        if (index < 0 or index >= own) if what == "index" else index > own:
            err = UnsupportedTopologyError(
                f"node {describe(gm, n)} reads {_shown(what, index)} along dimension {dim}, "
                "whose length follows the input size (the map's positions): in the top-down net "
                "that is another pixel of a map of another size, so the layer has no top-down "
                "form. Read the positions through a pooling over them (a mean or a max) instead, "
                f"or {BODY_ONLY}"
            )
            err.module_class = owner_class(n)
            raise err


def _position_reads(n: fx.Node) -> list[tuple[int, int, str]]:
    """(dimension, constant, "index" or "stop") for each constant index or slice end of a
    ``getitem`` or ``select`` on a tensor."""
    if n.op == "call_function" and n.target is operator.getitem and len(n.args) == 2:
        return _getitem_reads(n)
    is_select = (n.op == "call_method" and n.target == "select") or (
        n.op == "call_function" and n.target is torch.select
    )
    if is_select and len(n.args) == 3 and all(isinstance(a, int) for a in n.args[1:]):
        return [(n.args[1], n.args[2], "index")]
    return []


def _getitem_reads(n: fx.Node) -> list[tuple[int, int, str]]:
    source, index = n.args
    value = source.meta.get("val") if isinstance(source, fx.Node) else None
    if not isinstance(value, torch.Tensor):
        return []  # an item of a tuple (an LSTM's outputs), not a position
    entries = index if isinstance(index, tuple) else (index,)
    consuming = [e for e in entries if e is not None and e is not Ellipsis]
    reads, dim = [], 0
    for e in entries:
        if e is None:
            continue
        if e is Ellipsis:
            dim = value.dim() - (len(consuming) - _consumed_before(entries, e))
            continue
        if isinstance(e, bool):
            dim += 1
            continue
        if isinstance(e, int):
            reads.append((dim, e, "index"))
        elif isinstance(e, slice) and isinstance(e.stop, int) and e.stop > 0:
            reads.append((dim, e.stop, "stop"))
        dim += 1
    return reads


def _follows_area(seq: fx.Node, small: int, large: int, values: Probe) -> bool:
    """Whether a sequence's length grows as the area of the map it was flattened from: the
    nearest ancestor with two growing dimensions (h, w at the traced size, h', w' grown) gives
    ``small * h' * w' == large * h * w``. Without such an ancestor, growth to about four times
    the length stands for the area."""
    node = seq
    for _ in range(16):
        node = next((a for a in node.all_input_nodes), None)
        if node is None:
            break
        a, b = node.meta.get("val"), values.grown.get(node)
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            continue
        if a.dim() != b.dim():
            continue
        growing = [d for d in range(a.dim()) if b.shape[d] > a.shape[d]]
        if len(growing) == 2:
            h, w = (int(a.shape[d]) for d in growing)
            h2, w2 = (int(b.shape[d]) for d in growing)
            return small * h2 * w2 == large * h * w
    return large >= 4 * small - 3


def _consumed_before(entries: tuple, marker) -> int:
    count = 0
    for e in entries:
        if e is marker:
            return count
        if e is not None:
            count += 1
    return count


def _own_positions(small: int, large: int) -> int:
    """How many leading positions do not follow the input size (a prepended class token), from
    a dimension's length at the traced size and at twice that size: the rest grows with one
    side (twice as long) or with the area (four times)."""
    by_side = 2 * small - large
    if by_side >= 0:
        return by_side
    return max(0, (4 * small - large) // 3)


def _shown(what: str, index: int) -> str:
    return f"position {index}" if what == "index" else f"the first {index} positions"


def _is_tensor(value, dim: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > dim
