"""torchvision classifiers convert too (the compiler knows no model by name)."""

import pytest
import torch
import torchvision

from reverso.testing import check_topdown

MODELS = [
    "resnet18",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",  # channel split and shuffle inside units
    "squeezenet1_0",  # fire modules: concat of 1x1 and 3x3 branches
    "googlenet",  # inception blocks with four branches
    "regnet_x_400mf",
    "convnext_tiny",  # channels-last LayerNorm/Linear inside blocks, torchvision's LayerNorm2d
    "mnasnet0_5",
    "alexnet",  # adaptive-pool + MLP head
    "swin_t",  # channels-last blocks, patch merging by strided slices in a wrapped function
]


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model_converts_with_all_properties(name):
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    td = check_topdown(model, (3, 96, 96), other_sizes=[(96, 96), (97, 101)])
    assert td is not None
    y = td(torch.rand(2, 3, 96, 96))
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in td.parameters() if p.grad is not None)
