"""Activation checkpointing of one segment of a network (the layer the ``checkpoint`` pass emits).

:class:`CheckpointSegment` runs a piece of a graph under non-reentrant
``torch.utils.checkpoint``: autograd keeps only the segment's inputs, and backward runs the
segment a second time to rebuild what it needs. Around that second run the running statistics of
every norm layer inside are restored, so BatchNorm counts one update per training step (as
without checkpointing); the RNG state is replayed, so dropout and drop-path draw the same masks.

The segment does not own its layers: the network keeps them under their usual names (a
checkpointed model has the state_dict of the model it came from) and the segment only calls them.
"""

from __future__ import annotations

import contextlib

import torch
import torch.fx as fx
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.utils.checkpoint import checkpoint


class CheckpointSegment(nn.Module):
    """Run ``body`` (a GraphModule whose layers the enclosing network owns) with checkpointing.

    Checkpointing applies when gradients are being recorded; under ``torch.no_grad()`` (eval
    loops, shape propagation) the body runs as is. ``enabled=False`` runs it as is always.
    """

    def __init__(self, body: fx.GraphModule, *, enabled: bool = True):
        super().__init__()
        # a plain attribute, not a submodule: the layers keep their names in the network
        self.__dict__["body"] = body
        self.enabled = enabled

    def forward(self, *args):
        if is_fx_symbolic_tracing():  # traced: the body's layers, which are the network's
            return self.body.forward(*args)
        if not (self.enabled and torch.is_grad_enabled()):
            return self.body(*args)
        if torch.compiler.is_compiling():  # the compiled backward recomputes without side effects
            return checkpoint(self.body, *args, use_reentrant=False)
        return checkpoint(
            self.body,
            *args,
            use_reentrant=False,
            preserve_rng_state=True,
            context_fn=lambda: (contextlib.nullcontext(), kept_running_stats(self.body)),
        )

    def extra_repr(self) -> str:
        state = "checkpointed" if self.enabled else "plain"
        return f"{state}, {len(list(_layers(self.body)))} layers:\n{self.body.code.strip()}"


@contextlib.contextmanager
def kept_running_stats(module: nn.Module):
    """Restore the running statistics (and batch counters) of ``module``'s norm layers on exit:
    a recomputation must not count as a second update."""
    norms = [m for m in module.modules() if getattr(m, "track_running_stats", False)]
    saved = [
        {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None} for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved, strict=True):
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


def _layers(body: fx.GraphModule):
    return (n for n in body.graph.nodes if n.op in ("call_module", "call_function", "call_method"))
