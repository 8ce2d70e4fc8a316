"""The command line's parser: one function per command. Imports no torch (``--help`` stays quick)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from reverso.cli.commands import (
    _attack,
    _convert,
    _demo,
    _erf,
    _gradcam,
    _summary,
    _train,
)
from reverso.names import ATTACKS, DATASETS, MODELS

MODEL_HELP = (
    f"a reference model ({', '.join(MODELS)}), a timm name, a .safetensors file saved by reverso, "
    "or package.module:factory"
)
FIGURE_HELP = "the figure to write: .png (300 dpi), .pdf or .svg (vector)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reverso",
        description="Compile bottom-up CNNs into top-down (coarse-to-fine) networks, and study them.",
        epilog="Run 'reverso COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _demo_command(sub)
    _convert_command(sub)
    _summary_command(sub)
    _erf_command(sub)
    _train_command(sub)
    _attack_command(sub)
    _gradcam_command(sub)
    return parser


def _demo_command(sub) -> None:
    demo = _command(
        sub, "demo", _demo,
        "the guided tour: convert, summarise, train BU vs TD on MNIST-5k, attack, Grad-CAM",
        "Convert the paper's LeNetFC and timm's resnet18 and print them side by side; train LeNetFC "
        "bottom-up and top-down on MNIST-5k; compare their robustness to Gaussian noise, their "
        "Grad-CAMs and receptive fields. Pictures go to --out. Under a minute on a 2-core CPU.",
    )  # fmt: skip
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("reverso-demo"),
        help="folder for the pictures (default: ./reverso-demo)",
    )
    demo.add_argument("--epochs", type=int, default=8, help="training epochs per model (default 8)")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")


def _convert_command(sub) -> None:
    convert = _command(
        sub, "convert", _convert,
        "convert a model (top-down, N-Jet or anti-aliased) and save it",
        "Convert MODEL and write the result with its rebuild recipe to a .safetensors file. Prints the "
        "bottom-up and converted networks side by side (or the generated code with --code).",
    )  # fmt: skip
    _model_arguments(convert)
    convert.add_argument(
        "-o", "--output", type=Path, required=True, help="the .safetensors file to write"
    )
    convert.add_argument(
        "--transform",
        choices=("topdown", "njet", "antialias"),
        default="topdown",
        help="top-down network (default), N-Jet convolutions, or anti-aliased downsampling",
    )
    _topdown_arguments(convert)
    convert.add_argument(
        "--filter-size", type=int, default=4, help="antialias: blur filter size (default 4)"
    )
    convert.add_argument("--code", action="store_true", help="print the generated forward code")


def _summary_command(sub) -> None:
    summary = _command(
        sub, "summary", _summary,
        "per-stage level, resolution, channels, parameters, FLOPs and activation memory",
        "Summarise MODEL stage by stage; with --topdown, next to the top-down network it compiles to.",
    )  # fmt: skip
    _model_arguments(summary)
    summary.add_argument(
        "--topdown", action="store_true", help="also convert and show side by side"
    )
    _topdown_arguments(summary)


def _erf_command(sub) -> None:
    erf = _command(
        sub, "erf", _erf,
        "theoretical and effective receptive fields, with a picture",
        "Print the theoretical receptive field of every conv (the top-down paper's rules) and measure "
        "the effective receptive field of the central unit of NODE (default: the last feature map) "
        "as the mean input gradient; write it as a PNG.",
    )  # fmt: skip
    _model_arguments(erf)
    erf.add_argument("--node", help="the graph node to measure (default: the last feature map)")
    erf.add_argument(
        "--topdown",
        action="store_true",
        help="also convert MODEL and show its ERF beside the bottom-up one, on one scale",
    )
    _topdown_arguments(erf)
    erf.add_argument(
        "--samples", type=int, default=16, help="random inputs to average over (default 16)"
    )
    _figure_argument(erf, "erf.png")


def _train_command(sub) -> None:
    train = _command(
        sub, "train", _train,
        "train with the paper's protocol (SGD, x0.1 at 50%%/80%%, 90/10 split, repeats)",
        "Train MODEL (converted first with --topdown) on a dataset with the top-down paper's protocol "
        "and save the trained model of the first run. Interrupted runs resume from --checkpoint.",
    )  # fmt: skip
    _model_arguments(train)
    _data_arguments(train)
    train.add_argument("--topdown", action="store_true", help="convert MODEL to top-down first")
    _topdown_arguments(train)
    train.add_argument("--epochs", type=int, default=30, help="epochs (default 30)")
    train.add_argument(
        "--repeats", type=int, default=1, help="runs with reshuffled splits (paper: 4)"
    )
    train.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    train.add_argument(
        "--lr", type=float, default=0.1, help="initial SGD learning rate (default 0.1)"
    )
    train.add_argument("--seed", type=int, default=0, help="seed of the first run (default 0)")
    train.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    train.add_argument(
        "--checkpoint", type=Path, help="folder for per-epoch checkpoints (resumable)"
    )
    train.add_argument(
        "-o", "--output", type=Path, help="save the trained model here (.safetensors)"
    )
    train.add_argument(
        "--plot", type=Path, help=f"training curves (accuracy and loss per epoch); {FIGURE_HELP}"
    )


def _attack_command(sub) -> None:
    attack = _command(
        sub, "attack", _attack,
        "adversarial robustness curves (Foolbox 3) of one or more models",
        "Attack the test set with the top-down paper's attacks and plot accuracy loss against the L2 "
        "norm of the perturbation, one panel per attack, one curve per model.",
    )  # fmt: skip
    _models_arguments(attack)
    _data_arguments(attack)
    attack.add_argument("--attacks", nargs="+", default=["gaussian_noise"], choices=list(ATTACKS), metavar="ATTACK",
                        help=f"attacks to run (default gaussian_noise); any of {', '.join(ATTACKS)}")  # fmt: skip
    attack.add_argument(
        "--samples", type=int, default=200, help="test images to attack (default 200)"
    )
    attack.add_argument(
        "--repeats", type=int, default=3, help="repeats of random attacks (default 3)"
    )
    attack.add_argument(
        "--budget",
        choices=("paper", "fast"),
        default="paper",
        help="attack steps: the paper's (default) or a tenth of them (fast, for a first look)",
    )
    attack.add_argument(
        "--levels", type=int, nargs="+", help="top-down only: perturb just these pyramid levels"
    )
    _figure_argument(attack, "robustness.png")


def _gradcam_command(sub) -> None:
    gradcam = _command(
        sub, "gradcam", _gradcam,
        "Grad-CAM pictures and the localisation protocol for one or more models",
        "Grad-CAM (default: each model's last conv) on test images; prints pixel precision and recall "
        "of the thresholded CAMs against the object masks (t=0.2) on images all models get right, "
        "and writes overlays.",
    )  # fmt: skip
    _models_arguments(gradcam)
    _data_arguments(gradcam)
    gradcam.add_argument("--layer", help="the layer (module name) to explain, for every model")
    gradcam.add_argument(
        "--samples", type=int, default=500, help="test images to evaluate (default 500)"
    )
    gradcam.add_argument("--count", type=int, default=6, help="images in the picture (default 6)")
    gradcam.add_argument(
        "-t", "--threshold", type=float, default=0.2, help="object and CAM threshold"
    )
    _figure_argument(gradcam, "gradcam.png")


def _command(sub, name, run, help_, description):
    p = sub.add_parser(name, help=help_, description=textwrap.fill(description, 90))
    p.set_defaults(run=run)
    return p


def _figure_argument(p, default: str) -> None:
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path(default),
        help=f"{FIGURE_HELP} (default {default})",
    )


def _model_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "--input-size",
        type=int,
        nargs=3,
        metavar=("C", "H", "W"),
        help="input size (default: the model's)",
    )
    p.add_argument("--num-classes", type=int, help="classes of a freshly built model")
    _trust_argument(p)


def _models_arguments(p) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP)
    _trust_argument(p)


def _trust_argument(p) -> None:
    p.add_argument(
        "--trust", nargs="*", default=[], help="packages whose factories saved files may call"
    )


def _topdown_arguments(p) -> None:
    p.add_argument(
        "--arrangement", default="td", help="td, uni, rev or a uniform width (default td)"
    )
    p.add_argument(
        "--merge",
        default="add_concat",
        choices=("add", "concat", "add_concat"),
        help="how a coarse path meets the finer image's branch (default add_concat, the paper's)",
    )
    p.add_argument(
        "--upsample",
        default="nearest",
        choices=("nearest", "bilinear", "blur"),
        help="interpolation before each upsampled conv (default nearest, the paper's)",
    )
    p.add_argument(
        "--pyramid",
        default="gaussian",
        choices=("gaussian", "binomial", "cascade"),
        help="how the image pyramid is blurred before subsampling (default gaussian)",
    )
    p.add_argument("--njet", action="store_true", help="top-down with N-Jet convs")


def _data_arguments(p) -> None:
    p.add_argument(
        "--data", default="mnist5k", choices=list(DATASETS), help="dataset (default mnist5k)"
    )
    p.add_argument(
        "--root",
        type=Path,
        help="folder of a local dataset copy (mnist, fashion_mnist, cifar10, image_folder)",
    )
    p.add_argument("--size", type=int, help="resize images to SIZE (digits, image_folder)")
