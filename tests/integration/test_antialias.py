"""BlurPool2d and reverso.antialias (docs/methods/antialias.md)."""

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

import reverso
from reverso.nn import BlurPool2d
from reverso.study.data import sample_images
from reverso.study.shift import consistency, feature_equivariance, features_at

SAME_PADDING_MODELS = ["tf_mobilenetv3_small_minimal_100"]  # timm's Conv2dSame


def test_paper_toy_example():
    """Dense max-pool, Tri-3 blur, subsample: [.5, 1, .5, 1]; shifted by one: [.75, .75, .75, .75]."""

    def antialiased(signal):
        x = torch.tensor(signal, dtype=torch.float64).repeat(3).view(1, 1, 1, -1)  # circular: tile
        dense = F.max_pool2d(x, (1, 2), stride=1)
        blurred = F.conv1d(
            dense.view(1, 1, -1), torch.tensor([[[1.0, 2.0, 1.0]]], dtype=torch.float64) / 4
        )
        return blurred.flatten()[7:15:2]  # the middle period, even positions

    def blurpool(signal):  # the same with the layer, on three periods of the dense max-pool
        x = torch.tensor(signal, dtype=torch.float64).repeat(4).view(1, 1, 1, -1)
        dense = F.max_pool2d(x, (1, 2), stride=1)[..., :24].expand(1, 1, 3, 24)
        return BlurPool2d(1, filter_size=3, stride=2).double()(dense)[
            0, 0, 1, 4:8
        ]  # the middle period

    x = [0, 0, 1, 1, 0, 0, 1, 1]
    shifted = x[1:] + x[:1]
    assert antialiased(x).tolist() == [0.5, 1.0, 0.5, 1.0]
    assert antialiased(shifted).tolist() == [0.75, 0.75, 0.75, 0.75]
    assert torch.allclose(blurpool(x), torch.tensor([0.5, 1.0, 0.5, 1.0], dtype=torch.float64))
    assert torch.allclose(blurpool(shifted), torch.full((4,), 0.75, dtype=torch.float64))


@pytest.mark.parametrize("size", range(1, 8))
def test_blurpool_filters(size):
    layer = BlurPool2d(3, filter_size=size)
    assert torch.allclose(layer.filt.sum((-1, -2)), torch.ones(3))
    assert list(layer.parameters()) == [] and layer.state_dict() == {}
    x = torch.rand(2, 3, 11, 8)
    assert layer(x).shape == (2, 3, 6, 4)  # ceil(H / stride)
    assert torch.allclose(
        layer(torch.full((1, 3, 9, 9), 2.0)), torch.full((1, 3, 5, 5), 2.0)
    )  # constants stay


def test_filter_size_one_is_plain_subsampling_and_tiny_maps_fall_back():
    x = torch.rand(1, 2, 7, 7)
    assert torch.equal(BlurPool2d(2, 1, 2)(x), x[..., ::2, ::2])
    assert BlurPool2d(2, 7, 2)(torch.rand(1, 2, 2, 2)).shape == (
        1,
        2,
        1,
        1,
    )  # reflect impossible: replicate


def test_blur_commutes_with_a_1x1_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 1, bias=False).double()
    x = torch.rand(2, 4, 13, 10, dtype=torch.float64)
    for size in (2, 3, 5):
        a = BlurPool2d(6, size).double()(conv(x))
        b = conv(BlurPool2d(4, size).double()(x))
        assert torch.allclose(a, b, atol=1e-12)


def test_stem_conv_only_with_stem_true():
    model = timm.create_model("resnet18", num_classes=10)
    assert "conv1" not in reverso.antialias(model, input_size=(3, 64, 64)).antialiased
    assert "conv1" in reverso.antialias(model, input_size=(3, 64, 64), stem=True).antialiased


def test_blur_goes_after_the_nonlinearity():
    gm = reverso.antialias(timm.create_model("resnet18", num_classes=10), input_size=(3, 64, 64))
    blur = next(n for n in gm.graph.nodes if n.name.startswith("layer2_0_conv1_blurpool"))
    assert blur.args[0].name == "layer2_0_act1"  # conv1 -> bn1 -> act1 -> blur -> conv2
    shortcut_blur = next(
        n for n in gm.graph.nodes if n.name.startswith("layer2_0_downsample_0_blurpool")
    )
    assert (
        next(iter(shortcut_blur.users)).name == "layer2_0_downsample_0"
    )  # blur, then the 1x1 projection


