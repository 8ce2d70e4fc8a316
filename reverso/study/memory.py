"""Bytes saved for backward: what a training step's forward leaves in memory for autograd.

Counted with :func:`torch.autograd.graph.saved_tensors_hooks`, so it works on any device and
sees what autograd really keeps: each storage once (a tensor saved by two layers is one
allocation), the model's own parameters and buffers left out (they are in memory anyway).
Checkpointed segments show up with their inputs only (non-reentrant checkpointing saves them
through the same hooks); reversible sequences with their outputs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.fx as fx
from torch import nn

from reverso.errors import OptionError
from reverso.ir.modes import keeping_modes


def saved_bytes(model: nn.Module, x: torch.Tensor, *, train: bool = True) -> int:
    """Bytes autograd keeps for backward after one forward of ``model`` on ``x``.

    The forward runs with gradients enabled, in training mode unless ``train=False``; the model's
    mode and its norm layers' running statistics are left as they were.
    """
    if not isinstance(x, torch.Tensor):
        raise OptionError(
            f"x must be an input batch (a tensor such as torch.rand(8, 3, 224, 224)), got "
            f"{type(x).__name__}"
        )
    counter = _Counter(model)
    with _measuring(model, train), counter.hooks():
        model(x)
    return counter.total


def node_saved_bytes(gm: fx.GraphModule, x: torch.Tensor, *, train: bool = True) -> dict[str, int]:
    """:func:`saved_bytes` per node of ``gm`` (a storage counts at the first node that saves it)."""
    counter = _Counter(gm)

    class Attributing(fx.Interpreter):
        def run_node(self, n):
            counter.node = n.name
            return super().run_node(n)

    with _measuring(gm, train), counter.hooks():
        Attributing(gm).run(x)
    return counter.per_node


class _Counter:
    def __init__(self, model: nn.Module):
        self.own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        self.seen: set[int] = set()
        self.total = 0
        self.node = ""
        self.per_node: dict[str, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.own and ptr not in self.seen:
            self.seen.add(ptr)
            self.total += storage.nbytes()
            self.per_node[self.node] = self.per_node.get(self.node, 0) + storage.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, _unpack)


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


@contextmanager
def _measuring(model: nn.Module, train: bool):
    """Gradients on, the requested mode, and running statistics restored afterwards."""
    stats = {k: b.clone() for k, b in model.named_buffers()}
    with keeping_modes(model), torch.enable_grad():
        model.train(train)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, b in model.named_buffers():
                    if k in stats:
                        b.copy_(stats[k])
