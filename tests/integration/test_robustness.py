"""Foolbox 3 attacks: oracles with known smallest perturbations, monotone curves, per-branch study."""

import math
import warnings

import pytest
import torch
from torch import nn

import reverso
from reverso.study.attacks import ATTACKS
from reverso.study.figures import plot_robustness
from reverso.study.robustness import AttackResult, robustness
from reverso.study.train import train


class PixelThreshold(nn.Module):
    """Class 1 iff the top-left pixel exceeds ``t``: the smallest change that fools it is known."""

    def __init__(self, t):
        super().__init__()
        self.t = t
        self.dummy = nn.Parameter(torch.zeros(()))  # foolbox and reverso look for a device

    def forward(self, x):
        v = x[:, 0, 0, 0] - self.t + self.dummy
        return torch.stack([-v, v], dim=1)


def test_single_pixel_attack_finds_the_one_pixel():
    images = torch.full((6, 1, 4, 4), 0.8)
    labels = torch.ones(6, dtype=torch.long)
    report = robustness(
        PixelThreshold(0.5), (images, labels), attacks="single_pixel", progress=False
    )
    # setting the top-left pixel to 0 flips the class: an L2 change of exactly 0.8
    assert torch.allclose(report["single_pixel"].norms, torch.full((6,), 0.8))


def test_contrast_reduction_stops_at_the_decision_boundary():
    images = torch.full((4, 1, 5, 5), 0.5)
    images[:, 0, 0, 0] = 1.0
    labels = torch.ones(4, dtype=torch.long)
    report = robustness(PixelThreshold(0.6), (images, labels), attacks="contrast", progress=False)
    # x + e (0.5 - x): only the top-left pixel moves, by 0.5 e, and it crosses 0.6 at e = 0.8
    norms = report["contrast"].norms
    assert torch.allclose(norms, torch.full((4,), 0.4), atol=0.5 / 1000 + 1e-6)


def test_misclassified_images_count_as_fooled_without_attack():
    images = torch.full((4, 1, 4, 4), 0.8)
    labels = torch.tensor([1, 1, 0, 0])  # the last two are wrong already
    report = robustness(
        PixelThreshold(0.5), (images, labels), attacks="single_pixel", progress=False
    )
    r = report["single_pixel"]
    assert r.clean_accuracy == 0.5 and r.norms[2:].tolist() == [0.0, 0.0]


def test_accuracy_loss_curve_and_area_from_known_norms():
    r = AttackResult("x", torch.tensor([0.0, 1.0, 2.0, math.inf]), clean_accuracy=0.75, upto=4.0)
    assert r.accuracy_at(torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0])).tolist() == [
        0.75,
        0.75,
        0.5,
        0.5,
        0.25,
    ]
    # loss 0 on [0, 1), 0.25 on [1, 2), 0.5 on [2, 4]: mean (0 + 0.25 + 1.0) / 4
    assert r.area() == pytest.approx(0.3125, abs=2e-3)
    assert r.area(upto=2.0) == pytest.approx(0.125, abs=2e-3)


@pytest.fixture(scope="module")
def trained(small, golden):
    torch.manual_seed(0)
    bu = golden.LeNetFC()
    train(bu, small, epochs=4, progress=False)
    td = reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28))
    train(td, small, epochs=4, progress=False)
    return bu, td


