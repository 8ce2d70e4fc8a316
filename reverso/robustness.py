"""Adversarial robustness with Foolbox 3 (the top-down paper's Exp 2, evaluation.md section 3).

Every correctly classified test image is attacked; random attacks are repeated (3 times by default)
and each image keeps its smallest successful perturbation (L2 norm, in [0, 1] pixel units). The
*accuracy loss* at a budget eps is the clean accuracy minus the share of images still correctly
classified by every perturbation of norm <= eps; the curve over eps is non-decreasing and its area
(the mean loss over [0, upto]) sums it up: lower is more robust.

The paper used Foolbox 2 with default parameters. The Foolbox 3 equivalents used here, with their
settings at ``budget="paper"`` (``budget="fast"`` divides the search steps by ten, for demos and
tests), are listed in :data:`ATTACKS` and in ``docs/evaluation.md``.

For a top-down network, ``levels=`` perturbs only some levels of its image pyramid (the others see
the clean image): the paper's per-branch study of which scale is the most vulnerable.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import Data
from .errors import OptionError
from .names import title as in_words
from .plotting import (
    COLUMN,
    TEXT_WIDTH,
    new_figure,
    percent_axis,
    save_figure,
    styled,
    wrapped,
)
from .settings import smoke, smoke_cap


@dataclass(frozen=True)
class AttackSpec:
    """One of the paper's attacks and how it is run with Foolbox 3."""

    paper: str  # the Foolbox 2 name the paper uses
    foolbox: str  # the Foolbox 3 class used (or reverso's own where Foolbox 3 has none)
    settings: str
    random: bool  # repeated (deterministic attacks run once: repeats would find the same)
    build: Callable[[int], object]  # steps -> attack
    steps: int  # search steps at budget="paper"
    fixed_epsilon: bool = False  # a fixed-size attack: reverso scans the L2 norm upwards


def _fb():
    import foolbox

    return foolbox.attacks


ATTACKS: dict[str, AttackSpec] = {
    "gaussian_noise": AttackSpec(
        "AdditiveGaussianNoiseAttack",
        "L2AdditiveGaussianNoiseAttack",
        "L2 norm scanned upwards in `steps` equal steps up to sqrt(D/3) (Foolbox 2's range); "
        "fresh noise at every step",
        True,
        lambda steps: _fb().L2AdditiveGaussianNoiseAttack(),
        1000,
        fixed_epsilon=True,
    ),
    "uniform_noise": AttackSpec(
        "AdditiveUniformNoiseAttack",
        "L2AdditiveUniformNoiseAttack",
        "as gaussian_noise, with uniform noise",
        True,
        lambda steps: _fb().L2AdditiveUniformNoiseAttack(),
        1000,
        fixed_epsilon=True,
    ),
    "blended_noise": AttackSpec(
        "BlendedUniformNoiseAttack",
        "LinearSearchBlendedUniformNoiseAttack",
        "directions=steps, steps=steps (Foolbox defaults: 1000, 1000)",
        True,
        lambda steps: _fb().LinearSearchBlendedUniformNoiseAttack(directions=steps, steps=steps),
        1000,
    ),
    "salt_and_pepper": AttackSpec(
        "SaltAndPepperNoiseAttack",
        "SaltAndPepperNoiseAttack",
        "steps=steps (Foolbox default 1000), same noise across channels",
        True,
        lambda steps: _fb().SaltAndPepperNoiseAttack(steps=steps),
        1000,
    ),
    "pointwise": AttackSpec(
        "PointwiseAttack",
        "PointwiseAttack",
        "started from salt-and-pepper noise (steps=steps), L2 binary search (Foolbox defaults)",
        True,
        lambda steps: _fb().PointwiseAttack(
            init_attack=_fb().SaltAndPepperNoiseAttack(steps=steps)
        ),
        1000,
    ),
    "single_pixel": AttackSpec(
        "SinglePixelAttack",
        "reverso.robustness.SinglePixelAttack (Foolbox 3 has none)",
        "Foolbox 2's algorithm: up to `steps` random pixels, each set to the lower then the upper "
        "bound in every channel; the first that fools the model wins",
        True,
        lambda steps: SinglePixelAttack(max_pixels=steps),
        1000,
    ),
    "gaussian_blur": AttackSpec(
        "GaussianBlurAttack",
        "GaussianBlurAttack",
        "steps=steps sigmas up to the image size (Foolbox default 1000)",
        False,
        lambda steps: _fb().GaussianBlurAttack(steps=steps),
        1000,
    ),
    "contrast": AttackSpec(
        "ContrastReductionAttack",
        "LinearSearchContrastReductionAttack",
        "steps=steps towards mid-grey (Foolbox default 1000)",
        False,
        lambda steps: _fb().LinearSearchContrastReductionAttack(steps=steps),
        1000,
    ),
    "spatial": AttackSpec(
        "SpatialAttack",
        "SpatialAttack",
        "grid search: translations up to 3 px and rotations up to 30 degrees, 5 values each "
        "(Foolbox defaults; 3 each at budget='fast')",
        False,
        lambda steps: _fb().SpatialAttack(
            num_translations=5 if steps >= 1000 else 3, num_rotations=5 if steps >= 1000 else 3
        ),
        1000,
    ),
    "shifts": AttackSpec(
        "SpatialAttack without rotations",
        "SpatialAttack(max_rotation=0, num_rotations=1)",
        "grid search over translations up to 3 px, 5 values per axis (3 at budget='fast')",
        False,
        lambda steps: _fb().SpatialAttack(
            max_rotation=0, num_rotations=1, num_translations=5 if steps >= 1000 else 3
        ),
        1000,
    ),
}

