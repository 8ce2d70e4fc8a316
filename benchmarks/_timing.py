"""The benchmarks' shared loops: SGD train steps of several networks, or forward(+backward) passes
of several layers, timed side by side."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F


def train_step(nets: dict, x: torch.Tensor, y: torch.Tensor, lr: float = 0.01):
    """``step(name)``: one SGD step of ``nets[name]`` on ``(x, y)``, its wall time in seconds
    (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    opts = {k: torch.optim.SGD(m.parameters(), lr=lr) for k, m in nets.items()}

    def step(name) -> float:
        sync()
        start = time.perf_counter()
        F.cross_entropy(nets[name](x), y).backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    return step


def layer_step(module, x: torch.Tensor, backward: bool = True) -> float:
    """Wall time in seconds of ``module(x)`` and, with ``backward``, the backward of its sum (else
    under ``no_grad``), synchronised on CUDA."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    if backward:
        module(x).sum().backward()
    else:
        with torch.no_grad():
            module(x)
    sync()
    return time.perf_counter() - start


def interleaved_times(step, names, iters: int) -> dict[str, list[float]]:
    """Every step time per name over ``iters`` rounds, the names interleaved in each round."""
    times = {k: [] for k in names}
    for _ in range(iters):
        for name in names:
            times[name].append(step(name))
    return times


def median_times(step, names, iters: int) -> dict:
    """Median step time per name over ``iters`` rounds, the names interleaved in each round."""
    return {k: statistics.median(v) for k, v in interleaved_times(step, names, iters).items()}
