"""Effective receptive fields: where the gradient of an output unit comes from.

The ERF of a unit is the gradient of that unit with respect to the input, averaged over inputs
(Luo et al., 2016). Its size here is the side of the smallest square around the gradient's centre
of mass that holds ``mass`` (95%) of the absolute gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from reverso.errors import OptionError, check_count
from reverso.frontend.tracing import random_input, resolve_input_size, resolve_model, trace
from reverso.ir.modes import evaluating
from reverso.ir.shapes import is_feature_map
from reverso.settings import smoke_cap
from reverso.study.shift import features_at


@dataclass
class ERF:
    map: torch.Tensor  # (H, W) mean absolute input gradient, normalised to sum 1
    support: tuple[int, int]  # rows and columns spanned by the nonzero gradient
    center: tuple[float, float]  # centre of mass (row, column)
    radius: int  # half-side of the square holding `mass` of the map
    mass: float
    node: str
    png: Path | None = None
    model: str = ""  # the model's name, for titles
    where: str = ""  # the measured unit in words, for titles
    samples: int = 0

    @property
    def size(self) -> int:
        return 2 * self.radius + 1

    def mass_within(self, radius: int) -> float:
        """Share of the map inside the square of this half-side around the centre."""
        cy, cx = round(self.center[0]), round(self.center[1])
        return (
            self.map[max(cy - radius, 0) : cy + radius + 1, max(cx - radius, 0) : cx + radius + 1]
            .sum()
            .item()
        )


def erf(
    model: nn.Module | str,
    input_size=None,
    *,
    node: str | None = None,
    samples: int = 16,
    mass: float = 0.95,
    seed: int = 0,
    png: str | Path | None = None,
    name: str | None = None,
) -> ERF:
    """Empirical receptive field of the central unit of ``node`` (default: the model's last
    feature map), averaged over ``samples`` random Gaussian inputs; optionally drawn to ``png``
    (.png, .pdf or .svg) with ``name`` (default: the model's class) in the title."""
    from reverso.convert.network import TopDownNet

    label = name or (model if isinstance(model, str) else type(model).__name__)
    chosen = node
    model = resolve_model(model)
    input_size = resolve_input_size(model, input_size)
    if not 0 < mass <= 1:
        raise OptionError(f"mass must be in (0, 1], got {mass}")
    check_count("samples", samples)
    samples = smoke_cap("erf", samples=(samples, 2))["samples"]
    if isinstance(model, TopDownNet):
        source = model.features
        node = node or next(n for n in source.graph.nodes if n.op == "output").args[0].name
    else:
        source = trace(model, input_size)
        node = node or _last_feature_map(source, type(model).__name__)
    features = features_at(source, node)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(input_size[1:])
    with evaluating(model):
        for _ in range(samples):
            x = random_input(model, input_size, 1, normal=True, generator=gen).requires_grad_()
            out = features(x)
            if out.dim() != 4:
                raise OptionError(f"node {node!r} is not a feature map (shape {tuple(out.shape)})")
            h, w = out.shape[-2:]
            (grad,) = torch.autograd.grad(out[0, :, h // 2, w // 2].sum(), x)
            total += grad.abs().sum(dim=(0, 1)).float().cpu()
    erf_map = total / total.sum().clamp_min(1e-30)
    rows, cols = torch.meshgrid(
        torch.arange(erf_map.shape[0]), torch.arange(erf_map.shape[1]), indexing="ij"
    )
    center = ((erf_map * rows).sum().item(), (erf_map * cols).sum().item())
    nonzero = (erf_map > 0).nonzero()
    support = (
        tuple(int(v) for v in nonzero.max(0).values - nonzero.min(0).values + 1)
        if len(nonzero)
        else (0, 0)
    )
    h, w = out.shape[-2:]
    where = f"{f'node {node}' if chosen else 'last feature map'}, {out.shape[1]} ch at {h}x{w}"
    result = ERF(erf_map, support, center, 0, mass, node, None, label, where, samples)
    limit = max(erf_map.shape)
    while result.mass_within(result.radius) < mass - 1e-9 and result.radius < limit:
        result.radius += 1
    if png is not None:
        from reverso.study.figures import plot_erfs  # figures builds on this module

        result.png = plot_erfs({result.model: result}, png)
    return result


def _last_feature_map(gm: fx.GraphModule, model_name: str) -> str:
    """The name of the last node of ``gm`` that is still a spatial feature map."""
    last = None
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output"):  # the output node only repeats what it returns
            continue
        if is_feature_map(n) and n.meta["val"].shape[-1] > 1:
            last = n
    if last is None:
        raise OptionError(f"{model_name} has no spatial feature map to measure")
    return last.name