BUDGETS = {"paper": 1, "fast": 10}  # divide the search steps by this


class SinglePixelAttack:
    """Foolbox 2's single-pixel attack, which Foolbox 3 dropped: try random pixel positions, set
    the pixel to the lower and then the upper bound in every channel, keep the first success."""

    def __init__(self, max_pixels: int = 1000):
        self.max_pixels = max_pixels

    def __call__(
        self, predict, x: torch.Tensor, y: torch.Tensor, bounds=(0.0, 1.0)
    ) -> torch.Tensor:
        """Adversarials for ``x`` (unchanged where none was found)."""
        n, _, h, w = x.shape
        result = x.clone()
        todo = torch.ones(n, dtype=torch.bool, device=x.device)
        for _ in range(self.max_pixels):
            index = todo.nonzero().flatten()
            if len(index) == 0:
                break
            pos = torch.randint(0, h * w, (len(index),), device=x.device)
            for value in bounds:
                trial = x[index].clone()
                trial.view(len(index), trial.shape[1], -1)[torch.arange(len(index)), :, pos] = value
                fooled = predict(trial, index) != y[index]
                result[index[fooled]] = trial[fooled]
                todo[index[fooled]] = False
                index, pos = index[~fooled], pos[~fooled]
                if len(index) == 0:
                    break
        return result


