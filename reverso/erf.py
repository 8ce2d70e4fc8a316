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

from .errors import OptionError
from .plotting import (
    COLUMN,
    TEXT_WIDTH,
    integer_axis,
    new_figure,
    save_figure,
    styled,
    wrapped,
)
from .settings import smoke_cap
from .shapes import is_feature_map
from .shift import features_at
from .tracing import evaluating, resolve_input_size, resolve_model, trace


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
    from .network import TopDownNet

    label = name or (model if isinstance(model, str) else type(model).__name__)
    chosen = node
    model = resolve_model(model)
    input_size = resolve_input_size(model, input_size)
    if not 0 < mass <= 1:
        raise OptionError(f"mass must be in (0, 1], got {mass}")
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
            x = torch.randn((1, *input_size), generator=gen).requires_grad_()
            out = features(x)
            if out.dim() != 4:
                raise OptionError(f"node {node!r} is not a feature map (shape {tuple(out.shape)})")
            h, w = out.shape[-2:]
            (grad,) = torch.autograd.grad(out[0, :, h // 2, w // 2].sum(), x)
            total += grad.abs().sum(dim=(0, 1))
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
        result.png = save_erf_png(result, png)
    return result


def save_erf_png(result: ERF, path: str | Path) -> Path:
    """One ERF as a figure (see :func:`plot_erfs`)."""
    return plot_erfs({result.model: result}, path)


@styled
def plot_erfs(erfs: dict[str, ERF], path: str | Path, *, title: str | None = None) -> Path:
    """ERFs side by side on one colour scale (e.g. a bottom-up net and its top-down form), each
    with the square that holds ``mass`` of the gradient; .png, .pdf or .svg by suffix."""
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Rectangle

    if not erfs:
        raise OptionError("plot_erfs needs at least one ERF")
    results = list(erfs.items())
    top = max(float(r.map.max()) for _, r in results) * 100
    norm = PowerNorm(0.5, vmin=0, vmax=top)  # square-root scale: the tails stay visible
    width = min(TEXT_WIDTH, COLUMN * 0.95 * len(results) + 0.6)
    fig, axes = new_figure(1, len(results), size=(width, COLUMN * 0.95 + 0.5))
    for ax, (label, r) in zip(axes[0], results, strict=True):
        image = ax.imshow(r.map.numpy() * 100, cmap="magma", norm=norm)
        cy, cx, radius = round(r.center[0]), round(r.center[1]), r.radius
        ax.add_patch(
            Rectangle(
                (cx - radius - 0.5, cy - radius - 0.5),
                r.size,
                r.size,
                fill=False,
                color="cyan",
                linewidth=1,
            )
        )
        ax.set_title(f"{label}\n{r.where}\nERF {r.size}x{r.size} px")
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
        integer_axis(ax.xaxis)
        integer_axis(ax.yaxis)
    bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.85)
    bar.set_ticks([float(f"{top * (i / 4) ** 2:.2g}") for i in range(5)])  # even on the root scale
    bar.set_label("share of the input gradient per pixel (%)")
    samples = results[0][1].samples
    masses = sorted({f"{r.mass:.0%}" for _, r in results})
    lines = [
        title
        or "Effective receptive field (ERF): mean |input gradient| of the central unit"
        + (f" over {samples} random inputs" if samples else ""),
        f"cyan square: the smallest around the centre holding {'/'.join(masses)} of it",
    ]
    fig.suptitle(wrapped(lines, width))
    return save_figure(fig, path)


def _last_feature_map(gm: fx.GraphModule, model_name: str) -> str:
    """The name of the last node of ``gm`` that is still a spatial feature map."""
    last = None
    for n in gm.graph.nodes:
        if is_feature_map(n) and n.meta["val"].shape[-1] > 1 and n.op != "placeholder":
            last = n
    if last is None:
        raise OptionError(f"{model_name} has no spatial feature map to measure")
    return last.name
