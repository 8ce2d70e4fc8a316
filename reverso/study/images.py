"""Image datasets held in memory: :class:`TensorImages` and the :class:`Data` every loader returns.

A :class:`Data` holds a training set (that :func:`reverso.train` splits 90/10 into train and
validation), a test set, the input size, the classes and the paper's per-dataset settings.
Images are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from reverso.errors import DatasetError, OptionError, check_count
from reverso.ir.edit import model_device, model_dtype  # not frontend: it imports timm


class TensorImages(Dataset):
    """Images held in memory as one tensor (uint8 or float in [0, 1]) with integer labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4 or len(images) != len(labels):
            raise DatasetError(
                f"expected images (N, C, H, W) and N labels, got {tuple(images.shape)} and "
                f"{len(labels)} labels"
            )
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Many samples at once (much faster than one ``__getitem__`` each)."""
        x = self.images[index]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x, self.labels[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([i]))
        return x[0], int(y[0])


@dataclass
class Data:
    """A training set, a test set and what a training run needs to know about them."""

    name: str
    train: Dataset
    test: Dataset
    input_size: tuple[int, int, int]
    classes: list[str]
    #: per-pixel mean (C, H, W) subtracted from every input (the paper's CIFAR protocol), or None
    mean: torch.Tensor | None = None
    #: the paper's weight decay for this dataset (0 for MNIST-type sets, 5e-4 for CIFAR-10)
    weight_decay: float = 0.0
    #: where the files were read from (None for built-in data)
    root: Path | None = None
    #: the training recipe whose transforms the loader applied (None: plain loading)
    recipe: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """What the network sees: ``x`` minus the per-pixel mean where the protocol has one."""
        if self.mean is None:
            return x
        if (self.mean.device, self.mean.dtype) != (x.device, x.dtype):
            self.mean = self.mean.to(device=x.device, dtype=x.dtype)  # once, not every batch
        return x - self.mean

    def test_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``limit`` test images (in [0, 1]) and labels as tensors."""
        return tensors(self.test, limit)

    def __repr__(self) -> str:
        c, h, w = self.input_size
        return (
            f"Data({self.name!r}: {len(self.train)} train, {len(self.test)} test, {c}x{h}x{w}, "
            f"{self.num_classes} classes)"
        )


def check_data(data) -> None:
    """An OptionError unless ``data`` is a :class:`Data` (what the training tools read)."""
    if not isinstance(data, Data):
        raise OptionError(
            f"data must be a reverso.data.Data, got {type(data).__name__}: load one with "
            "reverso.data.load('mnist5k') (or 'cifar10', 'image_folder', ... with root=)"
        )


def check_images(images) -> None:
    """An OptionError unless ``images`` is a batch of images: a float tensor (N, C, H, W)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise OptionError(f"images must be a float tensor (N, C, H, W), got {got}")


def for_model(x: torch.Tensor, model: nn.Module, non_blocking: bool = False) -> torch.Tensor:
    """``x`` on ``model``'s device, a floating ``x`` in the model's dtype: reverso's data is
    float32, and a float64 or bfloat16 model takes its batches in its own dtype."""
    dtype = model_dtype(model) if x.is_floating_point() else None
    return x.to(device=model_device(model), dtype=dtype, non_blocking=non_blocking)


def tensors(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of (the first ``limit`` samples of) any dataset as two tensors."""
    if limit is not None:
        check_count("the number of images", limit)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if isinstance(dataset, TensorImages):
        return dataset.batch(torch.arange(n))
    samples = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in samples]), torch.tensor([int(y) for _, y in samples])
