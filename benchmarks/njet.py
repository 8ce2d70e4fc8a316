"""NJetConv2d forward+backward against nn.Conv2d 3x3 at the same width (C=64, 32x32, batch 16) and
against the naive route of the reference code (rebuild the grid and the dense kernel of the exact
size every forward, reading sigma on the host), at sigma = 1, 2, 4.

Goal: at most 1.5x Conv2d 3x3 at sigma = 1, nearly flat in sigma (the naive route grows with
sigma^2). reverso never reads sigma in forward: the grid is allocated for sigma_max (2 sigma for a
learnable sigma) and masked, so a learnable layer pays for the largest support it may grow to.

    python benchmarks/njet.py [--device cuda] [--iters 12] [--channels 64] [--size 32] [--batch 16]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from reverso.nn import NJetConv2d
from reverso.nn.gaussian import gaussian_basis_2d


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


def step(module, x) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    module(x).sum().backward()
    sync()
    return time.perf_counter() - start


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    c = args.channels
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    x = torch.rand(args.batch, c, args.size, args.size, device=device, requires_grad=True)
    layers = {"Conv2d 3x3": nn.Conv2d(c, c, 3, padding=1)}
    for sigma in (1, 2, 4):
        layers[f"N-Jet sigma={sigma} learnable"] = NJetConv2d(c, c, sigma=sigma)
        layers[f"N-Jet sigma={sigma} fixed"] = NJetConv2d(c, c, sigma=sigma, learn_sigma=False)
        layers[f"naive sigma={sigma}"] = NaiveNJet(c, sigma)
    layers = {k: m.to(device) for k, m in layers.items()}
    times = {k: [] for k in layers}
    for module in layers.values():
        for _ in range(2):
            step(module, x)
    for _ in range(args.iters):  # interleaved, so that machine noise hits all alike
        for name, module in layers.items():
            times[name].append(step(module, x))
    base = statistics.median(times["Conv2d 3x3"])
    rows = []
    for name, module in layers.items():
        t = statistics.median(times[name])
        detail = (
            f"{module.kernel_size[0]}x{module.kernel_size[0]} grid, {module.route}"
            if isinstance(module, NJetConv2d)
            else ""
        )
        rows.append({"layer": name, "ms": t * 1e3, "ratio": t / base, "detail": detail})
        print(f"| {where} | {name} | {detail} | {t * 1e3:.2f} ms | {t / base:.2f}x |", flush=True)
    return rows


if __name__ == "__main__":
    main()
