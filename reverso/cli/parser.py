"""The command line's parser: one function per command. Imports no torch (``--help`` stays quick)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from reverso.cli.checks import CLASSES, SIDE, count, number
from reverso.cli.commands import (
    _attack,
    _convert,
    _demo,
    _erf,
    _gradcam,
    _summary,
    _train,
)
from reverso.cli.flags import add_option_flags, field_default
from reverso.names import ATTACKS, DATASETS, MODELS
from reverso.options import (
    TRANSFORM_OPTIONS,
    AntialiasOptions,
    FramesOptions,
    SteerableOptions,
    TopDownOptions,
)

MODEL_HELP = (
    f"a reference model ({', '.join(MODELS)}), a timm name, a .safetensors file saved by reverso, "
    "or package.module:factory"
)
FIGURE_HELP = "the figure to write: .png (300 dpi), .pdf or .svg (vector)"


def _demo_arguments(p) -> None:
    p.add_argument(
        "--out",
        type=Path,
        default=Path("reverso-demo"),
        help="folder for the pictures (default: ./reverso-demo)",
    )
    p.add_argument(
        "--epochs", type=count(), default=8, help="training epochs per model (default 8)"
    )
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")


def _convert_arguments(p) -> None:
    _model_arguments(p)
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="the .safetensors file to write"
    )
    _force_argument(p)
    p.add_argument(
        "--transform",
        choices=CLI_TRANSFORMS,
        default="topdown",
        help="top-down network (default), N-Jet convolutions, anti-aliased downsampling, frame "
        "convolutions, dynamic steerable convs or blocks, or a hierarchical attribute CNN",
    )
    add_option_flags(p, FramesOptions, ("frame",), "frames: ")
    add_option_flags(p, SteerableOptions, ("unit",), "steerable: ")
    _topdown_arguments(p)
    add_option_flags(p, AntialiasOptions, ("filter_size", "variant"), "antialias: ")
    p.add_argument(
        "--official-weights",
        type=Path,
        help="antialias: an official antialiased-cnns checkpoint (.pth) to load",
    )
    p.add_argument("--code", action="store_true", help="print the generated forward code")


def _summary_arguments(p) -> None:
    _model_arguments(p)
    p.add_argument("--topdown", action="store_true", help="also convert and show side by side")
    _topdown_arguments(p)


def _erf_arguments(p) -> None:
    _model_arguments(p)
    p.add_argument("--node", help="the graph node to measure (default: the last feature map)")
    p.add_argument(
        "--topdown",
        action="store_true",
        help="also convert MODEL and show its ERF beside the bottom-up one, on one scale",
    )
    _topdown_arguments(p)
    p.add_argument(
        "--samples", type=count(), default=16, help="random inputs to average over (default 16)"
    )
    _figure_argument(p, "p.png")


def _train_arguments(p) -> None:
    _model_arguments(p)
    _data_arguments(p)
    p.add_argument("--topdown", action="store_true", help="convert MODEL to top-down first")
    _topdown_arguments(p)
    p.add_argument(
        "--recipe", help="the reference code's settings: mnist, fashion_mnist, cifar10, cifar10_aug"
    )
    p.add_argument("--epochs", type=count(), help="epochs (default: the recipe's, else 30)")
    p.add_argument(
        "--repeats", type=count(), default=1, help="runs with reshuffled splits (paper: 4)"
    )
    p.add_argument(
        "--batch-size", type=count(), help="batch size (default: the recipe's, else 128)"
    )
    p.add_argument(
        "--lr", type=number(), help="initial SGD learning rate (default: recipe's, else 0.1)"
    )
    p.add_argument("--keras-init", action="store_true", help="Keras' initialisation (glorot/he)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first run (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--checkpoint", type=Path, help="folder for per-epoch checkpoints (resumable)")
    p.add_argument("-o", "--output", type=Path, help="save the trained model here (.safetensors)")
    _force_argument(p)
    p.add_argument(
        "--plot", type=Path, help=f"training curves (accuracy and loss per epoch); {FIGURE_HELP}"
    )


def _attack_arguments(p) -> None:
    _models_arguments(p)
    _data_arguments(p)
    p.add_argument(
        "--attacks",
        nargs="+",
        default=["gaussian_noise"],
        choices=list(ATTACKS),
        metavar="ATTACK",
        help=f"attacks to run (default gaussian_noise); any of {', '.join(ATTACKS)}",
    )
    p.add_argument(
        "--samples", type=count(), default=200, help="test images to attack (default 200)"
    )
    p.add_argument(
        "--repeats", type=count(), default=3, help="repeats of random attacks (default 3)"
    )
    p.add_argument(
        "--budget",
        choices=("paper", "fast"),
        default="paper",
        help="attack steps: the paper's (default) or a tenth of them (fast, for a first look)",
    )
    p.add_argument(
        "--levels",
        type=count(0),
        nargs="+",
        help="top-down only: perturb just these pyramid levels",
    )
    _figure_argument(p, "robustness.png")


def _gradcam_arguments(p) -> None:
    _models_arguments(p)
    _data_arguments(p)
    p.add_argument("--layer", help="the layer (module name) to explain, for every model")
    p.add_argument(
        "--samples", type=count(), default=500, help="test images to evaluate (default 500)"
    )
    p.add_argument("--count", type=count(), default=6, help="images in the picture (default 6)")
    p.add_argument(
        "-t", "--threshold", type=number(0, 1), default=0.2, help="object and CAM threshold"
    )
    _figure_argument(p, "p.png")


#: command -> (what runs it, one-line help, description, the function adding its arguments)
COMMANDS = {
    "demo": (
        _demo,
            "the guided tour: convert, summarise, train BU vs TD on MNIST-5k, attack, Grad-CAM",
            "Convert the paper's LeNetFC and timm's resnet18 and print them side by side; train LeNetFC "
            "bottom-up and top-down on MNIST-5k; compare their robustness to Gaussian noise, their "
            "Grad-CAMs and receptive fields. Pictures go to --out. Under a minute on a 2-core CPU.",
        _demo_arguments,
    ),
    "convert": (
        _convert,
            "convert a model (top-down, N-Jet or anti-aliased) and save it",
            "Convert MODEL and write the result with its rebuild recipe to a .safetensors file. Prints the "
            "bottom-up and converted networks side by side (or the generated code with --code).",
        _convert_arguments,
    ),
    "summary": (
        _summary,
            "per-stage level, resolution, channels, parameters, FLOPs and activation memory",
            "Summarise MODEL stage by stage; with --topdown, next to the top-down network it compiles to.",
        _summary_arguments,
    ),
    "erf": (
        _erf,
            "theoretical and effective receptive fields, with a picture",
            "Print the theoretical receptive field of every conv (the top-down paper's rules) and measure "
            "the effective receptive field of the central unit of NODE (default: the last feature map) "
            "as the mean input gradient; write it as a PNG.",
        _erf_arguments,
    ),
    "train": (
        _train,
            "train with the paper's protocol (SGD, x0.1 at 50%%/80%%, 90/10 split, repeats)",
            "Train MODEL (converted first with --topdown) on a dataset with the top-down paper's protocol "
            "and save the trained model of the first run. Interrupted runs resume from --checkpoint.",
        _train_arguments,
    ),
    "attack": (
        _attack,
            "adversarial robustness curves (Foolbox 3) of one or more models",
            "Attack the test set with the top-down paper's attacks and plot accuracy loss against the L2 "
            "norm of the perturbation, one panel per attack, one curve per model.",
        _attack_arguments,
    ),
    "gradcam": (
        _gradcam,
            "Grad-CAM pictures and the localisation protocol for one or more models",
            "Grad-CAM (default: each model's last conv) on test images; prints pixel precision and recall "
            "of the thresholded CAMs against the object masks (t=0.2) on images all models get right, "
            "and writes overlays.",
        _gradcam_arguments,
    ),
}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reverso",
        description="Compile bottom-up CNNs into top-down (coarse-to-fine) networks, and study them.",
        epilog="Run 'reverso COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (run, help_, description, add_arguments) in COMMANDS.items():
        add_arguments(_command(sub, name, run, help_, description))
    return parser


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
    _force_argument(p)


def _force_argument(p) -> None:
    p.add_argument("--force", action="store_true", help="overwrite the -o file if it exists")


def _model_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "--input-size",
        type=SIDE,
        nargs=3,
        metavar=("C", "H", "W"),
        help="input size (default: the model's)",
    )
    p.add_argument("--num-classes", type=CLASSES, help="classes of a freshly built model")
    _trust_argument(p)


def _models_arguments(p) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP)
    _trust_argument(p)


def _trust_argument(p) -> None:
    p.add_argument(
        "--trust", nargs="*", default=[], help="packages whose factories saved files may call"
    )


#: the transforms ``reverso convert`` offers (those of a model alone; checkpoint and reversible
#: transform a converted network)
CLI_TRANSFORMS = tuple(
    t for t in TRANSFORM_OPTIONS if t not in ("checkpoint", "reversible", "none")
)


def _topdown_arguments(p) -> None:
    default = field_default(TopDownOptions, "arrangement")
    p.add_argument(
        "--arrangement",
        default=default,
        help=f"td, uni, rev or a uniform width (default {default})",
    )
    add_option_flags(p, TopDownOptions, ("merge", "upsample", "pyramid", "merge_width", "memory"))
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
    p.add_argument("--size", type=SIDE, help="resize images to SIZE (digits, image_folder)")
