"""Forward+backward of the emitted top-down ResNet-32 against a hand-written PyTorch top-down
ResNet-32 of identical structure (goal: at most 1.05x: being generated costs nothing at run time).

The hand-written net below uses plain torch ops only. It is checked to be the same network by
copying the emitted net's parameters and buffers into it (in order) and comparing outputs.

    python benchmarks/td_resnet32.py [--batch 64] [--iters 20]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import reverso


def gaussian(sigma: float) -> torch.Tensor:
    r = math.ceil(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return (taps / taps.sum()).float()


def blur_subsample(x: torch.Tensor, taps: torch.Tensor, f: int) -> torch.Tensor:
    c, r = x.shape[1], (taps.numel() - 1) // 2
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), stride=(1, f), groups=c)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), stride=(f, 1), groups=c)


class Block(nn.Module):
    """Pre-activation basic block with an identity shortcut."""

    def __init__(self, c: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, 1, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        return self.conv2(F.relu(self.bn2(self.conv1(o)))) + x


class UpBlock(nn.Module):
    """The first block of a finer group: upsample inside, 1x1 projection, add_concat merge."""

    def __init__(self, cin: int, cout: int, projection_first: bool):
        super().__init__()
        self.projection_first = projection_first
        self.bn1 = nn.BatchNorm2d(cin)
        if projection_first:
            self.proj = nn.Conv2d(cin, cout, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        if not projection_first:
            self.proj = nn.Conv2d(cin, cout, 1)
        self.lateral = nn.Conv2d(3, cout, 3, 1, 1)
        self.fuse_bn, self.fuse_conv = nn.BatchNorm2d(2 * cout), nn.Conv2d(2 * cout, cout, 3, 1, 1)

    def forward(self, x, image):
        o = F.relu(self.bn1(x))
        size = image.shape[-2:]
        shortcut = F.interpolate(self.proj(o), size=size, mode="nearest")
        main = self.conv2(F.relu(self.bn2(self.conv1(F.interpolate(o, size=size, mode="nearest")))))
        p = main + shortcut
        s = self.lateral(image)
        return self.fuse_conv(F.relu(self.fuse_bn(torch.cat([p + s, s], 1))))


class HandWrittenTopDownResNet32(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.register_buffer("taps2", gaussian(1.0), persistent=False)
        self.register_buffer("taps4", gaussian(2.0), persistent=False)
        self.stem = nn.Conv2d(3, 64, 3, 1, 1)
        self.g3 = nn.Sequential(*[Block(64) for _ in range(5)])
        self.up2 = UpBlock(64, 32, projection_first=True)
        self.g2 = nn.Sequential(*[Block(32) for _ in range(4)])
        self.up1 = UpBlock(32, 16, projection_first=False)
        self.g1 = nn.Sequential(*[Block(16) for _ in range(4)])
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x1, x2 = blur_subsample(x, self.taps2, 2), blur_subsample(x, self.taps4, 4)
        y = self.g3(self.stem(x2))
        y = self.g2(self.up2(y, x1))
        y = self.g1(self.up1(y, x))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(y)), 1).flatten(1))


def copy_in_order(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters, and batch-norm statistics, position by position; shapes must agree."""
    norms = [
        (a, b)
        for a, b in zip(
            [m for m in src.modules() if isinstance(m, nn.BatchNorm2d)],
            [m for m in dst.modules() if isinstance(m, nn.BatchNorm2d)],
            strict=True,
        )
    ]
    pairs = list(zip(src.parameters(), dst.parameters(), strict=True))
    pairs += [(a.running_mean, b.running_mean) for a, b in norms] + [
        (a.running_var, b.running_var) for a, b in norms
    ]
    with torch.no_grad():
        for a, b in pairs:
            assert a.shape == b.shape, (a.shape, b.shape)
            b.copy_(a)


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    # the hand-written pyramid is the reflect-padded Gaussian
    emitted = reverso.topdown(reverso.models.create("resnet32_preact"), pyramid="gaussian_reflect")
    hand = HandWrittenTopDownResNet32()
    copy_in_order(emitted, hand)
    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    emitted.eval(), hand.eval()
    with torch.no_grad():
        same = torch.allclose(emitted(x), hand(x), atol=1e-5)
    assert same, "the hand-written network is not the emitted one"
    assert sum(p.numel() for p in emitted.parameters()) == sum(p.numel() for p in hand.parameters())
    emitted.train(), hand.train()
    for _ in range(3):  # warm up
        step_time(emitted, x, y), step_time(hand, x, y)
    t_emitted, t_hand = [], []
    for _ in range(args.iters):  # interleaved, so that machine noise hits both alike
        t_emitted.append(step_time(emitted, x, y))
        t_hand.append(step_time(hand, x, y))
    result = {
        "emitted_ms": statistics.median(t_emitted) * 1e3,
        "hand_ms": statistics.median(t_hand) * 1e3,
    }
    result["ratio"] = result["emitted_ms"] / result["hand_ms"]
    print(
        f"| TD ResNet-32, batch {args.batch}, 32x32, fwd+bwd | {result['emitted_ms']:.1f} ms | "
        f"{result['hand_ms']:.1f} ms | {result['ratio']:.3f}x |"
    )
    return result


if __name__ == "__main__":
    main()
