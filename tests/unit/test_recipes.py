"""The reference code's training recipes: settings, Keras L2 semantics, augmentation, init."""

import dataclasses
import math

import pytest
import torch
from torch import nn

import reverso
from reverso.study import recipes
from reverso.study.train import train


def _tiny():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )


def test_recipe_values_and_keras_weight_decay():
    assert recipes.get("cifar10").weight_decay == pytest.approx(1e-3)  # Keras 5e-4
    assert recipes.get("cifar10_aug").weight_decay == pytest.approx(2e-4)  # Keras 1e-4
    mnist = recipes.get("mnist")
    assert (mnist.epochs, mnist.epochs_topdown, mnist.batch_size, mnist.lr) == (50, 30, 128, 0.1)
    assert recipes.get("cifar10_aug").epochs == 200 and recipes.get("cifar10").epochs == 100
    imagenette = recipes.get("imagenette")
    assert imagenette.weight_decay == pytest.approx(2e-3) and imagenette.epochs == 80
    with pytest.raises(reverso.OptionError, match="unknown recipe"):
        recipes.get("svhn")


def test_explicit_arguments_override_the_recipe(small, monkeypatch):
    seen = {}
    real = torch.optim.SGD

    def spy(groups, **kwargs):
        seen.update(kwargs, decay=groups[0]["weight_decay"])
        return real(groups, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    train(_tiny(), small, recipe="cifar10", epochs=1, lr=0.05, progress=False)
    assert seen["lr"] == 0.05 and seen["decay"] == pytest.approx(1e-3)


def test_shift_flip_moves_by_at_most_ten_percent_and_flips_half():
    x = torch.zeros(400, 1, 20, 20)
    x[:, :, 10, 4] = 1.0  # one bright pixel left of centre
    out = recipes.shift_flip(x, torch.Generator().manual_seed(0))
    peaks = out.flatten(1).argmax(1)
    cols, rows = peaks % 20, peaks // 20
    flipped = cols >= 10
    assert 0.4 < flipped.float().mean() < 0.6  # horizontal flips with p = 1/2
    columns = torch.where(flipped, 19 - cols, cols)
    assert (columns - 4).abs().max() <= 2 and (rows - 10).abs().max() <= 2  # 10% of 20 px


def test_keras_init_and_augmented_training(small):
    plain = recipes.keras_init(reverso.models.create("lenet_fc"))
    conv = plain[0][0]
    bound = math.sqrt(6 / (conv.weight[0].numel() + conv.out_channels * 25))
    assert conv.weight.abs().max() <= bound and torch.all(conv.bias == 0)  # glorot-uniform
    assert plain[0][1].momentum == 0.01 and plain[0][1].eps == 1e-3
    resnet = recipes.keras_init(reverso.models.create("resnet32_preact"))
    w = resnet.blocks[0].conv1.weight
    std = math.sqrt(2 / w[0].numel()) / 0.87962566103423978
    assert w.abs().max() <= 2 * std + 1e-6  # he-normal, truncated at 2 std
    data = dataclasses.replace(small, weight_decay=0.0)
    result = train(_tiny(), data, recipe="cifar10_aug", epochs=1, keras_init=True, progress=False)
    assert 0 <= result.runs[0].test_accuracy <= 1


def test_imagenette_recipe_reads_images_as_the_reference_code(tmp_path, small, dataset_files):

    dataset_files.image_folder(tmp_path, size=(40, 30))
    plain = reverso.data.load("image_folder", tmp_path, size=24)
    d = reverso.data.load("image_folder", tmp_path, size=24, recipe="imagenette")
    x, _ = d.train[0]
    assert x.shape == (3, 24, 24) and d.recipe == "imagenette"  # a random crop of 29x29
    assert d.test[0][0].shape == (3, 24, 24)  # validation: resized, aspect not kept
    assert d.mean.shape == (3, 24, 24)
    with pytest.raises(reverso.OptionError, match="recipe='imagenette'"):
        train(_tiny(), plain, recipe="imagenette", epochs=1, progress=False)
    td = reverso.topdown(
        reverso.models.create("resnet32_preact", num_classes=2), input_size=(3, 24, 24)
    )
    assert recipes.settings(recipes.get("imagenette"), td, d) == (80, 64, 0.05, pytest.approx(2e-3))
    bu = reverso.models.create("resnet32_preact", num_classes=2)
    assert recipes.settings(recipes.get("imagenette"), bu, d)[1:3] == (128, 0.1)
    image = torch.rand(3, 5, 5)
    shifted = recipes.PCALighting(0.1)(image) - image  # one colour offset for every pixel
    assert torch.allclose(shifted, shifted[:, :1, :1].expand(3, 5, 5), atol=1e-6)
