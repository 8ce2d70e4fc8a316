"""The study's figures, in the house style of :mod:`reverso.study.plotting`: training curves,
robustness curves and effective receptive fields side by side."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from reverso.errors import OptionError
from reverso.names import title as in_words
from reverso.study.branches import BranchReport
from reverso.study.plotting import (
    COLUMN,
    TEXT_WIDTH,
    integer_axis,
    new_figure,
    percent_axis,
    save_figure,
    styled,
    wrapped,
)

if TYPE_CHECKING:  # the results it draws; the study modules import this one, not the reverse
    from reverso.study.erf import ERF
    from reverso.study.robustness import RobustnessReport
    from reverso.study.train import TrainResult


def _labelled(results, kind: str, what: str) -> dict:
    """``results`` as a non-empty ``{label: kind}`` dict (one ``kind`` alone is labelled "model");
    ``kind`` is a class name (this module reads the study's results, it imports none of them)."""

    def is_kind(value) -> bool:
        return any(c.__name__ == kind for c in type(value).__mro__)

    if is_kind(results):
        return {"model": results}
    if not isinstance(results, dict) or not results:
        raise OptionError(f"{what} needs a {kind} or a non-empty dict of them by label")
    wrong = next((k for k, v in results.items() if not is_kind(v)), None)
    if wrong is not None:
        raise OptionError(f"{what}: {wrong!r} is a {type(results[wrong]).__name__}, not a {kind}")
    return results


@styled
def plot_training(
    results: dict[str, TrainResult] | TrainResult, path: str | Path, *, title: str | None = None
) -> Path:
    """Training curves, one colour per model: validation accuracy (left) and training loss
    (right) per epoch, the mean over runs with the band of the runs' min and max; .png, .pdf or
    .svg by the suffix of ``path``."""
    results = _labelled(results, "TrainResult", "plot_training")
    fig, axes = new_figure(1, 2, size=(TEXT_WIDTH * 0.8, 2.6))
    accuracy, loss = axes[0]
    for label, result in results.items():
        for ax, key in ((accuracy, "val_accuracy"), (loss, "loss")):
            curves = torch.tensor([[h[key] for h in run.history] for run in result.runs])
            epochs = [h["epoch"] for h in result.runs[0].history]
            runs = f", {len(result.runs)} runs" if len(result.runs) > 1 else ""
            (line,) = ax.plot(epochs, curves.mean(0).tolist(), marker=".", label=f"{label}{runs}")
            if len(result.runs) > 1:
                ax.fill_between(
                    epochs,
                    curves.min(0).values.tolist(),
                    curves.max(0).values.tolist(),
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
    accuracy.set_ylabel("validation accuracy")
    percent_axis(accuracy.yaxis)
    loss.set_ylabel("training loss (cross-entropy)")
    for ax in (accuracy, loss):
        ax.set_xlabel("epoch")
        integer_axis(ax.xaxis)
    accuracy.legend(loc="lower right")
    fig.suptitle(title or "Training curves")
    return save_figure(fig, path)


@styled
def plot_robustness(
    reports: dict[str, RobustnessReport],
    path: str | Path,
    upto: float | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Accuracy loss against the L2 norm of the perturbation, one panel per attack, one curve per
    model; the legend gives each curve's area (as in the report's table: the mean accuracy loss
    over the whole image space, lower is more robust). ``upto`` limits the x axis (default: a
    little past the largest perturbation found). .png, .pdf or .svg by the suffix of ``path``."""
    reports = _labelled(reports, "RobustnessReport", "plot_robustness")
    attacks = list(next(iter(reports.values())).results)
    cols = min(len(attacks), 3)
    rows = math.ceil(len(attacks) / cols)
    width = min(TEXT_WIDTH, max(COLUMN, 2.4 * cols + 0.4))
    fig, axes = new_figure(rows, cols, size=(width, 2.2 * rows + 0.4 * len(reports) + 0.5))
    lines = {}
    for ax, attack in zip(axes.flat, attacks, strict=False):
        finite = [
            float(r[attack].norms[torch.isfinite(r[attack].norms)].max())
            for r in reports.values()
            if torch.isfinite(r[attack].norms).any()
        ]
        top = upto or (max(finite) * 1.05 if finite and max(finite) > 0 else 1.0)
        for label, report in reports.items():
            eps, loss = report[attack].loss_curve(torch.linspace(0, top, 201))
            r = report[attack]
            (line,) = ax.plot(eps.numpy(), loss.numpy(), label=f"area {r.area():.3f}")
            lines.setdefault(f"{label} (clean accuracy {r.clean_accuracy:.1%})", line)
        ax.set_title(in_words(attack))
        ax.set_xlabel("L2 norm of the perturbation")
        ax.set_ylabel("accuracy loss")
        percent_axis(ax.yaxis)
        ax.set_xlim(0, top)
        ax.set_ylim(bottom=0)
        ax.legend(loc="best")
    for ax in list(axes.flat)[len(attacks) :]:
        ax.axis("off")
    fig.legend(list(lines.values()), list(lines), loc="outside lower center", frameon=False)
    space = next(iter(next(iter(reports.values())).results.values())).upto
    lines = [
        title or "Robustness: accuracy lost to the smallest adversarial perturbation found",
        f"area: the mean accuracy loss over L2 in [0, {space:.3g}] (the whole space of images in "
        "[0, 1]); lower is more robust",
    ]
    fig.suptitle(wrapped(lines, width))
    return save_figure(fig, path)


@styled
def plot_branches(report: BranchReport, path: str | Path, *, title: str | None = None) -> Path:
    """The per-branch study as bars: accuracy per subset of pyramid inputs fed the adversarials
    (the others clean), one bar per attack, the clean accuracy as a dashed line."""
    if not report.accuracy:
        raise OptionError("plot_branches needs a report with at least one attack")
    subsets = list(next(iter(report.accuracy.values())))
    fig, axes = new_figure(1, 1, size=(COLUMN * 1.4, 2.6))
    ax = axes.flat[0]
    width = 0.8 / len(report.accuracy)
    for i, (attack, rows) in enumerate(report.accuracy.items()):
        xs = [j + (i - (len(report.accuracy) - 1) / 2) * width for j in range(len(subsets))]
        ax.bar(xs, [rows[s] for s in subsets], width, label=in_words(attack))
    ax.axhline(report.clean_accuracy, color="0.3", linestyle="--", linewidth=0.8, label="clean")
    ax.set_xticks(range(len(subsets)), ["+".join(map(str, s)) for s in subsets])
    ax.set_xlabel("pyramid levels fed the adversarials (0: full resolution)")
    ax.set_ylabel("accuracy")
    percent_axis(ax.yaxis)
    ax.set_ylim(0, 1)
    ax.legend(loc="best")
    lines = [title or "Per-branch study: adversarials of the full top-down net, per input subset"]
    fig.suptitle(wrapped(lines, COLUMN * 1.4))
    return save_figure(fig, path)


@styled
def plot_erfs(erfs: dict[str, ERF], path: str | Path, *, title: str | None = None) -> Path:
    """ERFs side by side on one colour scale (e.g. a bottom-up net and its top-down form), each
    with the square that holds ``mass`` of the gradient; .png, .pdf or .svg by suffix."""
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Rectangle

    results = list(_labelled(erfs, "ERF", "plot_erfs").items())
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
