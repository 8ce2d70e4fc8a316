"""Adversarial robustness with Foolbox 3 (the top-down paper's Exp 2; docs/methods/evaluation.md,
section 3).

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
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from reverso import ir
from reverso.errors import OptionError, check_count
from reverso.ir.modes import evaluating
from reverso.settings import smoke, smoke_cap
from reverso.study.attacks import ATTACKS, BUDGETS, minimal_perturbations
from reverso.study.data import Data
from reverso.study.images import for_model


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


#: how each image picks its best adversarial over the repeats (the order of the norm columns)
SELECTIONS = ("l2", "linf")


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
    select: str = "linf",
) -> RobustnessReport:
    """Attack ``model`` on the test set of ``data`` (or on ``(images, labels)`` in [0, 1]).

    ``samples`` limits the number of test images; ``levels`` (top-down nets only) perturbs just
    those pyramid levels. Of an attack's repeats each image keeps its best adversarial by
    ``select``: ``"linf"`` (the reference code's ``distance=Linf``) or ``"l2"``; the curves plot
    the L2 norm of the kept one either way.
    """
    if select not in SELECTIONS:
        raise OptionError(f"select must be one of {SELECTIONS}, got {select!r}")
    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise OptionError(f"unknown attacks {unknown}; choose from {', '.join(ATTACKS)}")
    if budget not in BUDGETS:
        raise OptionError(f"budget must be one of {tuple(BUDGETS)}, got {budget!r}")
    check_count("repeats", repeats)
    if samples is not None:
        check_count("samples", samples)
    if smoke():
        budget = "fast"
        capped = smoke_cap("robustness", repeats=(repeats, 1), samples=(samples or 10**9, 16))
        repeats, samples = capped["repeats"], capped["samples"]
    images, labels, normalize = attack_inputs(data, samples)
    with evaluating(model):  # every submodule's own mode comes back afterwards
        # eval() marks the wrapper too: Foolbox warns about a model in training mode
        net = AttackedModel(model, normalize, levels).to(next(model.parameters()).device).eval()
        norms, correct = _smallest_perturbations(
            net, images, labels, attacks, repeats, budget, seed, batch_size, progress, select
        )
    report = RobustnessReport(name or type(model).__name__, levels=net.levels)
    upto = math.sqrt(images[0].numel())
    for attack in attacks:
        report.results[attack] = AttackResult(
            attack, norms[attack].cpu(), float(correct.double().mean()), upto
        )
    return report


def _smallest_perturbations(
    net, images, labels, attacks, repeats, budget, seed, batch_size, progress, select="linf"
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The L2 norm of each image's best adversarial per attack, best by ``select`` over the
    repeats (0 for misclassified images, inf where every attempt failed), and which images were
    classified correctly."""
    import foolbox
    from tqdm.auto import tqdm

    device = next(net.parameters()).device
    images, labels = images.to(device), labels.to(device)
    fmodel = foolbox.PyTorchModel(net, bounds=(0.0, 1.0), device=device)
    predictions = []
    with torch.no_grad():
        for batch in images.split(batch_size):
            net.clean = batch
            predictions.append(net(batch).argmax(1))
    correct = torch.cat(predictions) == labels
    jobs = [(a, r) for a in attacks for r in range(repeats if ATTACKS[a].random else 1)]
    bar = tqdm(jobs, desc="attacks", disable=not progress, leave=False)
    kept: dict[str, torch.Tensor] = {}  # per attack: (N, 2) norms of each image's best so far
    for attack, r in bar:
        bar.set_postfix(attack=attack, repeat=r + 1)
        torch.manual_seed(seed + r)
        found = torch.full((len(labels), 2), math.inf, device=device)  # L2, L-infinity
        found[~correct] = 0.0
        index = correct.nonzero().flatten()
        for chunk in index.split(batch_size) if len(index) else ():
            net.clean = images[chunk]
            found[chunk] = minimal_perturbations(
                attack, budget, fmodel, net, images[chunk], labels[chunk]
            )
        best = kept.get(attack, found)
        better = found[:, SELECTIONS.index(select)] < best[:, SELECTIONS.index(select)]
        kept[attack] = torch.where(better[:, None], found, best)
    net.clean = None
    return {attack: both[:, 0] for attack, both in kept.items()}, correct


def attack_inputs(data, samples):
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


class AttackedModel(nn.Module):
    """The model as attacked: normalisation first; optionally clean pyramid levels."""

    def __init__(self, model: nn.Module, normalize, levels):
        super().__init__()
        self.normalize = normalize
        self.levels = None
        self.clean: torch.Tensor | None = None  # the clean batch being attacked (per-level mode)
        if levels is None:
            self.model = model
            return
        from reverso.convert.network import TopDownNet

        pyramids = (
            [
                n
                for n in ir.nodes_with_role(model.features, ir.Role.PYRAMID)
                if n.op == "call_module"
            ]
            if isinstance(model, TopDownNet)
            else []
        )
        if not pyramids:
            raise OptionError(
                f"levels= perturbs pyramid levels of a top-down network; {type(model).__name__} "
                "has no image pyramid (convert it with reverso.topdown first)"
            )
        target = pyramids[0].target
        pyramid = model.features.get_submodule(target)
        levels = tuple(int(v) for v in levels)
        if not levels or any(v not in pyramid.levels for v in levels):
            raise OptionError(
                f"levels must be among the pyramid's levels {pyramid.levels}, got {levels}"
            )
        self.levels = levels
        # shallow copies with their own submodule tables: the model itself is left untouched
        self.model = _shallow_copy(model)
        self.model.features = _shallow_copy(model.features)
        ir.set_module(self.model.features, target, _MixedPyramid(pyramid, levels, self))

    def forward(self, x):  # foolbox's float32 batches, in the model's dtype; float32 logits
        return self.model(self.normalize(for_model(x, self.model))).float()


def _shallow_copy(module: nn.Module) -> nn.Module:
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    return twin


class _MixedPyramid(nn.Module):
    """The pyramid of the perturbed input at ``levels``, of the clean input elsewhere."""

    def __init__(self, pyramid: nn.Module, levels: tuple[int, ...], owner: AttackedModel):
        super().__init__()
        self.pyramid = pyramid
        self.levels = pyramid.levels
        self.perturbed = levels
        self._owner = [owner]  # a list: not registered as a submodule (no cycle)

    def forward(self, x):
        clean = self._owner[0].clean
        if clean is None or clean.shape != x.shape:
            raise OptionError("per-level attacks need the clean batch of the same shape")
        clean = self._owner[0].normalize(clean.to(x.dtype))
        perturbed, original = self.pyramid(x), self.pyramid(clean)
        return tuple(
            p if level in self.perturbed else c
            for level, p, c in zip(self.levels, perturbed, original, strict=True)
        )
