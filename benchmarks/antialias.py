"""Train-step time of antialias(resnet18) against the original timm resnet18, side by side.

python benchmarks/antialias.py [--device cuda] [--size 128] [--batch 16] [--iters 10] [--filter-size 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import reverso


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
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    nets = {"original": model, f"antialiased (filter {args.filter_size})": blurred}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in nets.items()}

    def step(name):
        sync()
        start = time.perf_counter()
        F.cross_entropy(nets[name](x), y).backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    for name in nets:
        step(name)
    times = {k: [] for k in nets}
    for _ in range(args.iters):
        for name in nets:
            times[name].append(step(name))
    medians = {k: statistics.median(v) for k, v in times.items()}
    base, aa = medians["original"], medians[f"antialiased (filter {args.filter_size})"]
    print(
        f"| {where} | {args.model}, {args.size}px, batch {args.batch}, train step | {base * 1e3:.0f} ms | {aa * 1e3:.0f} ms | +{(aa / base - 1) * 100:.1f}% |"
    )
    return {"original_ms": base * 1e3, "antialiased_ms": aa * 1e3, "overhead": aa / base - 1}


if __name__ == "__main__":
    main()