def test_every_attack_gives_a_monotone_curve(trained, mnist, tmp_path):
    bu, _ = trained
    report = robustness(bu, mnist, samples=12, repeats=1, budget="fast", progress=False, name="BU")
    assert list(report.results) == list(ATTACKS)
    for name, r in report.results.items():
        _, loss = r.loss_curve()
        assert torch.all(loss[1:] >= loss[:-1]), name  # non-decreasing in the L2 budget
        assert loss[0] == 0 and loss[-1] <= r.clean_accuracy + 1e-9, name
        assert torch.all(r.norms >= 0), name
    # the noise attacks fool a trained LeNet within the image space
    assert torch.isfinite(report["gaussian_noise"].norms).float().mean() > 0.5
    path = plot_robustness({"BU": report}, tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert "gaussian_noise" in str(report)


def test_repeats_keep_the_best_perturbation_by_linf_or_l2(trained, mnist):
    bu, _ = trained
    once = [
        robustness(
            bu,
            mnist,
            attacks="salt_and_pepper",
            samples=16,
            repeats=1,
            seed=s,
            budget="fast",
            progress=False,
        )["salt_and_pepper"].norms
        for s in (0, 1, 2)
    ]
    kept = {
        select: robustness(
            bu,
            mnist,
            attacks="salt_and_pepper",
            samples=16,
            repeats=3,
            seed=0,
            budget="fast",
            progress=False,
            select=select,
        )["salt_and_pepper"].norms
        for select in ("l2", "linf")
    }
    assert torch.equal(kept["l2"], torch.minimum(torch.minimum(once[0], once[1]), once[2]))
    # by L-infinity (the reference code): one of the repeats' adversarials, its L2 plotted
    stacked = torch.stack(once)
    assert torch.all((stacked == kept["linf"]).any(0))
    assert torch.all(kept["l2"] <= kept["linf"])
    with pytest.raises(reverso.OptionError, match="select"):
        robustness(bu, mnist, attacks="salt_and_pepper", samples=4, select="l1", progress=False)


def test_per_branch_study_perturbs_only_the_chosen_levels(trained, mnist):
    _, td = trained
    pyramid = td.features.pyramid
    every = robustness(
        td, mnist, attacks="contrast", samples=16, levels=(0, 1, 2), budget="fast", progress=False
    )
    whole = robustness(td, mnist, attacks="contrast", samples=16, budget="fast", progress=False)
    assert torch.equal(every["contrast"].norms, whole["contrast"].norms)
    coarse = robustness(
        td, mnist, attacks="contrast", samples=16, levels=(2,), budget="fast", progress=False
    )
    assert coarse.levels == (2,) and "levels (2,)" in str(coarse)
    assert not torch.equal(coarse["contrast"].norms, whole["contrast"].norms)
    assert td.features.pyramid is pyramid  # the model itself is untouched


def test_mixed_pyramid_feeds_clean_levels_except_the_chosen(trained):
    from reverso.study.robustness import AttackedModel

    _, td = trained
    net = AttackedModel(td, lambda x: x, (1,)).eval()
    clean, noisy = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    net.clean = clean
    mixed = net.model.features.pyramid(noisy)
    expect_clean, expect_noisy = td.features.pyramid(clean), td.features.pyramid(noisy)
    assert torch.equal(mixed[0], expect_clean[0]) and torch.equal(mixed[2], expect_clean[2])
    assert torch.equal(mixed[1], expect_noisy[1])
    net.clean = clean[:2]
    with pytest.raises(reverso.OptionError, match="clean batch"):
        net(noisy)


def test_bad_arguments(trained, mnist):
    bu, td = trained
    with pytest.raises(reverso.OptionError, match="unknown attacks"):
        robustness(bu, mnist, attacks=["fgsm"])
    with pytest.raises(reverso.OptionError, match="pyramid"):
        robustness(bu, mnist, attacks="contrast", levels=(1,))
    with pytest.raises(reverso.OptionError, match="among the pyramid's levels"):
        robustness(td, mnist, attacks="contrast", levels=(7,))
    with pytest.raises(reverso.OptionError, match=r"\[0, 1\]"):
        robustness(bu, (torch.full((2, 1, 28, 28), 3.0), torch.zeros(2)), attacks="contrast")


def test_attacking_leaves_every_layer_in_its_own_mode(golden):
    model = golden.LeNetFC().train()
    model.c1.bn.eval()  # frozen by the user
    images, labels = torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        robustness(model, (images, labels), attacks="contrast", samples=4, progress=False)
    assert not [w for w in caught if "training mode" in str(w.message)]  # Foolbox's warning
    assert model.training and model.c2.bn.training and not model.c1.bn.training


def test_per_branch_study_feeds_the_full_nets_adversarials_to_every_subset(trained, mnist):
    """The reference code's study: adversarials found once against the full top-down net, fed
    to each of the 7 non-empty subsets of its 3 pyramid inputs (the others clean)."""
    _, td = trained
    report = reverso.per_branch(
        td, mnist, attacks="gaussian_noise", samples=16, repeats=1, budget="fast", progress=False
    )
    rows = report.accuracy["gaussian_noise"]
    assert list(rows) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert all(0 <= acc <= 1 for acc in rows.values())
    assert rows[(0, 1, 2)] <= report.clean_accuracy  # every input perturbed: the attack itself
    assert "(0, 1, 2)" in str(report)
    with pytest.raises(reverso.OptionError, match="pyramid"):
        reverso.per_branch(trained[0], mnist, samples=4)
