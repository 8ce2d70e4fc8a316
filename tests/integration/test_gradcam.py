"""Grad-CAM against hand-computed maps, a model built to look at one region, the localisation metric."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reverso
from reverso.study.gradcam import compare_localization, gradcam, localization, save_overlays


class LooksTopLeft(nn.Module):
    """Sees only the top-left quadrant of the image: its evidence can only be there."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        nn.init.uniform_(self.conv.weight, 0.1, 1.0)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 1, 1, 1], [-1, -1, -1, -1]]))
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., :16, :16] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x * self.mask)).mean((2, 3)))


def test_cam_of_a_model_looking_at_one_region_points_there():
    model = LooksTopLeft()
    images = torch.rand(5, 1, 32, 32)
    cam = gradcam(model, images)
    assert cam.layer == "conv" and cam.maps.shape == (5, 32, 32)
    assert torch.all(cam.predictions == 0)
    inside = cam.maps[:, :16, :16].sum((1, 2)) / cam.maps.sum((1, 2))
    assert torch.all(inside > 0.9)
    # nothing beyond the quadrant and the one-pixel rim the 3x3 conv reaches
    assert torch.all(cam.maps[:, 17:, :] == 0) and torch.all(cam.maps[:, :, 17:] == 0)
    peaks = cam.maps.flatten(1).argmax(1)
    assert torch.all(peaks // 32 < 16) and torch.all(peaks % 32 < 16)
    assert torch.allclose(cam.maps.flatten(1).max(1).values, torch.ones(5))


def test_cam_matches_the_definition(golden):
    torch.manual_seed(0)
    model = golden.LeNetFC().eval()
    images = torch.rand(3, 1, 28, 28)
    cam = gradcam(model, images, layer="c3.conv", formula="relu_max")
    # by hand: A = c3_conv output, w = mean of d(top-1 logit)/dA, ReLU(sum w A), bilinear, / max
    acts = {}
    handle = model.c3.conv.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    logits = model(images)
    handle.remove()
    a = acts["a"]
    (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), a)
    expect = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    expect = F.interpolate(expect, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    expect = expect / expect.flatten(1).max(1).values.view(-1, 1, 1)
    assert torch.allclose(cam.maps, expect.detach(), atol=1e-5)


def test_default_layer_is_the_class_map_after_bn_relu(golden):
    """The reference code explains the plain nets' class map after its BN-ReLU: the last conv,
    then the norm and activation modules that run on its output."""
    bu = reverso.models.create("lenet_fc")  # ... C1/10 (module 5.0), BN (5.1), ReLU (5.2), GAP
    td = reverso.topdown(bu, input_size=(1, 28, 28))
    cam = gradcam(td, torch.rand(2, 1, 28, 28))
    # in the top-down net the class map is in the head and runs on the full-resolution map
    assert cam.layer == "head.fc.5.2" and cam.maps.shape == (2, 28, 28)
    assert gradcam(bu, torch.rand(2, 1, 28, 28)).layer == "5.2"
    # a functional ReLU cannot be hooked: the layer is the norm's output
    assert gradcam(golden.LeNetFC(), torch.rand(2, 1, 28, 28)).layer == "classifier.bn"


def test_a_layer_without_spatial_extent_is_refused():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 2, 1), nn.Flatten()
    )
    with pytest.raises(reverso.OptionError, match="1x1"):
        gradcam(model, torch.rand(2, 1, 8, 8))
    assert gradcam(model, torch.rand(2, 1, 8, 8), layer="0").maps.shape == (2, 8, 8)


def test_localization_counts_pixels():
    images = torch.zeros(1, 1, 4, 4)
    images[..., :2, :] = 1.0  # the object: the top two rows (8 pixels)
    maps = torch.zeros(1, 4, 4)
    maps[:, :3, :2] = 0.9  # the CAM: 6 pixels, 4 of them on the object
    loc = localization(maps, images)
    assert (loc.tp, loc.fp, loc.fn) == (4, 2, 4)
    assert loc.precision == pytest.approx(4 / 6) and loc.recall == pytest.approx(4 / 8)


def test_compare_only_on_images_both_models_get_right(tmp_path):
    model = LooksTopLeft()
    other = LooksTopLeft()
    with torch.no_grad():
        other.fc.weight.mul_(-1)  # predicts class 1 everywhere
    images = torch.rand(4, 1, 32, 32)
    labels = torch.tensor([0, 0, 0, 0])
    with pytest.raises(reverso.OptionError, match="no image is classified correctly"):
        compare_localization({"a": model, "b": other}, images, labels)
    results, cams, index = compare_localization({"a": model, "b": LooksTopLeft()}, images, labels)
    assert index.tolist() == [0, 1, 2, 3] and results["a"].images == 4
    path = save_overlays(images, cams, tmp_path / "cams.png", count=3)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bad_layer(golden):
    with pytest.raises(reverso.OptionError, match="no layer 'nope'"):
        gradcam(golden.LeNetFC(), torch.rand(1, 1, 28, 28), layer="nope")
    flat = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 36, 2))
    with pytest.raises(reverso.OptionError, match="feature map"):
        gradcam(flat, torch.rand(1, 1, 8, 8), layer="1")


def test_reference_formula_against_a_hand_computed_cam():
    """docs/methods/evaluation.md, section 4: softmax-probability gradient, mean removed, L2-normalised,
    bilinear resize, ReLU, divided by the max; "relu_max" is the logit, ReLU-then-max recipe."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    x = torch.rand(2, 1, 8, 8)
    a = model[1](model[0](x)).detach().requires_grad_(True)  # the layer "1": ReLU after conv 0
    logits = model[4](model[3](model[2](a)))
    top = logits.argmax(1)
    for formula in ("reference", "relu_max"):
        scores = logits.softmax(1) if formula == "reference" else logits
        (grad,) = torch.autograd.grad(scores.gather(1, top.view(-1, 1)).sum(), a, retain_graph=True)
        cam = (grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).detach()
        if formula == "reference":
            cam = cam - cam.mean((2, 3), keepdim=True)
            cam = cam / cam.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            cam = F.relu(F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False))
        else:
            cam = F.interpolate(F.relu(cam), size=(8, 8), mode="bilinear", align_corners=False)
        expected = cam[:, 0] / cam[:, 0].flatten(1).max(1).values.view(-1, 1, 1)
        got = gradcam(model, x, layer="1", formula=formula).maps
        assert torch.allclose(got, expected, atol=1e-6), formula
    with pytest.raises(reverso.OptionError, match="formula"):
        gradcam(model, x, formula="plain")
