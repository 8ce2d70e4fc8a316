"""Training on MNIST-5k with the top-down paper's protocol, bottom-up against top-down, timed
side by side in one run: seconds per epoch and test accuracy for LeNetFC and NIN-light. Meant for
a CUDA GPU (AMP on); runs on the CPU too.

    python benchmarks/gpu_training.py [--device cuda] [--epochs 30] [--models lenet_fc nin_light]
"""

from __future__ import annotations

import argparse

import torch

import reverso
from reverso.study.data import mnist5k_data


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=["lenet_fc", "nin_light"])
    parser.add_argument("--train-limit", type=int, help="use only this many training digits")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    data = mnist5k_data()
    if args.train_limit:
        data.train = reverso.data.TensorImages(
            data.train.images[: args.train_limit], data.train.labels[: args.train_limit]
        )
    rows = []
    for model_name in args.models:
        timings = {}
        for label in ("bottom-up", "top-down"):
            torch.manual_seed(0)
            model = reverso.models.create(model_name)
            if label == "top-down":
                model = reverso.topdown(model)
            result = reverso.train(model, data, epochs=args.epochs, device=device, progress=False)
            run = result.runs[0]
            timings[label] = run.seconds / args.epochs
            rows.append(
                {
                    "model": model_name,
                    "net": label,
                    "s_per_epoch": timings[label],
                    "test_accuracy": run.test_accuracy,
                }
            )
            print(
                f"| {name} | {model_name} {label} | {args.epochs} epochs | "
                f"{timings[label]:.2f} s/epoch | {run.test_accuracy:.2%} |",
                flush=True,
            )
        print(
            f"top-down / bottom-up time per epoch, {model_name}: "
            f"{timings['top-down'] / timings['bottom-up']:.2f}x"
        )
    return rows


if __name__ == "__main__":
    main()
