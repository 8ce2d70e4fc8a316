"""The README's main job (``reverso demo``): a guided tour on built-in defaults.

1. Convert the paper's LeNetFC and timm's resnet18; print bottom-up and top-down side by side
   (level, resolution, channels, parameters, FLOPs, activation memory) and check the top-down
   properties.
2. Train LeNetFC bottom-up and top-down on MNIST-5k (the paper's protocol, few epochs).
   Their training curves (training.png).
3. Attack both with additive Gaussian noise: accuracy loss against L2 (robustness.png).
4. Grad-CAM of both on test digits, with the localisation protocol (gradcam.png).
5. Their receptive fields: theoretical per conv, and the effective ones measured, side by side on
   one scale (erf.png).

Everything runs on the CPU in under a minute and writes its figures to ``out``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from reverso import models
from reverso.convert.topdown import topdown
from reverso.study.data import mnist5k_data
from reverso.study.erf import erf
from reverso.study.figures import plot_erfs, plot_robustness, plot_training
from reverso.study.gradcam import compare_localization, save_overlays
from reverso.study.receptive import receptive_fields
from reverso.study.robustness import robustness
from reverso.study.summary import side_by_side, summary
from reverso.study.train import reinitialize, train
from reverso.testing.properties import check_topdown

DEMO_MODELS = (("lenet_fc", (1, 28, 28)), ("resnet18", (3, 224, 224)))
NAMES = {"BU": "bottom-up LeNetFC", "TD": "top-down LeNetFC"}
TITLE = "LeNetFC bottom-up and top-down on MNIST-5k"


def run_demo(
    out: str | Path = "reverso-demo", *, epochs: int = 8, quick: bool = False, print_fn=print
) -> dict:
    """Run the tour; returns what it measured (used by the tests)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    began = time.perf_counter()
    results: dict = {"converted": _convert(quick, print_fn)}
    results["checked"] = all(r["checked"] for r in results["converted"].values())

    print_fn("\n== 2. train LeNetFC bottom-up and top-down on MNIST-5k ==")
    data = mnist5k_data()
    nets = {"BU": models.create("lenet_fc")}
    nets["TD"] = topdown(models.create("lenet_fc"), input_size=(1, 28, 28))
    for net in nets.values():  # the same seeded start for both, whatever built them
        reinitialize(net, seed=0)
    results["accuracy"], picture = _train(nets, data, 2 if quick else epochs, out, print_fn)
    pictures = [picture]
    results["robustness"], picture = _robustness(nets, data, 60 if quick else 300, out, print_fn)
    pictures.append(picture)
    results["localization"], picture = _gradcam(nets, data, 100 if quick else 500, out, print_fn)
    pictures.append(picture)
    pictures.append(_receptive_fields(nets, 4 if quick else 16, out, print_fn))
    results["pictures"] = pictures

    print_fn(f"\ndone in {time.perf_counter() - began:.0f}s; pictures in {out.resolve()}:")
    for p in pictures:
        print_fn(f"  {p.name}")
    return results


def _convert(quick: bool, print_fn) -> dict:
    print_fn("== 1. convert ==")
    converted = {}
    for name, input_size in DEMO_MODELS[: 1 if quick else 2]:
        start = time.perf_counter()
        model = models.create(name) if name in models.MODELS else _timm(name)
        td = topdown(model, input_size=input_size)
        report = td.report  # the compiler's analysis of the bottom-up net
        print_fn(
            f"\n{name} at {input_size[1]}x{input_size[2]}: {len(report.groups)} groups, "
            f"{len(report.transitions)} transitions, converted in {time.perf_counter() - start:.2f}s"
        )
        print_fn(side_by_side(summary(model, input_size, name=name), summary(td, name=name)))
        checked = check_topdown(model, input_size) is not None
        print_fn(
            f"properties: {'all hold' if checked else 'conversion refused'} (output shape, coarse "
            "entry, resolution never decreases, one merge per transition, every unit once, "
            "train/eval and other input sizes)"
        )
        converted[name] = {"bu": report, "td": td, "checked": checked}
    return converted


def _train(nets: dict, data, epochs: int, out: Path, print_fn) -> tuple[dict, Path]:
    accuracy, trained = {}, {}
    for label, net in nets.items():
        torch.manual_seed(0)
        trained[NAMES[label]] = train(net, data, epochs=epochs, name=f"{label} LeNetFC")
        run = trained[NAMES[label]].runs[0]
        accuracy[label] = run.test_accuracy
        print_fn(
            f"{label}: test accuracy {run.test_accuracy:.2%} after {epochs} epochs ({run.seconds:.0f}s)"
        )
    return accuracy, plot_training(trained, out / "training.png", title=f"Training {TITLE}")


def _robustness(nets: dict, data, samples: int, out: Path, print_fn) -> tuple[dict, Path]:
    print_fn("\n== 3. robustness to additive Gaussian noise (Foolbox 3) ==")
    reports = {
        label: robustness(
            net, data, attacks="gaussian_noise", samples=samples, budget="fast", name=NAMES[label]
        )
        for label, net in nets.items()
    }
    for label, report in reports.items():
        r = report["gaussian_noise"]
        losses = ", ".join(
            f"{float(r.clean_accuracy - r.accuracy_at(eps)):.1%} at L2={eps}" for eps in (1, 2, 4)
        )
        print_fn(f"{label}: accuracy loss {losses}; median smallest L2 {r.median_norm:.2f}")
    title = f"Robustness of {TITLE} ({samples} test digits)"
    named = {NAMES[k]: r for k, r in reports.items()}
    return reports, plot_robustness(named, out / "robustness.png", title=title)


def _gradcam(nets: dict, data, samples: int, out: Path, print_fn) -> tuple[dict, Path]:
    print_fn("\n== 4. Grad-CAM on the last conv, localisation on digits both get right ==")
    images, labels = data.test_tensors(samples)
    loc, cams, index = compare_localization(nets, images, labels)
    for label, result in loc.items():
        print_fn(f"{label}: {cams[label].layer}: {result}")
    title = "Grad-CAM of LeNetFC bottom-up and top-down on MNIST-5k test digits"
    picture = save_overlays(
        images[index],
        {NAMES[k]: c for k, c in cams.items()},
        out / "gradcam.png",
        labels=labels[index],
        classes=data.classes,
        title=title,
    )
    return loc, picture


def _receptive_fields(nets: dict, samples: int, out: Path, print_fn) -> Path:
    print_fn("\n== 5. receptive fields ==")
    measured = {}
    for label, net in nets.items():
        convs = receptive_fields(net, (1, 28, 28)).convs()
        measured[NAMES[label]] = erf(net, (1, 28, 28), samples=samples, name=NAMES[label])
        size = measured[NAMES[label]].size
        print_fn(
            f"{label}: first conv sees {convs[0][1].max:g} px, last conv {convs[-1][1].max:g} px; "
            f"effective receptive field {size}x{size} px"
        )
    return plot_erfs(measured, out / "erf.png")


def _timm(name: str):
    import timm

    return timm.create_model(name, pretrained=False)
