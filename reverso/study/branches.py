"""The per-branch study as the top-down authors' code runs it (docs/methods/evaluation.md,
section 3).

Adversarial images are found once, against the full top-down network; each non-empty subset of
its pyramid inputs then receives them while the other inputs see the clean image, and the
accuracy of every subset is reported. Nothing is attacked again (``reverso.robustness(td,
levels=...)`` re-attacks with only some levels perturbed: another question).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from reverso.errors import OptionError
from reverso.ir.modes import evaluating
from reverso.nn import ImagePyramid
from reverso.study.attacks import ATTACKS, BUDGETS, adversarials
from reverso.study.robustness import SELECTIONS, AttackedModel, attack_inputs


@dataclass
class BranchReport:
    """Accuracy of the top-down net when only a subset of its pyramid inputs sees the
    adversarials found against the whole net (the rest clean), per attack."""

    clean_accuracy: float
    accuracy: dict[str, dict[tuple[int, ...], float]] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"clean accuracy {self.clean_accuracy:.2%}"]
        for attack, rows in self.accuracy.items():
            lines.append(f"{attack}: adversarials against the full net, fed to levels")
            lines += [f"  {levels!s:<12} {acc:.2%}" for levels, acc in rows.items()]
        return "\n".join(lines)


def per_branch(
    td: nn.Module,
    data,
    *,
    attacks: Sequence[str] | str = ("gaussian_noise",),
    repeats: int = 3,
    samples: int | None = None,
    budget: str = "paper",
    seed: int = 0,
    batch_size: int = 256,
    select: str = "linf",
    progress: bool = True,
) -> BranchReport:
    """Attack the full top-down net ``td`` once per attack (best of ``repeats`` by ``select``),
    then measure the accuracy with the adversarials fed to each non-empty subset of the pyramid
    levels and the clean image to the others. ``samples=None`` takes the whole test set; a
    progress bar follows the attacks."""
    from tqdm.auto import tqdm

    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    if any(a not in ATTACKS for a in attacks) or budget not in BUDGETS or select not in SELECTIONS:
        raise OptionError(
            f"attacks must be among {', '.join(ATTACKS)}, budget one of {tuple(BUDGETS)}, select "
            f"one of {SELECTIONS}; got {attacks}, {budget!r}, {select!r}"
        )
    levels = _pyramid_levels(td)
    images, labels, normalize = attack_inputs(data, samples)
    device = next(td.parameters()).device
    images, labels = images.to(device), labels.to(device)
    full = AttackedModel(td, normalize, None)
    with evaluating(td):
        report = BranchReport(_accuracy(full, images, images, labels, batch_size))
        for attack in tqdm(attacks, desc="per-branch attacks", disable=not progress, leave=False):
            adv = _best_adversarials(
                full, attack, images, labels, repeats, budget, seed, batch_size, select
            )
            report.accuracy[attack] = {
                subset: _accuracy(
                    AttackedModel(td, normalize, subset), adv, images, labels, batch_size
                )
                for subset in _subsets(levels)
            }
    return report


def _best_adversarials(net, attack, images, labels, repeats, budget, seed, batch_size, select):
    """Each image's best adversarial over the repeats (the clean image where none was found)."""
    import foolbox

    fmodel = foolbox.PyTorchModel(net, bounds=(0.0, 1.0), device=images.device)
    best, norm = images.clone(), torch.full((len(labels),), math.inf, device=images.device)
    column = 2 if select == "linf" else 1  # the L-infinity or L2 norm of a perturbation
    for r in range(repeats if ATTACKS[attack].random else 1):
        torch.manual_seed(seed + r)
        for chunk in torch.arange(len(labels), device=images.device).split(batch_size):
            net.clean = images[chunk]
            adv, ok = adversarials(attack, budget, fmodel, net, images[chunk], labels[chunk])
            delta = (adv - images[chunk]).flatten(1)
            size = delta.norm(dim=1) if column == 1 else delta.abs().amax(dim=1)
            size = torch.where(ok, size, torch.full_like(size, math.inf))
            better = size < norm[chunk]
            best[chunk[better]], norm[chunk[better]] = adv[better], size[better]
    net.clean = None
    return best


def _accuracy(net, inputs, clean, labels, batch_size) -> float:
    correct = 0
    with torch.no_grad():
        for chunk in torch.arange(len(labels), device=labels.device).split(batch_size):
            net.clean = clean[chunk]
            correct += int((net(inputs[chunk]).argmax(1) == labels[chunk]).sum())
    net.clean = None
    return correct / max(len(labels), 1)


def _pyramid_levels(td: nn.Module) -> tuple[int, ...]:
    pyramids = [m for m in td.modules() if isinstance(m, ImagePyramid)]
    if not pyramids:
        raise OptionError(
            f"the per-branch study feeds a top-down network's pyramid inputs; "
            f"{type(td).__name__} has no image pyramid (convert it with reverso.topdown first)"
        )
    return tuple(pyramids[0].levels)


def _subsets(levels: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every non-empty subset of the pyramid levels (7 for 3 inputs), smallest first."""
    return [c for k in range(1, len(levels) + 1) for c in itertools.combinations(levels, k)]
