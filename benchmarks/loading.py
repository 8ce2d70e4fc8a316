"""The memory ``reverso.load`` needs, beside the size of the file it loads (goal: a small multiple
of the file's tensor bytes plus a fixed overhead, whatever the recipe says).

For each model, the top-down network is converted and saved here; each file is then loaded in a
process of its own, which first loads a tiny file (imports and caches paid), then the file: the
growth of its peak resident memory is the loader's cost. ``safetensors.torch.load_file`` of the
same file, in another fresh process, is the reference (it only reads the tensors).

    python benchmarks/loading.py [--models resnet18 resnet50] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import timm
import torch

import reverso

# Linux: VmHWM is the peak resident memory; writing 5 to clear_refs resets it to the current one
CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch, reverso
from safetensors.torch import load_file
def peak_kb():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
warm, path, how = sys.argv[1:4]
reverso.load(warm) if how == "reverso" else load_file(warm)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = peak_kb()
try:
    net = reverso.load(path) if how == "reverso" else load_file(path)
    outcome = "loaded"
except reverso.ReversoError as err:
    outcome = type(err).__name__
print(json.dumps({"growth_mb": (peak_kb() - before) / 1024, "outcome": outcome}))
"""


def peak_growth(warm: Path, path: Path, how: str) -> tuple[float, str]:
    """The growth of the peak resident memory of a fresh process loading ``path``, and how the
    load ended."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(warm), str(path), how],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["growth_mb"], result["outcome"]


def crafted(folder: Path) -> Path:
    """The issue's attack: a file of no tensors whose recipe asks for timm's resnet18 with a
    million classes (a 2 GB classifier); the checksum recomputed, as an attacker would."""
    from safetensors.torch import save_file

    from reverso.convert.saving import _checksum

    source = {"timm": "resnet18", "kwargs": {"num_classes": 10**6}}
    recipe = json.dumps(
        {
            "format": "reverso",
            "version": 1,
            "transform": "none",
            "input_size": None,
            "kwargs": {},
            "source": source,
        }
    )
    path = folder / "crafted.safetensors"
    meta = {"format": "reverso", "recipe": recipe, "sha256": _checksum({}, recipe)}
    save_file({}, str(path), metadata=meta)
    return path


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        warm = reverso.save(
            reverso.topdown(reverso.models.create("lenet_fc"), input_size=(1, 28, 28)),
            folder / "warm.safetensors",
        )
        files = {"crafted (resnet18, 10^6 classes)": crafted(folder)}
        for name in args.models:
            td = reverso.topdown(timm.create_model(name), input_size=(3, args.size, args.size))
            files[f"TD {name}"] = reverso.save(td, folder / f"{name}.safetensors")
            del td
        for label, path in files.items():
            file_mb = path.stat().st_size / 2**20
            loader, outcome = peak_growth(warm, path, "reverso")
            reference, _ = peak_growth(warm, path, "safetensors")
            row = {
                "file": label,
                "file_mb": round(file_mb, 3),
                "load_mb": round(loader, 1),
                "outcome": outcome,
                "safetensors_mb": round(reference, 1),
            }
            rows.append(row)
            print(
                f"{label:<34} file {file_mb:9.3f} MB   reverso.load ({outcome}) peak +{loader:7.1f} "
                f"MB ({loader / file_mb:.2f}x the file)   safetensors load_file +{reference:6.1f} MB"
            )
    print(f"torch {torch.__version__}, timm {timm.__version__}")
    return rows


if __name__ == "__main__":
    main()
