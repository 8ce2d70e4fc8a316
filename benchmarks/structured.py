"""The thesis's structured layers against the conv each replaces, forward+backward side by side.

- ``FrameConv2d`` (gauss9) in training against ``nn.Conv2d`` 3x3, and after ``collapse()`` at
  inference (goal: no cost at inference);
- ``DynamicSteerableConv2d`` (order 2, 3x3 frame, one pose per input channel, angle mode)
  against ``nn.Conv2d`` 3x3 in training (goal: at most 3x); on a GPU with Triton, also with its
  fused kernels (``fused = True``);
- ``HConv2d`` (K = 16, Q = 32, the CIFAR layer) against the 3x3 conv of the same width
  (``(K/2) K = 128`` channels) it replaces in a plain CNN.

    python benchmarks/structured.py [--device cuda] [--iters 10] [--channels 64] [--size 32] [--batch 16]
                                    [--compile]

Each row: the median step and its ratio, then the best step and its ratio (on the CPU the median
moves with the allocator's page faults on large fresh maps; the best step shows the layers' own
cost).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from reverso.nn import DynamicSteerableConv2d, FrameConv2d, HConv2d, fused_steer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared timing loop
from _timing import interleaved_times, layer_step


def compare(pairs: dict, x: torch.Tensor, iters: int, backward: bool) -> dict[str, list[float]]:
    """Every step's seconds per name, the modules interleaved in each round (after one warm-up
    each)."""
    for module in pairs.values():
        layer_step(module, x, backward)
    return interleaved_times(lambda name: layer_step(pairs[name], x, backward), list(pairs), iters)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile'd layers (and conv)"
    )
    args = parser.parse_args(argv)
    device, c = torch.device(args.device), args.channels
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    torch.manual_seed(0)
    x = torch.rand(args.batch, c, args.size, args.size, device=device, requires_grad=True)
    conv = nn.Conv2d(c, c, 3, padding=1).to(device)
    frame, _ = FrameConv2d.from_conv(conv, "gauss9")
    steer = DynamicSteerableConv2d(c, c, order=2, kernel_size=3).to(device)
    rows = []

    def report(label: str, times: dict, base: str) -> None:
        """The median and, less sensitive to the allocator's page faults, the best step."""
        median = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        for name in times:
            ratio, best_ratio = median[name] / median[base], best[name] / best[base]
            rows.append(
                {
                    "workload": label,
                    "layer": name,
                    "ms": median[name] * 1e3,
                    "ratio": ratio,
                    "best_ms": best[name] * 1e3,
                    "best_ratio": best_ratio,
                }
            )
            print(
                f"| {where} | {label} | {name} | {median[name] * 1e3:.2f} ms | {ratio:.2f}x | "
                f"{best[name] * 1e3:.2f} ms | {best_ratio:.2f}x |",
                flush=True,
            )

    train = {"Conv2d 3x3": conv, "FrameConv2d gauss9": frame, "DynamicSteerableConv2d": steer}
    if fused_steer.available(x):  # the fused kernels (opt-in), side by side
        fused = copy.deepcopy(steer)
        fused.fused = True
        train["DynamicSteerableConv2d, fused kernels"] = fused
    if args.compile:  # the compiler fuses the steering's elementwise products
        train |= {
            "Conv2d 3x3, compiled": torch.compile(conv),
            "DynamicSteerableConv2d, compiled": torch.compile(steer),
        }
    report("train step (fwd+bwd)", compare(train, x, args.iters, True), "Conv2d 3x3")
    infer = {
        "Conv2d 3x3": conv,
        "FrameConv2d gauss9": frame,
        "collapsed FrameConv2d": frame.collapse(),
    }
    report("inference (fwd)", compare(infer, x.detach(), args.iters, False), "Conv2d 3x3")
    width = 128  # (K / 2) K for K = 16
    h = torch.rand(
        max(1, args.batch // 2), width, args.size, args.size, device=device, requires_grad=True
    )
    hier = {
        "Conv2d 3x3 (128 ch)": nn.Conv2d(width, width, 3, padding=1).to(device),
        "HConv2d K=16 Q=32": HConv2d(8, 16, 16, Q=32).to(device),
    }
    report(
        f"train step, batch {h.shape[0]}", compare(hier, h, args.iters, True), "Conv2d 3x3 (128 ch)"
    )
    return rows


if __name__ == "__main__":
    main()