def test_shift_equivariance_improves_on_natural_images():
    torch.manual_seed(0)
    images = sample_images(128)
    model = timm.create_model("resnet18", num_classes=10).eval()
    plain = reverso.antialias(model, input_size=(3, 128, 128), filter_size=1).eval()
    blurred = reverso.antialias(model, input_size=(3, 128, 128), filter_size=4).eval()
    for node in ("layer2_1_act2", "layer3_1_act2", "layer4_1_act2"):
        before = feature_equivariance(features_at(plain, node), images, shifts=(1, 2, 3))
        after = feature_equivariance(features_at(blurred, node), images, shifts=(1, 2, 3))
        assert after < 0.5 * before, (node, before, after)
    assert 0.0 <= consistency(blurred, images, max_shift=16, pairs=2) <= 1.0


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_avg_pool_without_padding_in_the_divisor_is_kept_exactly(ceil_mode):
    """filter_size=1 is plain subsampling: the rewritten net must compute the original outputs."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.AvgPool2d(
            3, 2, padding=0 if ceil_mode else 1, ceil_mode=ceil_mode, count_include_pad=False
        ),
        torch.nn.Conv2d(8, 4, 3, padding=1),
    ).eval()
    blurred = reverso.antialias(model, input_size=(3, 15, 15), filter_size=1).eval()
    x = torch.rand(2, 3, 15, 15)
    assert torch.allclose(blurred(x), model(x), atol=1e-6)


def test_timm_same_padding_layers_are_padded_as_at_their_stride():
    """timm's Conv2dSame, StdConv2dSame, MaxPool2dSame and AvgPool2dSame pad for each input
    size; at stride 1 they would pad one pixel off on even sizes. A SamePad2d pads as the strided
    layer did: every size is kept, filter_size=1 is exact on odd and even sizes, and the result
    traces again."""
    from timm.layers import Conv2dSame, StdConv2dSame
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

    from reverso.nn import SamePad2d

    torch.manual_seed(0)
    model = (
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            MaxPool2dSame(3, 2),
            Conv2dSame(8, 8, 3, stride=2),
            torch.nn.ReLU(),
            AvgPool2dSame(2, 2),
            StdConv2dSame(8, 8, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 4, 3, padding=1),
        )
        .eval()
        .double()
    )
    exact = reverso.antialias(model, input_size=(3, 32, 32), filter_size=1)
    blurred = reverso.antialias(model, input_size=(3, 32, 32))
    assert sum(isinstance(m, SamePad2d) for m in blurred.modules()) == 4
    for n in (15, 16, 17, 30):
        x = torch.rand(2, 3, n, n, dtype=torch.float64)
        assert torch.allclose(exact(x), model(x), atol=1e-12, rtol=0)
        assert blurred(x).shape == model(x).shape
    retraced = reverso.trace(blurred, (3, 17, 17))  # SamePad2d stays a leaf
    assert sum(n.op == "call_module" and "same_pad" in n.target for n in retraced.graph.nodes) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known layer: no "reverso does not know" warning
        rfs = reverso.receptive_fields(blurred, (3, 32, 32))
    assert [kind for kind, _ in rfs.rows.values()].count("same padding") == 4


@pytest.mark.parametrize("side", [64, 65])
def test_an_antialiased_same_padding_model_converts_to_topdown(side):
    """SamePad2d grows a small map by its border (a 4x4 map to 8x8 before a 5x5 conv): a padding
    keeps its input's level, so the analysis sees no upsampling there."""
    model = timm.create_model(SAME_PADDING_MODELS[0], num_classes=10)
    blurred = reverso.antialias(model, input_size=(3, side, side))
    td = reverso.topdown(blurred, input_size=(3, side, side))
    y = td(torch.rand(2, 3, side, side))
    y.sum().backward()
    assert y.shape == (2, 10) and torch.isfinite(y).all()
