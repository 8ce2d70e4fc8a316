"""Train-step time of antialias(resnet18) against the original timm resnet18, side by side.

python benchmarks/antialias.py [--device cuda] [--size 128] [--batch 16] [--iters 10] [--filter-size 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

import reverso

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared timing loop
from _timing import median_times, train_step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--filter-size", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = timm.create_model(args.model, pretrained=False).train()
    blurred = reverso.antialias(
        model, input_size=(3, args.size, args.size), filter_size=args.filter_size
    ).train()
    model, blurred = model.to(device), blurred.to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    nets = {"original": model, f"antialiased (filter {args.filter_size})": blurred}
    step = train_step(nets, x, y)
    for name in nets:
        step(name)  # warm-up
    medians = median_times(step, nets, args.iters)
    base, aa = medians["original"], medians[f"antialiased (filter {args.filter_size})"]
    print(
        f"| {where} | {args.model}, {args.size}px, batch {args.batch}, train step | {base * 1e3:.0f} ms | {aa * 1e3:.0f} ms | +{(aa / base - 1) * 100:.1f}% |"
    )
    return {"original_ms": base * 1e3, "antialiased_ms": aa * 1e3, "overhead": aa / base - 1}


if __name__ == "__main__":
    main()
