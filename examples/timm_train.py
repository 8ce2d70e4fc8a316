"""Train a top-down network with timm's own training pieces, built by name from timm's registry.

``import reverso.timm`` registers ``topdown_<name>`` for every timm model; from then on timm's
tools build top-down networks like any other model. This script trains ``topdown_resnet18`` the
way timm's ``train.py`` does (timm's dataset, transforms and loader, ``create_optimizer_v2`` with
layer-wise learning-rate decay, an EMA of the weights, the cosine scheduler) on a local image
folder (``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``). Without ``--root`` it writes a small
folder of its own first: crops of scikit-image's sample pictures, one class per picture.

    python examples/timm_train.py [--root ~/data/imagenette2-160] [--model resnet18] [--size 64]
                                  [--epochs 3] [--batch-size 16]

It takes about a minute on a 2-core CPU with the defaults. To use timm's ``train.py`` itself,
add ``import reverso.timm`` at its top and pass ``--model topdown_resnet18`` (and
``--model-kwargs input_size='(3, 160, 160)'`` for the size the network is compiled at).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

import reverso.timm  # noqa: F401 - registers the topdown_<name> models


def sample_folder(root: Path, size: int, per_class: int = 24) -> Path:
    """``root/train`` and ``root/val`` with random crops of four scikit-image sample pictures."""
    from PIL import Image

    from reverso.study.data import sample_images

    names = ("astronaut", "chelsea", "coffee", "rocket")
    pictures = sample_images(3 * size, names)
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", per_class), ("val", per_class // 3)):
        for name, picture in zip(names, pictures, strict=True):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                top, left = torch.randint(0, 2 * size, (2,), generator=generator).tolist()
                crop = picture[:, top : top + size, left : left + size]
                pixels = (crop.permute(1, 2, 0) * 255).round().byte().numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="an image folder (default: a sample one)")
    parser.add_argument("--model", default="resnet18", help="a timm model name")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or sample_folder(Path(scratch), args.size)
        train_set = create_dataset("", root=str(root), split="train", is_training=True)
        val_set = create_dataset("", root=str(root), split="val")
        classes = len(train_set.reader.class_to_idx)
        size = (3, args.size, args.size)
        model = timm.create_model(f"topdown_{args.model}", num_classes=classes, input_size=size)
        config = resolve_data_config({}, model=model)  # the top-down net's own pretrained_cfg
        keys = ("input_size", "mean", "std", "interpolation", "crop_pct")
        settings = {key: config[key] for key in keys}
        loaders = {
            name: create_loader(
                dataset,
                batch_size=args.batch_size,
                is_training=name == "train",
                num_workers=0,
                use_prefetcher=False,
                device=torch.device("cpu"),
                **settings,
            )
            for name, dataset in (("train", train_set), ("val", val_set))
        }
        optimizer = create_optimizer_v2(model, "sgd", lr=args.lr, momentum=0.9, layer_decay=0.75)
        scheduler, epochs = create_scheduler_v2(optimizer, "cosine", num_epochs=args.epochs)
        ema = ModelEmaV3(model, decay=0.9)
        losses = []
        for epoch in range(epochs):
            model.train()
            for images, labels in loaders["train"]:
                loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                ema.update(model)
                losses.append(loss.item())
            scheduler.step(epoch + 1)
        accuracy = evaluate(ema.module, loaders["val"])
    groups = len({g["lr_scale"] for g in optimizer.param_groups})
    print(
        f"{model.pretrained_cfg['architecture']}: {classes} classes, {groups} layer-decay groups, "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, EMA validation accuracy {accuracy:.2%}"
    )
    return {"losses": losses, "accuracy": accuracy, "groups": groups, "classes": classes}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader) -> float:
    model.eval()
    right = total = 0
    for images, labels in loader:
        right += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return right / max(total, 1)


if __name__ == "__main__":
    main()
