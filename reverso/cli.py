"""The ``reverso`` command line: ``reverso COMMAND --help`` explains each command.

MODEL arguments accept a reference model of the papers (``lenet_fc``, ``nin_light``, ``nin``,
``resnet32_preact``, ``resnet18_imagenette``), a timm model name (built untrained), a file written
by ``reverso convert`` / ``reverso train`` (``*.safetensors``) or ``package.module:factory``.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

from .names import ATTACKS, DATASETS, MODELS  # torch-free: --help never imports torch

MODEL_HELP = (
    f"a reference model ({', '.join(MODELS)}), a timm name, a .safetensors file saved by reverso, "
    "or package.module:factory"
)
FIGURE_HELP = "the figure to write: .png (300 dpi), .pdf or .svg (vector)"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import ReversoError

    try:
        return args.run(args)
    except ReversoError as err:
        print(f"reverso {args.command}: {in_flags(str(err))}", file=sys.stderr)
        return 1


#: Python keyword arguments named in error messages -> the command line's flags
_FLAGS = {
    "trust": "--trust",
    "layer": "--layer",
    "node": "--node",
    "num_classes": "--num-classes",
    "root": "--root",
}
_SIZE_WORDS = {"channels": "C", "height": "H", "width": "W"}


def in_flags(message: str) -> str:
    """An error message's Python advice in command-line words: ``input_size=(3, 64, 64)`` becomes
    ``--input-size 3 64 64``, ``trust=['pkg'] to reverso.load`` becomes ``--trust pkg``."""

    def size(match: re.Match) -> str:
        parts = [p.strip() for p in match.group(1).split(",")]
        return "--input-size " + " ".join(_SIZE_WORDS.get(p, p) for p in parts)

    def listed(match: re.Match) -> str:
        names = [n.strip().strip("'\"") for n in match.group(2).split(",")]
        return f"{_FLAGS[match.group(1)]} {' '.join(names)}"

    message = re.sub(r"input_size=\(([^)]*)\)", size, message)
    message = re.sub(r"\b(trust)=\[([^\]]*)\](?: to reverso\.load)?", listed, message)
    message = re.sub(r"\broot=(?=[^\s.,;]+)", "--root ", message)
    return re.sub(
        r"\b(layer|node|num_classes)=(?=[\s'\"]|$)", lambda m: _FLAGS[m.group(1)], message
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reverso",
        description="Compile bottom-up CNNs into top-down (coarse-to-fine) networks, and study them.",
        epilog="Run 'reverso COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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


# --- shared helpers ------------------------------------------------------------------------------


def _load_model(spec: str, args):
    """A module from a MODEL argument (see MODEL_HELP)."""
    from . import models
    from .errors import OptionError
    from .provenance import remember_source
    from .saving import load

    kwargs = {"num_classes": args.num_classes} if getattr(args, "num_classes", None) else {}
    if spec.endswith(".safetensors"):
        return load(spec, trust=args.trust)
    if spec in MODELS:
        return models.create(spec, **kwargs)
    if ":" in spec:
        from .saving import _trusted

        package = spec.split(".")[0].split(":")[0]  # named on the command line: trusted
        model = _trusted(spec, (package,), Path(spec))(**kwargs)
        return remember_source(model, spec, **kwargs)
    import timm

    if timm.is_model(spec):
        return timm.create_model(spec, pretrained=False, **kwargs)
    from .tracing import did_you_mean

    raise OptionError(
        f"MODEL {spec!r} is not a reference model, a timm name, a .safetensors file or "
        f"package.module:factory.{did_you_mean(spec, extra=MODELS)}"
    )


def _input_size(model, args):
    from .tracing import resolve_input_size

    return resolve_input_size(model, tuple(args.input_size) if args.input_size else None)


def _topdown_options(args) -> dict:
    arrangement = int(args.arrangement) if str(args.arrangement).isdigit() else args.arrangement
    return {
        "arrangement": arrangement,
        "merge": args.merge,
        "upsample": args.upsample,
        "pyramid": args.pyramid,
        "njet": args.njet,
    }


def _data(args):
    from .data import load

    kwargs = {"size": args.size} if args.size else {}
    return load(args.data, args.root, **kwargs)


def _named(specs: list[str]) -> list[str]:
    """Short labels for the models of a comparison."""
    return [Path(s).stem if s.endswith(".safetensors") else _title(s) for s in specs]


def _title(name: str) -> str:
    from .names import title

    return title(name)


# --- commands ------------------------------------------------------------------------------------


def _demo(args) -> int:
    from .demo import run_demo

    results = run_demo(out=args.out, epochs=args.epochs, quick=args.quick)
    return 0 if results["checked"] else 1


def _convert(args) -> int:
    from .saving import save
    from .summary import side_by_side, summary
    from .topdown import topdown
    from .transforms import antialias, njet

    model = _load_model(args.model, args)
    size = _input_size(model, args)
    if args.transform == "topdown":
        converted = topdown(model, input_size=size, **_topdown_options(args))
        print(
            converted.code
            if args.code
            else side_by_side(summary(model, size, name=args.model), summary(converted))
        )
    elif args.transform == "njet":
        converted = njet(model, input_size=size)
        print(f"{len(converted.njet_report.layers)} convs became N-Jet convs")
    else:
        converted = antialias(model, input_size=size, filter_size=args.filter_size)
        print(
            converted.code
            if args.code
            else f"anti-aliased: {', '.join(converted.antialiased) or 'nothing'}"
        )
    path = save(converted, args.output, input_size=size)
    print(f"saved to {path.resolve()}")
    return 0


def _summary(args) -> int:
    from .network import TopDownNet
    from .summary import side_by_side, summary
    from .topdown import topdown

    model = _load_model(args.model, args)
    if isinstance(model, TopDownNet):
        print(summary(model))
        return 0
    size = _input_size(model, args)
    bu = summary(model, size, name=args.model)
    if args.topdown:
        print(side_by_side(bu, summary(topdown(model, input_size=size, **_topdown_options(args)))))
    else:
        print(bu)
    return 0


def _erf(args) -> int:
    from .erf import erf, plot_erfs
    from .plotting import check_figure_path
    from .receptive import receptive_fields
    from .topdown import topdown

    check_figure_path(args.output)
    model = _load_model(args.model, args)
    size = _input_size(model, args)
    nets = {_title(args.model): model}
    if args.topdown:
        nets = {f"bottom-up {_title(args.model)}": model}
        nets[f"top-down {_title(args.model)}"] = topdown(
            model, input_size=size, **_topdown_options(args)
        )
    measured = {}
    for label, net in nets.items():
        rf = receptive_fields(net, size)
        print(f"== {label}")
        for name, r in rf.convs():
            print(f"{name:<40} receptive field {r.min:g}..{r.max:g} px, jump {r.jump:g}")
        result = erf(net, size, node=args.node, samples=args.samples, name=label)
        theory = rf[result.node] if result.node in rf.rows else None
        bound = f" (theoretical receptive field {theory.max:g} px)" if theory else ""
        print(f"effective receptive field of {result.node}: {result.size}x{result.size} px hold "
              f"{result.mass:.0%} of the gradient{bound}")  # fmt: skip
        measured[label] = result
    print(f"picture: {plot_erfs(measured, args.output).resolve()}")
    return 0


def _train(args) -> int:
    from .plotting import check_figure_path
    from .saving import save
    from .topdown import topdown
    from .train import plot_training, train

    if args.plot:
        check_figure_path(args.plot)
    model = _load_model(args.model, args)
    data = _data(args)
    label = _title(args.model)
    if args.topdown:
        model = topdown(model, input_size=data.input_size, **_topdown_options(args))
        label = f"top-down {label}"
    result = train(model, data, epochs=args.epochs, repeats=args.repeats, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed, device=args.device, checkpoint=args.checkpoint)  # fmt: skip
    for i, run in enumerate(result.runs):
        print(f"run {i + 1}: test accuracy {run.test_accuracy:.2%} ({run.seconds:.0f}s)")
    print(result)
    if args.plot:
        title = f"Training {label} on {_title(args.data)}"
        print(f"picture: {plot_training({label: result}, args.plot, title=title).resolve()}")
    if args.output:
        print(
            f"saved to {save(result.model.cpu(), args.output, input_size=data.input_size).resolve()}"
        )
    return 0


def _attack(args) -> int:
    from .plotting import check_figure_path
    from .robustness import plot_robustness, robustness

    check_figure_path(args.output)
    data = _data(args)
    reports = {}
    for spec, label in zip(args.models, _named(args.models), strict=True):
        model = _load_model(spec, args)
        report = robustness(model, data, attacks=args.attacks, repeats=args.repeats, samples=args.samples,
                            budget=args.budget, levels=args.levels, name=label)  # fmt: skip
        print(report)
        reports[label] = report
    title = f"Robustness on {_title(args.data)} ({args.samples} test images)"
    print(f"picture: {plot_robustness(reports, args.output, title=title).resolve()}")
    return 0


def _gradcam(args) -> int:
    from .gradcam import compare_localization, save_overlays
    from .plotting import check_figure_path

    check_figure_path(args.output)
    data = _data(args)
    images, labels = data.test_tensors(args.samples)
    models = {
        label: _load_model(spec, args)
        for spec, label in zip(args.models, _named(args.models), strict=True)
    }
    layers = dict.fromkeys(models, args.layer) if args.layer else None
    results, cams, index = compare_localization(models, images, labels, layers=layers, t=args.threshold,
                                                cam_threshold=args.threshold, normalize=data.normalize)  # fmt: skip
    for label, loc in results.items():
        print(f"{label:<20} layer {cams[label].layer:<28} {loc}")
    picture = save_overlays(images[index], cams, args.output, count=args.count, labels=labels[index],
                            classes=data.classes, title=f"Grad-CAM on {_title(args.data)} test images")  # fmt: skip
    print(f"picture: {picture.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
