"""Training memory of top-down nets: bytes saved for backward and train-step time, side by side.

For each model: the bottom-up net (BU), its top-down form (TD), TD with activation checkpointing
(``memory="checkpoint"``) and TD with reversible residual runs (``memory="reversible"``); for
resnet50 also TD with ``merge_width="inner"``. Ratios are against the plain TD (time) and the BU
(saved bytes), measured in one run with the configurations interleaved. On CUDA the peak
allocated memory of a train step is reported too.

python benchmarks/memory.py [--device cuda] [--batch 16] [--iters 5] [--models timm:resnet18@128 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import reverso

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared timing loop
from _timing import median_times, train_step

#: source:name@size; "ref" = reverso.models
DEFAULT_MODELS = ("timm:resnet18@128", "ref:resnet18_imagenette@128", "ref:resnet32_preact@32")
BOTTLENECK = "timm:resnet50@128"


def build(spec: str):
    source, _, rest = spec.partition(":")
    name, _, size = rest.partition("@")
    if source == "timm":
        import timm

        model = timm.create_model(name, num_classes=10)
    else:
        model = reverso.models.create(name, num_classes=10)
    return name, model, (3, int(size), int(size))


def configurations(model, size, bottleneck: bool) -> dict:
    nets = {
        "BU": model,
        "TD": reverso.topdown(model, input_size=size),
        "TD+checkpoint": reverso.topdown(model, input_size=size, memory="checkpoint"),
    }
    try:
        nets["TD+reversible"] = reverso.topdown(model, input_size=size, memory="reversible")
    except reverso.UnsupportedTopologyError as err:  # no residual unit to make reversible
        print(f"TD+reversible skipped: {err}")
    if bottleneck:
        nets["TD merge_width=inner"] = reverso.topdown(model, input_size=size, merge_width="inner")
    return nets


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=[*DEFAULT_MODELS, BOTTLENECK])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []
    for spec in args.models:
        torch.manual_seed(0)
        name, model, size = build(spec)
        nets = {
            k: m.to(device).train()
            for k, m in configurations(model, size, "resnet50" in spec).items()
        }
        rows += measure(name, size, nets, args, device, where)
    return rows


def measure(name, size, nets: dict, args, device, where) -> list[dict]:
    x = torch.rand(args.batch, *size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    step = train_step(nets, x, y)
    saved = {k: reverso.saved_bytes(m, x) for k, m in nets.items()}
    peak = {}
    for key in nets:
        step(key)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            step(key)
            peak[key] = torch.cuda.max_memory_allocated(device)
    medians = median_times(step, nets, args.iters)
    td_time = medians["TD"]
    rows = []
    print(f"\n{name}, {size[1]}px, batch {args.batch}, {where}")
    print("| configuration | parameters | saved MB | saved / BU | step ms | step / TD | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for key, net in nets.items():
        t = medians[key]
        row = {
            "model": name,
            "config": key,
            "device": where,
            "params": sum(p.numel() for p in net.parameters()),
            "saved_mb": saved[key] / 2**20,
            "saved_vs_bu": saved[key] / saved["BU"],
            "step_ms": t * 1e3,
            "step_vs_td": t / td_time,
            "peak_mb": peak[key] / 2**20 if key in peak else None,
        }
        rows.append(row)
        peak_text = f"{row['peak_mb']:.0f}" if row["peak_mb"] is not None else "-"
        print(
            f"| {key} | {row['params'] / 1e6:.2f}M | {row['saved_mb']:.1f} | "
            f"{row['saved_vs_bu']:.2f}x | {row['step_ms']:.0f} | {row['step_vs_td']:.2f}x | {peak_text} |"
        )
    return rows


if __name__ == "__main__":
    main()
