"""The tag protocol: every fact reverso attaches to a graph node, in one typed record.

A node's tags live in ``node.meta["reverso"]`` as a :class:`NodeTags`. Two writers exist:

* the **analysis** tags every node of the bottom-up graph once, in its final step
  (:func:`reverso.analysis.tag_graph`): ``unit``, ``scope`` and ``stride``;
* **passes** tag the nodes they insert with a :class:`Role` (and the ``level`` or
  ``transition`` that role needs), through :func:`mark`.

What a node a pass inserts inherits from the node it replaces or joins (:func:`inherit`) is one
policy for every pass: its **unit** (so later passes find it with the unit's other nodes) and
nothing else; a role, a stride or a scope belongs to the node that earned it. Copies of whole
nodes (a working copy of the graph, units moved by ``reverse_stages``) keep every tag
(:func:`copy_tags`).

Passes read tags through the accessors below, never by string keys, and find each other's
nodes by role (``nodes_with_role(gm, Role.UPSAMPLE, transition=2)``), never by module names.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import torch.fx as fx

#: the key of reverso's record in ``node.meta``
TAG = "reverso"


class Role(str, enum.Enum):
    """What an inserted node is for; the nodes passes look each other up by."""

    PYRAMID = "pyramid"  # the image pyramid and its per-level outputs (``level`` set on those)
    UPSAMPLE = "upsample"  # an upsampling that a bottom-up downsampling became (``transition``)
    MERGE = "merge"  # the merge of an upsampled path with the image at that level (``transition``)
    PROJECTION = "projection"  # a shortcut projection added by width repair


class Scope(str, enum.Enum):
    """How a value relates to the input's size (decided once by the analysis)."""

    MAP = "map"  # an NCHW feature map: grows with the input in its last two dimensions
    GLOBAL = "global"  # keeps its size: pooled vectors, squeeze-excite gates, logits
    RESHAPED = "reshaped"  # grows elsewhere: channels-last maps, a channel shuffle's 5D view


@dataclass
class NodeTags:
    """The typed record of one node. ``None`` means "not set"."""

    unit: int | None = None  # bottom-up unit the node belongs to (analysis; inherited)
    scope: Scope | None = None  # analysis; None for nodes that hold no tensor
    stride: int | None = None  # downsampling factor of a bottom-up node (analysis)
    role: Role | None = None  # set by the pass that inserted the node
    level: int | None = None  # pyramid level a PYRAMID output holds
    transition: int | None = None  # top-down slot of an UPSAMPLE or MERGE


def tags_of(node: fx.Node) -> NodeTags:
    """The node's record, created empty on first use."""
    record = node.meta.get(TAG)
    if not isinstance(record, NodeTags):
        record = node.meta[TAG] = NodeTags()
    return record


def unit_of(node: fx.Node) -> int | None:
    """The bottom-up unit the node belongs to (tagged by the analysis, inherited by the nodes
    passes insert), None when untagged."""
    return tags_of(node).unit if TAG in node.meta else None


def role_of(node: fx.Node) -> Role | None:
    """What an inserted node is for (:class:`Role`), None for the model's own nodes."""
    return tags_of(node).role if TAG in node.meta else None


def is_global(node: fx.Node) -> bool:
    """Pooled vectors and gates: values that are never upsampled or re-widthed as maps."""
    return TAG in node.meta and tags_of(node).scope is Scope.GLOBAL


def is_map(node: fx.Node) -> bool:
    """An NCHW feature map, as the analysis tagged it."""
    return TAG in node.meta and tags_of(node).scope is Scope.MAP


def is_reshaped(node: fx.Node) -> bool:
    """A value that grows with the input outside its last two dimensions (channels-last maps,
    a channel shuffle's 5-D view), as the analysis tagged it."""
    return TAG in node.meta and tags_of(node).scope is Scope.RESHAPED


def stride_tag(node: fx.Node) -> int | None:
    """The factor a bottom-up node downsampled by (None for nodes that do not)."""
    return tags_of(node).stride if TAG in node.meta else None


def mark(node: fx.Node, role: Role, *, level: int | None = None, transition: int | None = None):
    """Give an inserted node its role (and the level or transition that role refers to)."""
    record = tags_of(node)
    record.role, record.level, record.transition = Role(role), level, transition
    return node


def inherit(new: fx.Node, old: fx.Node) -> fx.Node:
    """The one inheritance policy: a node inserted for ``old`` joins ``old``'s unit."""
    if unit_of(old) is not None:
        tags_of(new).unit = unit_of(old)
    return new


def copy_tags(new: fx.Node, old: fx.Node) -> fx.Node:
    """A copy of a whole node keeps all of its tags (in a record of its own)."""
    if TAG in old.meta:
        new.meta[TAG] = dataclasses.replace(tags_of(old))
    return new


def nodes_with_role(gm: fx.GraphModule, role: Role, **match) -> list[fx.Node]:
    """The nodes with ``role`` whose other tags equal ``match`` (``level=``, ``transition=``)."""
    return [
        n
        for n in gm.graph.nodes
        if role_of(n) is role and all(getattr(tags_of(n), k) == v for k, v in match.items())
    ]


def pyramid_levels(gm: fx.GraphModule) -> dict[int, fx.Node]:
    """The image pyramid's output node of every level, by level."""
    return {
        tags_of(n).level: n
        for n in nodes_with_role(gm, Role.PYRAMID)
        if tags_of(n).level is not None
    }


def unit_members(gm: fx.GraphModule, unit: int) -> list[fx.Node]:
    """The nodes of ``unit`` in graph order."""
    return [n for n in gm.graph.nodes if unit_of(n) == unit]
