"""Small graph edits that keep reverso's tags: free names, module swaps, inserted calls.

A node inserted with :func:`add_module_node` joins the unit of the node it is placed for
(``meta_from=``), by the tag protocol's one inheritance policy (:func:`reverso.ir.tags.inherit`),
and its layer takes the model's device and dtype (:func:`placed_in`).
"""

from __future__ import annotations

import copy
import itertools
import re

import torch
import torch.fx as fx
from torch import nn

from reverso.ir.tags import inherit


def unique_name(gm: fx.GraphModule, base: str) -> str:
    """A free attribute path on ``gm`` starting with ``base``."""
    base = re.sub(r"[^0-9a-zA-Z_.]", "_", base)
    if not _has_attr(gm, base):
        return base
    i = 1
    while _has_attr(gm, f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


def _has_attr(gm: nn.Module, path: str) -> bool:
    obj = gm
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Replace (or add) the submodule at ``target``."""
    parent_path, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    setattr(parent, name, module)


def add_module_node(
    gm: fx.GraphModule,
    name: str,
    module: nn.Module,
    args: tuple,
    *,
    after: fx.Node | None = None,
    before: fx.Node | None = None,
    meta_from: fx.Node | None = None,
) -> fx.Node:
    """Add ``module`` under a free name and a call to it placed after/before a node.

    With ``meta_from`` the new node joins the unit of that node. The module is moved to ``gm``'s
    device and floating dtype (:func:`placed_in`).
    """
    target = unique_name(gm, name)
    gm.add_submodule(target, placed_in(gm, module))
    ctx = (
        gm.graph.inserting_after(after) if after is not None else gm.graph.inserting_before(before)
    )
    with ctx:
        node = gm.graph.call_module(target, args)
    if meta_from is not None:
        inherit(node, meta_from)
    return node


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of a model's parameters (float32 for a model without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    ref = next(model.parameters(), None)
    return ref.device if ref is not None else torch.device("cpu")


def placed_in(gm: nn.Module, module: nn.Module) -> nn.Module:
    """``module``, moved in place to the device and floating dtype of ``gm``'s first floating
    parameter or buffer: a layer a pass makes computes in the model's dtype (a float64 or bfloat16
    model gets float64 or bfloat16 layers) and lives where the model does (on the meta device for
    a model built there). Unchanged for a model without one."""
    tensors = itertools.chain(gm.parameters(), gm.buffers())
    ref = next((t for t in tensors if t.is_floating_point()), None)
    if ref is not None:
        module.to(device=ref.device, dtype=ref.dtype)
    return module


def own_copy(module: nn.Module, model: nn.Module) -> nn.Module:
    """Copy every layer ``module`` still shares with the user's ``model`` (weights, and stateless
    layers whose train/eval mode would otherwise follow ``module``'s), and nothing else. Copies
    keep the mode of the layer they copy (a BatchNorm frozen in eval mode stays frozen); every
    other layer (new ones, containers) takes ``model``'s mode."""
    shared = {id(m) for m in model.modules()}
    copies: set[int] = set()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in shared:
                new = copy.deepcopy(child)
                setattr(parent, name, new)
                copies.update(id(m) for m in new.modules())
    for m in module.modules():
        if id(m) not in copies:
            m.training = model.training
    return module


def remove_dead_code(gm: fx.GraphModule) -> list[str]:
    """Erase the nodes whose values nothing reads (in-place mutations stay), then every submodule,
    parameter and buffer that no remaining node uses: a branch a rewrite left unread neither runs
    nor holds weights that never train. Modules that run graphs of their own (a checkpoint
    segment's ``body``) count what those graphs use. Returns the qualified names removed."""
    from reverso.ir.dataflow import is_mutation

    gm.graph.eliminate_dead_code(is_impure_node=lambda n: n.is_impure() or is_mutation(n))
    modules, tensors = _used(gm)
    removed = []
    for name, module in sorted(gm.named_modules(), key=lambda item: -item[0].count(".")):
        if not name or id(module) in modules:
            continue
        inside = itertools.chain(module.parameters(), module.buffers())
        if not any(id(m) in modules for m in module.modules()) and not any(
            id(t) in tensors for t in inside
        ):
            parent, _, child = name.rpartition(".")
            delattr(gm.get_submodule(parent), child)
            removed.append(name)
            continue
        for kind in ("_parameters", "_buffers"):
            for key, tensor in list(getattr(module, kind).items()):
                if tensor is not None and id(tensor) not in tensors:
                    del getattr(module, kind)[key]
                    removed.append(f"{name}.{key}")
    gm.recompile()
    return sorted(n for n in removed if not any(n.startswith(f"{r}.") for r in removed))


def _used(gm: fx.GraphModule) -> tuple[set[int], set[int]]:
    """The ids of the modules the graph calls (and their descendants) and of the tensors it
    reads, following the graphs such modules keep as ``body``."""
    modules: set[int] = set()
    tensors: set[int] = set()

    def take(module: nn.Module) -> None:
        for m in module.modules():
            modules.add(id(m))
            tensors.update(id(t) for t in itertools.chain(m.parameters(False), m.buffers(False)))
            body = m.__dict__.get("body")
            if isinstance(body, fx.GraphModule) and id(body) not in modules:
                modules.add(id(body))
                visit(body)

    def visit(graph_module: fx.GraphModule) -> None:
        for n in graph_module.graph.nodes:
            if n.op == "call_module":
                take(graph_module.get_submodule(n.target))
            elif n.op == "get_attr":
                value = _attribute(graph_module, n.target)
                if isinstance(value, nn.Module):
                    take(value)
                else:
                    tensors.add(id(value))

    visit(gm)
    return modules, tensors


def _attribute(module: nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module
