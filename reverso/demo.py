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

from . import models
from .data import mnist5k_data
from .erf import erf, plot_erfs
from .gradcam import compare_localization, save_overlays
from .receptive import receptive_fields
from .robustness import plot_robustness, robustness
from .summary import side_by_side, summary
from .testing.properties import check_topdown
from .topdown import topdown
from .train import plot_training, train

DEMO_MODELS = (("lenet_fc", (1, 28, 28)), ("resnet18", (3, 224, 224)))


def run_demo(
    out: str | Path = "reverso-demo", *, epochs: int = 8, quick: bool = False, print_fn=print
) -> dict:
    """Run the tour; returns what it measured (used by the tests)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    results: dict = {"converted": {}}
    began = time.perf_counter()

    print_fn("== 1. convert ==")
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
        results["converted"][name] = {"bu": report, "td": td, "checked": checked}
    results["checked"] = all(r["checked"] for r in results["converted"].values())

    print_fn("\n== 2. train LeNetFC bottom-up and top-down on MNIST-5k ==")
    data = mnist5k_data()
    epochs = 2 if quick else epochs
    nets = {"BU": models.create("lenet_fc")}
    nets["TD"] = topdown(models.create("lenet_fc"), input_size=(1, 28, 28))
    names = {"BU": "bottom-up LeNetFC", "TD": "top-down LeNetFC"}
    accuracy, trained = {}, {}
    for label, net in nets.items():
        torch.manual_seed(0)
        trained[names[label]] = train(net, data, epochs=epochs, name=f"{label} LeNetFC")
        run = trained[names[label]].runs[0]
        accuracy[label] = run.test_accuracy
        print_fn(
            f"{label}: test accuracy {run.test_accuracy:.2%} after {epochs} epochs ({run.seconds:.0f}s)"
        )
    results["accuracy"] = accuracy
    title = "LeNetFC bottom-up and top-down on MNIST-5k"
    pictures = [plot_training(trained, out / "training.png", title=f"Training {title}")]

    print_fn("\n== 3. robustness to additive Gaussian noise (Foolbox 3) ==")
    samples = 60 if quick else 300
    reports = {
        label: robustness(
            net, data, attacks="gaussian_noise", samples=samples, budget="fast", name=names[label]
        )
        for label, net in nets.items()
    }
    for label, report in reports.items():
        r = report["gaussian_noise"]
        losses = ", ".join(
            f"{float(r.clean_accuracy - r.accuracy_at(eps)):.1%} at L2={eps}" for eps in (1, 2, 4)
        )
        print_fn(f"{label}: accuracy loss {losses}; median smallest L2 {r.median_norm:.2f}")
    robust_title = f"Robustness of {title} ({samples} test digits)"
    pictures.append(
        plot_robustness(
            {names[k]: r for k, r in reports.items()}, out / "robustness.png", title=robust_title
        )
    )
    results["robustness"] = reports

    print_fn("\n== 4. Grad-CAM on the last conv, localisation on digits both get right ==")
    images, labels = data.test_tensors(100 if quick else 500)
    loc, cams, index = compare_localization(nets, images, labels)
    for label, result in loc.items():
        print_fn(f"{label}: {cams[label].layer}: {result}")
    cam_title = "Grad-CAM of LeNetFC bottom-up and top-down on MNIST-5k test digits"
    pictures.append(
        save_overlays(images[index], {names[k]: c for k, c in cams.items()}, out / "gradcam.png",
                      labels=labels[index], classes=data.classes, title=cam_title)
    )  # fmt: skip
    results["localization"] = loc

    print_fn("\n== 5. receptive fields ==")
    measured = {}
    for label, net in nets.items():
        convs = receptive_fields(net, (1, 28, 28)).convs()
        measured[names[label]] = erf(
            net, (1, 28, 28), samples=4 if quick else 16, name=names[label]
        )
        size = measured[names[label]].size
        print_fn(
            f"{label}: first conv sees {convs[0][1].max:g} px, last conv {convs[-1][1].max:g} px; "
            f"effective receptive field {size}x{size} px"
        )
    pictures.append(plot_erfs(measured, out / "erf.png"))
    results["pictures"] = pictures

    print_fn(f"\ndone in {time.perf_counter() - began:.0f}s; pictures in {out.resolve()}:")
    for p in pictures:
        print_fn(f"  {p.name}")
    return results


def _timm(name: str):
    import timm

    return timm.create_model(name, pretrained=False)
