"""NJetConv2d forward+backward against nn.Conv2d 3x3 at the same width (C=64, 32x32, batch 16) and
against the naive route of the reference code (rebuild the grid and the dense kernel of the exact
size every forward, reading sigma on the host), at sigma = 1, 2, 4; then a whole network: the
train step of reverso.njet(resnet18) against resnet18.

Goals (issue 13): the default (learnable) layer at most 1.5x Conv2d 3x3 at sigma = 1 and 2x at
sigma = 4. The layer's grid follows sigma's support (the host learns sigma one step late, without
a sync), so a learnable layer pays for its current support, as a fixed one does. Each learnable
layer is also timed on each route, forced: these rows calibrate ``NJetConv2d.SEPARABLE_EFFICIENCY``
per device type, which the default ("auto") rows use.

    python benchmarks/njet.py [--device cuda] [--iters 12] [--channels 64] [--size 32] [--batch 16]
                              [--network-size 64] [--network-batch 8]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

import reverso
from reverso.nn import NJetConv2d
from reverso.nn.gaussian import gaussian_basis_2d

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared timing loop
from _timing import layer_step, median_times, train_step


class NaiveNJet(nn.Module):
    """The reference implementation's route: a new grid and a dense kernel of size 2 ceil(2 sigma) + 1
    every forward (sigma read on the host)."""

    def __init__(self, channels: int, sigma: float, order: int = 3):
        super().__init__()
        self.order = order
        self.scale = nn.Parameter(torch.tensor(math.log2(sigma)))
        self.alpha = nn.Parameter(
            torch.randn(channels, channels, (order + 1) * (order + 2) // 2) * 0.1
        )

    def forward(self, x):
        sigma = torch.exp2(self.scale)
        radius = math.ceil(2 * sigma.item())  # host synchronisation
        grid = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        weight = torch.einsum(
            "ocf,fyx->ocyx", self.alpha, gaussian_basis_2d(sigma, self.order, grid)
        )
        return F.conv2d(x, weight, padding=radius)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--network-size", type=int, default=64)
    parser.add_argument("--network-batch", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    c = args.channels
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    x = torch.rand(args.batch, c, args.size, args.size, device=device, requires_grad=True)
    layers = {"Conv2d 3x3": nn.Conv2d(c, c, 3, padding=1)}
    for sigma in (1, 2, 4):
        layers[f"N-Jet sigma={sigma} learnable"] = NJetConv2d(c, c, sigma=sigma)
        for route in ("dense", "separable"):  # each route, for the cost model's calibration
            layers[f"N-Jet sigma={sigma} learnable {route}"] = NJetConv2d(
                c, c, sigma=sigma, route=route
            )
        layers[f"N-Jet sigma={sigma} fixed"] = NJetConv2d(c, c, sigma=sigma, learn_sigma=False)
        layers[f"naive sigma={sigma}"] = NaiveNJet(c, sigma)
    layers = {k: m.to(device) for k, m in layers.items()}
    for module in layers.values():
        for _ in range(2):
            layer_step(module, x)
    # interleaved, so that machine noise hits all alike
    times = median_times(lambda name: layer_step(layers[name], x), list(layers), args.iters)
    base = times["Conv2d 3x3"]
    rows = []
    for name, module in layers.items():
        t = times[name]
        detail = (
            f"{module.kernel_size[0]}x{module.kernel_size[0]} grid, {module.active_route(device)}"
            if isinstance(module, NJetConv2d)
            else ""
        )
        rows.append({"layer": name, "ms": t * 1e3, "ratio": t / base, "detail": detail})
        print(f"| {where} | {name} | {detail} | {t * 1e3:.2f} ms | {t / base:.2f}x |", flush=True)
    rows.append(network(args, device, where))
    return rows


def network(args, device, where: str) -> dict:
    """Train step of N-Jet resnet18 (every spatial conv an NJetConv2d, learnable sigma) against
    resnet18, side by side."""
    torch.manual_seed(0)
    plain = timm.create_model("resnet18", num_classes=10).to(device)
    nets = {"resnet18": plain, "N-Jet resnet18": reverso.njet(plain).to(device)}
    size, batch = args.network_size, args.network_batch
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    step = train_step(nets, x, y)
    for name in nets:  # warm-up
        step(name)
    times = median_times(step, list(nets), max(3, args.iters // 2))
    ratio = times["N-Jet resnet18"] / times["resnet18"]
    print(
        f"| {where} | train step, batch {batch}, {size}x{size} | resnet18 "
        f"{times['resnet18'] * 1e3:.1f} ms | N-Jet resnet18 {times['N-Jet resnet18'] * 1e3:.1f} ms "
        f"| {ratio:.2f}x |",
        flush=True,
    )
    return {
        "layer": "N-Jet resnet18 train step",
        "ms": times["N-Jet resnet18"] * 1e3,
        "ratio": ratio,
        "detail": f"batch {batch}, {size}x{size}",
    }


if __name__ == "__main__":
    main()