@dataclass
class AttackResult:
    """The smallest successful L2 perturbation found for each test image."""

    attack: str
    norms: torch.Tensor  # 0: misclassified without attack; inf: no adversarial found
    clean_accuracy: float
    upto: float  # the largest L2 norm the image space allows (sqrt(D) for [0, 1] pixels)

    def accuracy_at(self, eps: float | torch.Tensor) -> torch.Tensor:
        """Share of images still correctly classified under every perturbation of norm <= eps."""
        eps = torch.as_tensor(eps, dtype=torch.float64)
        return (
            (self.norms[None, :].double() > eps.reshape(-1, 1)).double().mean(1).reshape(eps.shape)
        )

    def loss_curve(self, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, clean accuracy - accuracy under attack): non-decreasing in eps."""
        eps = (
            torch.linspace(0, self.upto, 201, dtype=torch.float64) if eps is None else eps.double()
        )
        return eps, self.clean_accuracy - self.accuracy_at(eps)

    def area(self, upto: float | None = None) -> float:
        """Mean accuracy loss over L2 budgets in [0, upto] (default: the whole image space)."""
        upto = self.upto if upto is None else upto
        eps, loss = self.loss_curve(torch.linspace(0, upto, 1001, dtype=torch.float64))
        return float(torch.trapezoid(loss, eps) / upto)

    @property
    def median_norm(self) -> float:
        attacked = self.norms[self.norms > 0]
        return float(attacked.median()) if len(attacked) else math.nan


@dataclass
class RobustnessReport:
    model: str
    results: dict[str, AttackResult] = field(default_factory=dict)
    levels: tuple[int, ...] | None = None  # the pyramid levels perturbed (top-down per-branch)

    def __getitem__(self, attack: str) -> AttackResult:
        return self.results[attack]

    def __str__(self) -> str:
        where = f", perturbing pyramid levels {self.levels}" if self.levels is not None else ""
        lines = [f"robustness of {self.model}{where}"]
        lines.append(f"{'attack':<16} {'clean acc':>9} {'median L2':>9} {'area':>8} {'fooled':>7}")
        for name, r in self.results.items():
            fooled = float(torch.isfinite(r.norms).double().mean() - (1 - r.clean_accuracy))
            lines.append(
                f"{name:<16} {r.clean_accuracy:>9.2%} {r.median_norm:>9.3f} {r.area():>8.4f} "
                f"{fooled:>7.1%}"
            )
        return "\n".join(lines)


def robustness(
    model: nn.Module,
    data: Data | tuple[torch.Tensor, torch.Tensor],
    *,
    attacks: Sequence[str] | str = tuple(ATTACKS),
    repeats: int = 3,
    samples: int | None = None,
    budget: str = "paper",
    levels: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
    name: str | None = None,
) -> RobustnessReport:
    """Attack ``model`` on the test set of ``data`` (or on ``(images, labels)`` in [0, 1]).

    ``samples`` limits the number of test images; ``levels`` (top-down nets only) perturbs just
    those pyramid levels.
    """
    import foolbox
    from tqdm.auto import tqdm

    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise OptionError(f"unknown attacks {unknown}; choose from {', '.join(ATTACKS)}")
    if budget not in BUDGETS:
        raise OptionError(f"budget must be one of {tuple(BUDGETS)}, got {budget!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise OptionError(f"repeats must be a positive integer, got {repeats!r}")
    if smoke():
        budget = "fast"
        capped = smoke_cap("robustness", repeats=(repeats, 1), samples=(samples or 10**9, 16))
        repeats, samples = capped["repeats"], capped["samples"]
    images, labels, normalize = _inputs(data, samples)
    device = next(model.parameters()).device
    net = _Evaluated(model, normalize, levels).to(device).eval()
    images, labels = images.to(device), labels.to(device)
    fmodel = foolbox.PyTorchModel(net, bounds=(0.0, 1.0), device=device)
    predictions = []
    with torch.no_grad():
        for batch in images.split(batch_size):
            net.clean = batch
            predictions.append(net(batch).argmax(1))
    correct = torch.cat(predictions) == labels
    report = RobustnessReport(name or type(model).__name__, levels=net.levels)
    upto = math.sqrt(images[0].numel())
    jobs = [(a, r) for a in attacks for r in range(repeats if ATTACKS[a].random else 1)]
    bar = tqdm(jobs, desc="attacks", disable=not progress, leave=False)
    norms: dict[str, torch.Tensor] = {}
    for attack, r in bar:
        bar.set_postfix(attack=attack, repeat=r + 1)
        torch.manual_seed(seed + r)
        found = torch.full((len(labels),), math.inf, device=device)
        found[~correct] = 0.0
        index = correct.nonzero().flatten()
        for chunk in index.split(batch_size) if len(index) else ():
            net.clean = images[chunk]
            found[chunk] = _attack(attack, budget, fmodel, net, images[chunk], labels[chunk])
        norms[attack] = torch.minimum(norms.get(attack, found), found)
    net.clean = None
    for attack in attacks:
        report.results[attack] = AttackResult(
            attack, norms[attack].cpu(), float(correct.double().mean()), upto
        )
    return report


def _attack(name: str, budget: str, fmodel, net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The L2 norm of the adversarial found for each image of a batch (inf where none)."""
    spec = ATTACKS[name]
    steps = max(1, spec.steps // BUDGETS[budget])
    attack = spec.build(steps)
    clean = net.clean
    if isinstance(attack, SinglePixelAttack):

        def predict(trial, index):
            net.clean = clean[index]
            return net(trial).argmax(1)

        adv = attack(predict, x, y)
        net.clean = clean
        success = torch.ones_like(y, dtype=torch.bool)
    elif spec.fixed_epsilon:
        return _scan_epsilons(attack, fmodel, net, x, y, steps)
    elif name == "pointwise":
        adv, success = _pointwise(attack, fmodel, net, x, y)
    else:
        _, adv, success = attack(fmodel, x, y, epsilons=None)
    with torch.no_grad():
        success = success & (net(adv).argmax(1) != y)  # verify: attacks are not trusted blindly
    norms = (adv - x).flatten(1).norm(dim=1)
    return torch.where(success, norms, torch.full_like(norms, math.inf))


def _pointwise(attack, fmodel, net, x, y):
    """Foolbox 3's PointwiseAttack insists that every starting point is adversarial: start it
    from its salt-and-pepper adversarials, only where those were found."""
    _, start, ok = attack.init_attack(fmodel, x, y, epsilons=None)
    with torch.no_grad():
        ok = ok & (net(start).argmax(1) != y)
    adv, clean = start.clone(), net.clean
    if ok.any():
        net.clean = clean[ok]
        _, refined, _ = attack(fmodel, x[ok], y[ok], epsilons=None, starting_points=start[ok])
        adv[ok] = refined
        net.clean = clean
    return adv, ok


def _scan_epsilons(attack, fmodel, net, x, y, steps: int) -> torch.Tensor:
    """A fixed-size noise attack at growing L2 sizes; each image keeps its first success."""
    found = torch.full((len(y),), math.inf, device=x.device)
    top = math.sqrt(x[0].numel() / 3)  # Foolbox 2's largest noise: uniform noise of amplitude 1
    todo = torch.arange(len(y), device=x.device)
    clean = net.clean
    for eps in torch.linspace(top / steps, top, steps).tolist():
        net.clean = clean[todo]
        _, adv, success = attack(fmodel, x[todo], y[todo], epsilons=eps)
        with torch.no_grad():
            success = success & (net(adv).argmax(1) != y[todo])
        if success.any():
            found[todo[success]] = (adv[success] - x[todo[success]]).flatten(1).norm(dim=1)
            todo = todo[~success]
        if len(todo) == 0:
            break
    net.clean = clean
    return found


def _inputs(data, samples):
    if isinstance(data, Data):
        images, labels = data.test_tensors(samples)
        return images, labels, data.normalize
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
        if images.dim() != 4 or len(images) != len(labels):
            raise OptionError(
                "data must be a reverso.data.Data or (images (N, C, H, W), labels (N,))"
            )
        if images.min() < 0 or images.max() > 1:
            raise OptionError("images must be in [0, 1] (attacks clip to these bounds)")
        n = len(labels) if samples is None else min(samples, len(labels))
        return images[:n], labels[:n], lambda x: x
    raise OptionError("data must be a reverso.data.Data or a tuple (images, labels)")


class _Evaluated(nn.Module):
    """The model as attacked: normalisation first; optionally clean pyramid levels."""

    def __init__(self, model: nn.Module, normalize, levels):
        super().__init__()
        self.normalize = normalize
        self.levels = None
        self.clean: torch.Tensor | None = None  # the clean batch being attacked (per-level mode)
        if levels is None:
            self.model = model
            return
        from .network import TopDownNet

        if not isinstance(model, TopDownNet) or not hasattr(model.features, "pyramid"):
            raise OptionError(
                f"levels= perturbs pyramid levels of a top-down network; {type(model).__name__} "
                "has no image pyramid (convert it with reverso.topdown first)"
            )
        pyramid = model.features.pyramid
        levels = tuple(int(v) for v in levels)
        if not levels or any(v not in pyramid.levels for v in levels):
            raise OptionError(
                f"levels must be among the pyramid's levels {pyramid.levels}, got {levels}"
            )
        self.levels = levels
        # shallow copies with their own submodule tables: the model itself is left untouched
        self.model = _shallow_copy(model)
        self.model.features = _shallow_copy(model.features)
        self.model.features.pyramid = _MixedPyramid(pyramid, levels, self)

    def forward(self, x):
        return self.model(self.normalize(x))


def _shallow_copy(module: nn.Module) -> nn.Module:
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    return twin


class _MixedPyramid(nn.Module):
    """The pyramid of the perturbed input at ``levels``, of the clean input elsewhere."""

    def __init__(self, pyramid: nn.Module, levels: tuple[int, ...], owner: _Evaluated):
        super().__init__()
        self.pyramid = pyramid
        self.levels = pyramid.levels
        self.perturbed = levels
        self._owner = [owner]  # a list: not registered as a submodule (no cycle)

    def forward(self, x):
        clean = self._owner[0].clean
        if clean is None or clean.shape != x.shape:
            raise OptionError("per-level attacks need the clean batch of the same shape")
        clean = self._owner[0].normalize(clean)
        perturbed, original = self.pyramid(x), self.pyramid(clean)
        return tuple(
            p if level in self.perturbed else c
            for level, p, c in zip(self.levels, perturbed, original, strict=True)
        )


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
    if not reports:
        raise OptionError("plot_robustness needs at least one report")
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
