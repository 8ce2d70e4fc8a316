"""The study tools' figures explain themselves: titles in words, labelled axes with units, colour
bars, true and predicted classes, one definition of "area"; PNG at 300 dpi, PDF and SVG on request.

SVG keeps text as text here (``svg.fonttype: none``), so the tests read what a reader would.
"""

import re

import matplotlib
import pytest
import torch
from torch import nn

import reverso
from reverso.study.gradcam import save_overlays
from reverso.study.plotting import save_figure
from reverso.study.robustness import AttackResult, RobustnessReport
from reverso.study.train import Run, TrainResult


def text_of(svg_path) -> str:
    return " ".join(re.findall(r">([^<>]+)</text>", svg_path.read_text()))


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    bu = reverso.models.create("lenet_fc").eval()
    return {"bottom-up LeNetFC": bu, "top-down LeNetFC": reverso.topdown(bu).eval()}


def test_erfs_side_by_side_on_one_scale(nets, tmp_path):
    erfs = {name: reverso.erf(net, (1, 28, 28), samples=2, name=name) for name, net in nets.items()}
    path = reverso.plot_erfs(erfs, tmp_path / "erf.svg")
    text = text_of(path)
    for words in (
        "bottom-up LeNetFC",
        "top-down LeNetFC",
        "last feature map",
        "x (px)",
        "y (px)",
        "share of the input gradient per pixel (%)",
        "cyan square",
        "95%",
    ):
        assert words in text, words
    assert "_5_0" not in text  # no internal node names in titles
    assert f"ERF {erfs['bottom-up LeNetFC'].size}x{erfs['bottom-up LeNetFC'].size} px" in text
    assert text.count("share of the input gradient") == 1  # one colour bar: one shared scale


def test_gradcam_rows_say_the_true_and_predicted_class(nets, tmp_path):
    data = reverso.data.load("mnist5k")
    images, labels = data.test_tensors(40)
    cams = {name: reverso.gradcam(net, images[:3]) for name, net in nets.items()}
    path = save_overlays(
        images[:3],
        cams,
        tmp_path / "cams.svg",
        labels=labels[:3],
        classes=data.classes,
        title="Grad-CAM on MNIST-5k",
    )
    text = text_of(path)
    assert "Grad-CAM on MNIST-5k" in text and "input" in text
    assert text.count("true: ") == 3 and text.count("predicted: ") == 6
    assert "last conv (1x1)" in text and "Grad-CAM (1 = the map's maximum)" in text
    assert "head.fc" not in text  # the layer in words, not its module path


def test_robustness_legend_uses_the_tables_area(tmp_path):
    norms = torch.tensor([0.0, 1.0, 2.0, float("inf")])
    report = RobustnessReport(
        "BU", {"gaussian_noise": AttackResult("gaussian_noise", norms, 0.75, 28.0)}
    )
    path = reverso.plot_robustness(
        {"BU": report}, tmp_path / "rob.svg", title="Robustness on MNIST-5k"
    )
    text = text_of(path)
    area = report["gaussian_noise"].area()  # the table's: over the whole image space
    assert f"area {area:.3f}" in text and f"{area:.4f}" in str(report)
    assert "additive Gaussian noise" in text and "gaussian_noise" not in text
    assert "L2 norm of the perturbation" in text and "accuracy loss" in text
    assert "BU (clean accuracy 75.0%)" in text and "[0, 28]" in text


def test_training_curves_have_whole_epochs_and_a_title(tmp_path):
    runs = [
        Run(
            seed=s,
            history=[
                {"epoch": e, "val_accuracy": 0.5 + 0.1 * e + 0.01 * s, "loss": 1.0 / e}
                for e in (1, 2, 3)
            ],
        )
        for s in (0, 1)
    ]
    path = reverso.plot_training(
        {"TD LeNetFC": TrainResult(runs, [nn.Identity()] * 2)},
        tmp_path / "t.svg",
        title="Training TD LeNetFC on MNIST-5k",
    )
    text = text_of(path)
    assert "Training TD LeNetFC on MNIST-5k" in text and "TD LeNetFC, 2 runs" in text
    assert "epoch" in text and "validation accuracy" in text and "training loss" in text
    ticks = re.findall(r"(?<![\d.])(\d+(?:\.\d+)?)(?![\d.%])", text)
    assert "1.5" not in ticks and "2.5" not in ticks  # no fractional epochs


@pytest.mark.parametrize(
    ("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")]
)
def test_raster_and_vector_formats(tmp_path, suffix, magic):
    from reverso.study.plotting import new_figure

    fig, axes = new_figure(size=(3.4, 2.0))
    axes[0, 0].plot([0, 1], [0, 1])
    path = save_figure(fig, tmp_path / f"f{suffix}")
    assert path.read_bytes()[: len(magic)] == magic
    if suffix == ".png":
        from PIL import Image

        assert Image.open(path).info["dpi"][0] == pytest.approx(300, abs=1)


def test_an_unknown_figure_format_is_refused_before_any_work(tmp_path):
    with pytest.raises(reverso.OptionError, match=r"\.png .*\.pdf or \.svg"):
        save_figure(None, tmp_path / "figure.jpg")


def test_figures_leave_the_users_matplotlib_settings_alone(tmp_path):
    before = dict(matplotlib.rcParams)
    test_raster_and_vector_formats(tmp_path, ".png", b"\x89PNG")
    assert dict(matplotlib.rcParams) == before


def test_per_branch_bars_name_the_subsets_and_attacks(tmp_path):
    from reverso.study.branches import BranchReport
    from reverso.study.figures import plot_branches

    subsets = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    report = BranchReport(0.95, {"gaussian_noise": {s: 0.9 - 0.1 * len(s) for s in subsets}})
    text = text_of(plot_branches(report, tmp_path / "b.svg"))
    assert "additive Gaussian noise" in text and "0+1+2" in text and "clean" in text
    assert "pyramid levels fed the adversarials" in text and "accuracy" in text
    with pytest.raises(reverso.OptionError):
        plot_branches(BranchReport(0.9), tmp_path / "none.svg")
