"""The reference code's training recipes (docs/methods/evaluation.md, section 2), as
``reverso.train(recipe=)``.

A recipe sets epochs, batch size, learning rate, weight decay and the training augmentation of
one of the paper's datasets; arguments given to :func:`reverso.train` explicitly win. The
schedule (learning rate divided by 10 after epochs ceil(0.5 E) and ceil(0.8 E)) and the checks
of the settings live here too. Weight
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

from reverso.errors import OptionError, check_count
from reverso.study.images import check_data


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    epochs_topdown: int  # the reference code trains LeNetFC's top-down net for fewer epochs
    batch_size: int
    lr: float
    keras_weight_decay: float  # Keras l2(wd); PyTorch's weight_decay is twice that
    augment: str | None = None  # None | "shift_flip" (per batch, on the device)
    batch_size_topdown: int | None = None  # the top-down net's, where the code trains it apart
    lr_topdown: float | None = None
    #: the data must be loaded with this recipe (its transforms live in the loader)
    data: str | None = None

    @property
    def weight_decay(self) -> float:
        return 2 * self.keras_weight_decay


RECIPES = {
    "mnist": Recipe("mnist", 50, 30, 128, 0.1, 0.0),
    "fashion_mnist": Recipe("fashion_mnist", 50, 30, 128, 0.1, 0.0),
    "cifar10": Recipe("cifar10", 100, 100, 128, 0.1, 5e-4),
    "cifar10_aug": Recipe("cifar10_aug", 200, 200, 128, 0.1, 1e-4, augment="shift_flip"),
    # train: resize 156x156, random 128 crop, flip, PCA lighting; validation resized to 128; the
    # per-pixel mean subtracted (reverso.data.load("image_folder", root, recipe="imagenette"))
    "imagenette": Recipe(
        "imagenette",
        80,
        80,
        128,
        0.1,
        1e-3,
        batch_size_topdown=64,
        lr_topdown=0.05,
        data="imagenette",
    ),
}


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise OptionError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def settings(recipe: Recipe | None, model, data, **given) -> tuple[int, int, float, float]:
    """(epochs, batch size, lr, PyTorch weight decay): what was given, else the recipe's (its
    top-down values for a TopDownNet), else 30 epochs, batch 128, lr 0.1 and the dataset's."""
    check_data(data)
    if recipe is not None:
        from reverso.convert.network import TopDownNet

        if recipe.data is not None and data.recipe != recipe.data:
            raise OptionError(
                f"recipe {recipe.name!r} transforms the images as they are read: load the data "
                f"with reverso.data.load('image_folder', root, recipe={recipe.data!r})"
            )
        td = isinstance(model, TopDownNet)
        defaults = {
            "epochs": recipe.epochs_topdown if td else recipe.epochs,
            "batch_size": (recipe.batch_size_topdown if td else None) or recipe.batch_size,
            "lr": (recipe.lr_topdown if td else None) or recipe.lr,
            "weight_decay": recipe.weight_decay,
        }
    else:
        defaults = {"epochs": 30, "batch_size": 128, "lr": 0.1, "weight_decay": data.weight_decay}
    chosen = {k: given[k] if given.get(k) is not None else v for k, v in defaults.items()}
    return chosen["epochs"], chosen["batch_size"], chosen["lr"], chosen["weight_decay"]


def check_settings(epochs, batch_size, lr, val_fraction, repeats, milestones) -> None:
    check_count("epochs", epochs)
    check_count("batch_size", batch_size)
    if not lr > 0:
        raise OptionError(f"lr must be positive, got {lr!r}")
    if not 0 <= val_fraction < 1:
        raise OptionError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    check_count("repeats", repeats)
    if any(not 0 < m < 1 for m in milestones):
        raise OptionError(f"milestones are fractions of the epochs in (0, 1), got {milestones!r}")


def lr_drop_epochs(epochs: int, milestones) -> list[int]:
    """The epochs after which the learning rate is divided by 10: ceil(m E) for each milestone
    fraction m, as the reference code's schedule (``round`` would drop one epoch early for odd E:
    round(2.5) = 2)."""
    return sorted({max(1, math.ceil(m * epochs - 1e-9)) for m in milestones})


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


#: AlexNet's "fancy PCA" lighting noise: the eigen-decomposition of ImageNet's RGB covariance
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)


class PCALighting:
    """Add ``eigvec @ (alpha * eigval)`` to every pixel, alpha ~ N(0, ``std``) per image (the
    per-image PCA colour jitter of the Imagenette recipe), on a (3, H, W) image in [0, 1]."""

    def __init__(self, std: float = 0.1):
        self.std = std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        return image + (PCA_EIGVEC @ (alpha * PCA_EIGVAL)).view(3, 1, 1)


def imagenette_transforms(size: int = 128):
    """(train, validation) torchvision transforms of the Imagenette recipe."""
    from torchvision import transforms

    rgb = transforms.Lambda(lambda im: im.convert("RGB"))
    train = transforms.Compose(
        [
            rgb,
            transforms.Resize((156 * size // 128, 156 * size // 128)),
            transforms.RandomCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            PCALighting(0.1),
        ]
    )
    val = transforms.Compose([rgb, transforms.Resize((size, size)), transforms.ToTensor()])
    return train, val
