"""The attacks of the top-down paper's Exp 2 in Foolbox 3, and how each one is run.

:data:`ATTACKS` lists each attack with its Foolbox 3 class and settings at ``budget="paper"``
(``budget="fast"`` divides the search steps by ten); :class:`SinglePixelAttack` is Foolbox 2's
pixel attack, which Foolbox 3 lacks. :func:`minimal_perturbations` gives every image its
smallest successful perturbation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


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
        "reverso.study.attacks.SinglePixelAttack (Foolbox 3 has none)",
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
        "grid search on Foolbox 2's default grid: shifts in [-5, 5] px on each axis and "
        "rotations in [-5, 5] degrees, 10 values per axis (4 at budget='fast')",
        False,
        lambda steps: _fb().SpatialAttack(
            max_translation=5,
            max_rotation=5,
            num_translations=_grid(steps),
            num_rotations=_grid(steps),
        ),
        1000,
    ),
    "shifts": AttackSpec(
        "SpatialAttack without rotations",
        "SpatialAttack(max_rotation=0, num_rotations=1)",
        "grid search over shifts in [-5, 5] px, 10 values per axis (Foolbox 2's; 4 at "
        "budget='fast')",
        False,
        lambda steps: _fb().SpatialAttack(
            max_translation=5, max_rotation=0, num_rotations=1, num_translations=_grid(steps)
        ),
        1000,
    ),
}


def _grid(steps: int) -> int:
    """Values per axis of the spatial grids: Foolbox 2's 10, or 4 with a reduced budget."""
    return 10 if steps >= 1000 else 4


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


def minimal_perturbations(
    name: str, budget: str, fmodel, net, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """(N, 2): the L2 and L-infinity norms of the adversarial found for each image of a batch
    (inf where none)."""
    adv, success = adversarials(name, budget, fmodel, net, x, y)
    norms = _norms(adv - x)
    return torch.where(success[:, None], norms, torch.full_like(norms, math.inf))


def adversarials(
    name: str, budget: str, fmodel, net, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adversarial found for each image of a batch, and whether it fools ``net`` (checked)."""
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
        adv, success = _scan_epsilons(attack, fmodel, net, x, y, steps)
    elif name == "pointwise":
        adv, success = _pointwise(attack, fmodel, net, x, y)
    else:
        _, adv, success = attack(fmodel, x, y, epsilons=None)
    with torch.no_grad():
        success = success & (net(adv).argmax(1) != y)  # verify: attacks are not trusted blindly
    return adv, success


def _norms(delta: torch.Tensor) -> torch.Tensor:
    """(N, 2): each perturbation's L2 and L-infinity norm."""
    flat = delta.flatten(1)
    return torch.stack([flat.norm(dim=1), flat.abs().amax(dim=1)], dim=1)


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


def _scan_epsilons(attack, fmodel, net, x, y, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed-size noise attack at growing L2 sizes; each image keeps its first success."""
    found, fooled = x.clone(), torch.zeros(len(y), dtype=torch.bool, device=x.device)
    top = math.sqrt(x[0].numel() / 3)  # Foolbox 2's largest noise: uniform noise of amplitude 1
    todo = torch.arange(len(y), device=x.device)
    clean = net.clean
    for eps in torch.linspace(top / steps, top, steps).tolist():
        net.clean = clean[todo]
        _, adv, success = attack(fmodel, x[todo], y[todo], epsilons=eps)
        with torch.no_grad():
            success = success & (net(adv).argmax(1) != y[todo])
        if success.any():
            found[todo[success]] = adv[success]
            fooled[todo[success]] = True
            todo = todo[~success]
        if len(todo) == 0:
            break
    net.clean = clean
    return found, fooled
