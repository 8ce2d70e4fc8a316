"""Train-step throughput, top-down vs bottom-up ResNet-18 at 128 px (the top-down paper's
Imagenette shape by default, or a timm model), on random data, with bf16 autocast and
channels_last, eager and with torch.compile. Meant for a CUDA GPU; runs on the CPU for a smoke test.

    python benchmarks/gpu_throughput.py [--model resnet18_imagenette] [--device cuda] [--batch 128]
                                        [--iters 30] [--no-compile]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn.functional as F

import reverso


def throughput(
    model, device, batch: int, size: int, iters: int, autocast: bool, classes: int
) -> float:
    """Images per second of full training steps (forward, backward, SGD)."""
    model = model.to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    dtype = torch.bfloat16

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm up (and compile)
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return batch * iters / (time.perf_counter() - start)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--model", default="resnet18_imagenette", help="a reverso reference model or a timm name"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    torch.manual_seed(0)
    if args.model in reverso.models.MODELS:
        bu = reverso.models.create(args.model)
    else:
        bu = timm.create_model(args.model, pretrained=False)
    td = reverso.topdown(bu, input_size=(3, args.size, args.size))
    classes = getattr(bu, "num_classes", 1000)
    rows = []
    for compiled in [False] if args.no_compile else [False, True]:
        for label, model in (("bottom-up", bu), ("top-down", td)):
            m = torch.compile(model) if compiled else model
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            ips = throughput(
                m, device, args.batch, args.size, args.iters, autocast=True, classes=classes
            )
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0
            rows.append(
                {"model": label, "compiled": compiled, "images_per_s": ips, "peak_mb": peak}
            )
            print(
                f"| {name} | {args.model} {label} | {'compile' if compiled else 'eager'} | bf16+channels_last | "
                f"{ips:,.0f} img/s | {peak:,.0f} MB |",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
