"""Conversion time of timm resnet50 at 224 px, side by side with building the network by hand:
one fx trace plus one batch-1 forward of the bottom-up model, plus creating the emitted
network's parameters as its layers' constructors do (fresh memory, filled by each layer's
``reset_parameters``; goal: at most 1.5x). The last column re-draws them in place instead, the
yardstick used until December 2026, which understates what a constructor pays.

Creating fresh weights for the layers the top-down net adds is part of conversion; with the
paper's merges (a 3x3 fuse conv 2C -> C at every transition) a bottleneck net gets ~100M new
parameters, and filling them dominates. The script therefore also times conversion with
``torch.nn.init`` disabled (tensors allocated, not filled): that is the compiler's own cost.

    python benchmarks/conversion.py [--model resnet50] [--size 224] [--repeats 7] [--merge add]

``--memory resnet50 densenet121 inception_v3`` instead reports, for each model, the peak resident
memory its conversion adds (measured in a process of its own, ``reverso.sweep``) beside the
parameter bytes of the bottom-up and the emitted networks (goal: a small multiple).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time

import timm
import torch

import reverso
from reverso.sweep import construction_s


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def weights_not_filled():
    """Make torch.nn.init's fillers no-ops (layers still allocate their tensors)."""
    names = (
        "kaiming_uniform_",
        "uniform_",
        "normal_",
        "ones_",
        "zeros_",
        "trunc_normal_",
        "xavier_uniform_",
    )
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--merge", default="add_concat")
    parser.add_argument("--memory", nargs="+", metavar="MODEL", help="peak memory of these instead")
    args = parser.parse_args(argv)
    if args.memory:
        return memory_rows(args.memory, args.size)
    model = timm.create_model(args.model, pretrained=False).eval()
    size = (3, args.size, args.size)

    def convert():
        return reverso.topdown(model, input_size=size, merge=args.merge)

    td = convert()  # warm up
    # building it by hand: a trace and a batch-1 forward of the model, initialising td's weights
    base = statistics.median(construction_s(model, td, size) for _ in range(args.repeats))
    # the yardstick until December 2026 re-drew the weights in place (no fresh memory)
    in_place = statistics.median(
        construction_s(model, td, size, fresh=False) for _ in range(args.repeats)
    )
    conv = median_time(convert, args.repeats)
    with weights_not_filled():
        conv_no_init = median_time(convert, args.repeats)
    td = convert()
    bu_params = sum(p.numel() for p in model.parameters())
    td_params = sum(p.numel() for p in td.parameters())
    result = {
        "model": args.model,
        "size": args.size,
        "merge": args.merge,
        "baseline_s": base,
        "convert_s": conv,
        "convert_without_init_s": conv_no_init,
        "ratio": conv / base,
        "ratio_without_init": conv_no_init / base,
        "baseline_in_place_s": in_place,
        "ratio_in_place": conv / in_place,
    }
    print(
        f"| {args.model} {args.size}px, merge={args.merge} | {bu_params / 1e6:.1f}M -> {td_params / 1e6:.1f}M | "
        f"{base * 1e3:.0f} ms | {conv * 1e3:.0f} ms ({result['ratio']:.1f}x) | "
        f"{conv_no_init * 1e3:.0f} ms ({result['ratio_without_init']:.1f}x) | "
        f"{in_place * 1e3:.0f} ms ({result['ratio_in_place']:.1f}x) |"
    )
    return result


def memory_rows(models: list[str], size: int) -> list[dict]:
    """Peak conversion memory beside the networks' parameter bytes, one process per model."""
    from reverso.sweep import check_isolated

    rows = []
    for name in models:
        r = check_isolated("timm", name, size)
        ratio = r.convert_peak_mb / r.param_mb if r.param_mb else float("nan")
        rows.append(
            {
                "model": name,
                "outcome": r.outcome,
                "peak_mb": r.convert_peak_mb,
                "param_mb": r.param_mb,
                "ratio": ratio,
            }
        )
        print(
            f"| {name} {size}px | {r.bu_params / 1e6:.1f}M -> {r.td_params / 1e6:.1f}M | "
            f"{r.param_mb:,.0f} MB | {r.convert_peak_mb:,.0f} MB | {ratio:.2f}x |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
