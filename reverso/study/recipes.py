"""The reference code's training recipes (evaluation.md section 2), as ``reverso.train(recipe=)``.

A recipe sets epochs, batch size, learning rate, weight decay and the training augmentation of
one of the paper's datasets; arguments given to :func:`reverso.train` explicitly win. Weight
decay follows Keras' L2 semantics: the reference code adds ``wd * sum(w^2)`` to the loss, whose
gradient ``2 wd w`` is PyTorch's ``weight_decay = 2 wd``. Keras' initialisation is opt-in
(:func:`keras_init`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    epochs_topdown: int  # the reference code trains LeNetFC's top-down net for fewer epochs
    batch_size: int
    lr: float
    keras_weight_decay: float  # Keras l2(wd); PyTorch's weight_decay is twice that
    augment: str | None = None  # None | "shift_flip"

    @property
    def weight_decay(self) -> float:
        return 2 * self.keras_weight_decay


RECIPES = {
    "mnist": Recipe("mnist", 50, 30, 128, 0.1, 0.0),
    "fashion_mnist": Recipe("fashion_mnist", 50, 30, 128, 0.1, 0.0),
    "cifar10": Recipe("cifar10", 100, 100, 128, 0.1, 5e-4),
    "cifar10_aug": Recipe("cifar10_aug", 200, 200, 128, 0.1, 1e-4, augment="shift_flip"),
}
#: named by the issue but not built yet: the Imagenette pipeline (resize 156, random 128 crop,
#: flip, PCA lighting, per-pixel mean; validation resized to 128) needs the image-folder loader
PENDING = {"imagenette"}


def get(name: str) -> Recipe:
    if name in PENDING:
        raise OptionError(
            f"recipe {name!r} is not available yet: its augmentation pipeline (resize 156, random "
            "128 crop, flip, PCA lighting) is not built; pass epochs=80, batch_size=128 (64 for "
            "the top-down net), lr=0.1 (0.05), weight_decay=2e-3 explicitly meanwhile"
        )
    if name not in RECIPES:
        raise OptionError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def shift_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The CIFAR augmentation of the reference code (Keras' ImageDataGenerator with
    width/height_shift_range=0.1, horizontal_flip, fill_mode="nearest"): each image shifted by up
    to 10% of its size on each axis (bilinear, edge pixels repeated) and flipped with p = 1/2."""
    n = x.shape[0]
    shifts = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.1 * 2  # in [-1, 1] grid units
    flips = torch.rand(n, generator=generator) < 0.5
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flips, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shifts
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


AUGMENTATIONS = {"shift_flip": shift_flip}


def keras_init(model: nn.Module, kernels: str | None = None) -> nn.Module:
    """Keras' defaults, in place: ``kernels="glorot"`` (glorot-uniform; the plain nets) or
    ``"he"`` (he-normal; the ResNets; the default when the model has residual additions), zero
    biases, BatchNorm momentum 0.01 (Keras' 0.99) and epsilon 1e-3."""
    kernels = kernels or ("he" if _has_residuals(model) else "glorot")
    if kernels not in ("glorot", "he"):
        raise OptionError(f"kernels must be 'glorot' or 'he', got {kernels!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if kernels == "glorot":
                nn.init.xavier_uniform_(m.weight)
            else:  # Keras' he_normal: a normal truncated at 2 std, of std sqrt(2 / fan_in)
                std = math.sqrt(2 / m.weight[0].numel()) / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum, m.eps = 0.01, 1e-3
    return model


def _has_residuals(model: nn.Module) -> bool:
    from reverso.frontend.tracing import ReversoTracer
    from reverso.ir import is_add

    try:
        graph = ReversoTracer().trace(model)
    except Exception:  # an untraceable model: the plain nets' default
        return False
    return any(is_add(n) for n in graph.nodes)
