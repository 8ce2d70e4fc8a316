"""Reversible (i-RevNet) coupling blocks and the memory-saving backward through a run of them.

A :class:`CouplingBlock` maps a pair of half-width maps (x, x~) to

    y  = S x~
    y~ = S x + F(x~)          (inverse: x~ = S^-1 y,  x = S^-1 (y~ - F(x~)))

with S the identity or the space-to-depth permutation psi(2) (then F's first conv has stride 2).
F need not be invertible. A :class:`ReversibleSequence` runs blocks on a full-width map (split
at its entry, merged at its exit); with ``memory_saving`` its backward rebuilds every block's
input from its output instead of keeping activations (RevNet's algorithm): the bytes saved for
backward stop growing with depth. See docs/methods/irevnet.md, sections 2, 3 and 6.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from reverso.errors import OptionError

from .checkpoint import kept_running_stats
from .space_to_depth import SpaceToDepth


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of the channels (docs/methods/irevnet.md, section 2.2)."""
    c = x.shape[1] // 2
    return x[:, :c], x[:, c:]


def merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, b], dim=1)


class CouplingBlock(nn.Module):
    """One i-RevNet block: ``forward(x1, x2) -> (y1, y2)`` and its exact ``inverse``.

    ``residual`` is F (any module from C/2 channels to C/2, or to 2C at half the size when
    ``stride=2``). The trunk (the pair and the addition) stays in float32 under autocast; only F
    runs in low precision.
    """

    def __init__(self, residual: nn.Module, stride: int = 1):
        super().__init__()
        if stride not in (1, 2):
            raise OptionError(f"a coupling block's stride is 1 or 2 (psi(2)), got {stride}")
        self.residual = residual
        self.stride = stride
        self.psi = SpaceToDepth(2) if stride == 2 else nn.Identity()
        self.psi_inverse = self.psi.inverse() if stride == 2 else nn.Identity()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.psi(x2), self.psi(x1) + self.branch(x2)

    def inverse(self, y1: torch.Tensor, y2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x2 = self.psi_inverse(y1)
        x1 = self.psi_inverse(y2 - self.branch(x2))
        return x1, x2

    def branch(self, x2: torch.Tensor) -> torch.Tensor:
        """``F(x2)`` in the trunk's dtype. F reads the trunk in the dtype of its weights: a
        bfloat16 or float16 model's F computes in that dtype, while the trunk's additions stay in
        float32 (autocast casts for F itself)."""
        weight = next((p for p in self.residual.parameters() if p.is_floating_point()), None)
        if weight is not None and weight.dtype in (torch.float16, torch.bfloat16):
            return self.residual(x2.to(weight.dtype)).to(x2.dtype)
        return self.residual(x2).to(x2.dtype)


class InjectivePad(nn.Module):
    """Append ``pad`` zero channels (the injective input operator, docs/methods/irevnet.md,
    section 2.4); ``inverse`` keeps the first channels (the code's ``inverse`` keeps the wrong
    ones)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : x.shape[1] - self.pad]

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class ReversibleSequence(nn.Module):
    """Coupling blocks run on a full-width map: ``forward(x)`` splits ``x`` into halves, runs the
    blocks, merges; ``inverse(y)`` undoes it. With ``memory_saving`` (and gradients being
    recorded) only the run's output is kept for backward (docs/methods/irevnet.md, section 6):
    BatchNorm statistics are updated once, dropout and drop-path replay their masks, F runs
    under the caller's autocast while the trunk stays in float32. A torch.fx leaf."""

    def __init__(self, blocks: Sequence[CouplingBlock], *, memory_saving: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.memory_saving = memory_saving

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = split(_trunk(x))
        if self.memory_saving and torch.is_grad_enabled() and not is_fx_symbolic_tracing():
            params = [p for p in self.parameters() if p.requires_grad]
            y1, y2 = _ReversibleFunction.apply(x1, x2, self, *params)
        else:
            y1, y2 = x1, x2
            for block in self.blocks:
                y1, y2 = block(y1, y2)
        return _leaving_trunk(merge(y1, y2), x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = split(_trunk(y))
        for block in reversed(self.blocks):
            y1, y2 = block.inverse(y1, y2)
        return _leaving_trunk(merge(y1, y2), y)

    def extra_repr(self) -> str:
        return f"memory_saving={self.memory_saving}"


@torch.fx.wrap  # a call in a traced graph: it reads the dtype
def _trunk(x: torch.Tensor) -> torch.Tensor:
    """The trunk in float32 (or float64) whatever autocast made of the input."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@torch.fx.wrap
def _leaving_trunk(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The float32 trunk's result for the next layer: kept in float32 under autocast (which casts
    for the layers that want low precision), else in the dtype the input came in (a bfloat16
    model's next layer takes bfloat16)."""
    autocast = y.device.type != "meta" and torch.is_autocast_enabled(y.device.type)
    return y if autocast else y.to(x.dtype)


class _ReversibleFunction(torch.autograd.Function):
    """Forward without keeping activations; backward rebuilds each block's input from its output
    (x~ = S^-1 y, x = S^-1 (y~ - F(x~))) and backpropagates through one F at a time."""

    @staticmethod
    def forward(ctx, x1, x2, sequence: ReversibleSequence, *params):
        device = x1.device.type
        ctx.sequence = sequence
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.rng = []
        with torch.no_grad():
            for block in sequence.blocks:
                ctx.rng.append(_rng_state(x1.device) if _draws_random(block) else None)
                x1, x2 = block(x1, x2)
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, g1, g2):
        y1, y2 = ctx.saved_tensors
        device, autocast_on, autocast_dtype = ctx.autocast
        params = [p for p in ctx.sequence.parameters() if p.requires_grad]
        param_grads: dict[int, torch.Tensor] = {}
        for block, rng in zip(reversed(ctx.sequence.blocks), reversed(ctx.rng), strict=True):
            with torch.no_grad():
                x2 = block.psi_inverse(y1)
            x2 = x2.detach().requires_grad_(True)
            with (
                torch.enable_grad(),
                _replayed(rng, y1.device),
                kept_running_stats(block),
                torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on),
            ):
                f = block.branch(x2)
                # inside: batch norm's backward reads the running statistics restored on exit
                own = [p for p in block.parameters() if p.requires_grad]
                grads = torch.autograd.grad(f, [x2, *own], g2, allow_unused=True)
            with torch.no_grad():
                x1 = block.psi_inverse(y2 - f)
                gx1 = block.psi_inverse(g2)
                gx2 = block.psi_inverse(g1) + grads[0]
            for p, g in zip(own, grads[1:], strict=True):
                if g is not None:
                    param_grads[id(p)] = g + param_grads[id(p)] if id(p) in param_grads else g
            y1, y2, g1, g2 = x1, x2.detach(), gx1, gx2
        return (g1, g2, None, *[param_grads.get(id(p)) for p in params])


def _draws_random(block: nn.Module) -> bool:
    """Whether the block may draw random numbers in training (dropout, drop-path)."""
    return block.training and any(
        "drop" in type(m).__name__.lower() and getattr(m, "p", getattr(m, "drop_prob", 0)) > 0
        for m in block.modules()
    )


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replayed(state, device: torch.device):
    if state is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


class InvertibleGraphModule(fx.GraphModule):
    """A traced model whose body is invertible up to its last :class:`ReversibleSequence`
    (``reverso.reversible(..., stem="psi", transitions="psi")``): ``forward_features(x)`` gives
    Phi x there, ``inverse(features)`` the input back (BatchNorm in eval mode)."""

    def _phi(self) -> fx.Node:
        calls = [
            n
            for n in self.graph.nodes
            if n.op == "call_module"
            and isinstance(self.get_submodule(n.target), ReversibleSequence)
        ]
        return calls[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        phi = self._phi()
        values: dict[fx.Node, object] = {}

        class UpToPhi(fx.Interpreter):
            def run_node(self, n):
                values[n] = super().run_node(n)
                if n is phi:
                    raise _Reached
                return values[n]

        with contextlib.suppress(_Reached):
            UpToPhi(self).run(x)
        return values[phi]

    def inverse(self, features: torch.Tensor) -> torch.Tensor:
        x, node = features, self._phi()
        while node.op != "placeholder":
            module = self.get_submodule(node.target) if node.op == "call_module" else None
            if not isinstance(module, (ReversibleSequence, InjectivePad, SpaceToDepth)):
                raise RuntimeError(
                    f"node '{node.name}' lies between the input and the features and has no "
                    "inverse: only a net converted with stem='psi' and transitions='psi' inverts"
                )
            x = module.inverse()(x) if isinstance(module, SpaceToDepth) else module.inverse(x)
            (node,) = node.all_input_nodes
        return x


class _Reached(Exception):
    pass
