"""The README's main job: convert the paper's LeNetFC and timm's resnet18, show bottom-up and
top-down side by side, and check the top-down properties."""

from __future__ import annotations

import time

import torch

from . import models
from .analysis import analyze
from .summary import side_by_side, summary
from .testing.properties import check_topdown
from .topdown import topdown

DEMO_MODELS = (("lenet_fc", (1, 28, 28)), ("resnet18", (3, 224, 224)))


def run_demo(print_fn=print) -> dict:
    """Run the demo and return per-model results (used by the tests)."""
    torch.manual_seed(0)
    results = {}
    for name, input_size in DEMO_MODELS:
        start = time.perf_counter()
        model = models.create(name) if name in models.MODELS else _timm(name)
        report = analyze(model, input_size)
        td = topdown(model, input_size=input_size)
        convert_s = time.perf_counter() - start
        print_fn(
            f"\n=== {name} at {input_size[1]}x{input_size[2]}: {len(report.groups)} groups, "
            f"{len(report.transitions)} transitions, converted in {convert_s:.2f}s ==="
        )
        print_fn(side_by_side(summary(model, input_size, name=name), summary(td, name=name)))
        start = time.perf_counter()
        checked = check_topdown(model, input_size) is not None
        print_fn(
            f"properties: {'all hold' if checked else 'conversion refused'} "
            f"(output shape, coarse entry, resolution never decreases, one merge per transition, "
            f"every unit once, train/eval and other input sizes) in {time.perf_counter() - start:.1f}s"
        )
        results[name] = {"bu": report, "td": td, "checked": checked}
    return results


def _timm(name: str):
    import timm

    return timm.create_model(name, pretrained=False)
