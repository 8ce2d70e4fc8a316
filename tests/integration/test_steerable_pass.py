"""reverso.steerable / the steerable pass on whole models (docs/methods/structured.md,
section 7)."""

import pytest
import timm
import torch
from torch import nn

import reverso
from reverso.errors import OptionError, UnsupportedTopologyError
from reverso.nn import DynamicSteerableConv2d


def test_convs_whose_kernels_the_frame_holds_convert_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1)
    )
    probe = DynamicSteerableConv2d(1, 1, order=2, sigma=1.0, kernel_size=3)
    with torch.no_grad():
        for conv in (model[0], model[2]):  # kernels in the order-2 frame's span at sigma 1
            coeff = torch.randn(conv.out_channels, conv.in_channels, probe.atoms.shape[0])
            conv.weight.copy_(torch.einsum("ocm,myx->ocyx", coeff, probe.atoms))
    converted = reverso.steerable(model, input_size=(3, 16, 16), every=1)
    assert [type(m) for m in converted] == [DynamicSteerableConv2d, nn.ReLU, DynamicSteerableConv2d]
    assert converted.steerable_report.layers[0][2] < 1e-6  # projection error
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(converted(x), model(x), atol=1e-5)  # the pose nets start at zero
    converted(x).sum().backward()
    assert converted[0].pose_net[-1].weight.grad.abs().sum() > 0


def test_conv_unit_keeps_what_it_cannot_steer_and_every_alternates():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1),
    )
    report = reverso.steerable(model, every=2).steerable_report
    assert [name for name, *_ in report.layers] == ["0", "4"]
    kept = dict(report.kept)
    assert "groups=8" in kept["1"] and "dilation" in kept["2"] and "every=2" in kept["3"]


def test_block_unit_replaces_residual_units_by_steerable_blocks():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    converted = reverso.steerable(model, input_size=(3, 64, 64), unit="block")
    blocks = [m for m in converted.modules() if isinstance(m, DynamicSteerableConv2d)]
    assert len(blocks) == 4  # every other one of the 8 units
    assert sum(p.numel() for p in converted.parameters()) < sum(
        p.numel() for p in model.parameters()
    )
    y = converted(torch.rand(2, 3, 64, 64))
    y.sum().backward()
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    every = reverso.steerable(model, input_size=(3, 64, 64), unit="block", every=1)
    strides = [m.stride for m in every.modules() if isinstance(m, DynamicSteerableConv2d)]
    assert strides == [1, 1, 2, 1, 2, 1, 2, 1]  # the transitions keep their stride


def test_bad_options_and_models_without_units_are_refused():
    with pytest.raises(OptionError, match="unit='cell'"):
        reverso.steerable(nn.Conv2d(3, 3, 3), unit="cell")
    with pytest.raises(OptionError, match="every"):
        reverso.steerable(nn.Conv2d(3, 3, 3), every=0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    with pytest.raises(UnsupportedTopologyError, match="no residual units"):
        reverso.steerable(plain, input_size=(3, 8, 8), unit="block")
    with pytest.raises(UnsupportedTopologyError, match="groups=4"):
        reverso.steerable(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)))


def test_steerable_composes_with_topdown():
    torch.manual_seed(0)
    td = reverso.topdown(timm.create_model("resnet18", num_classes=10), input_size=(3, 64, 64))
    x = torch.rand(2, 3, 64, 64)
    for unit in ("conv", "block"):
        converted = reverso.steerable(td, unit=unit)
        assert type(converted) is type(td)
        assert any(isinstance(m, DynamicSteerableConv2d) for m in converted.modules())
        y = converted(x)
        y.sum().backward()
        assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_models_built_on_the_meta_device_convert_and_materialise():
    with torch.device("meta"):
        model = timm.create_model("resnet18", num_classes=10)
    for convert in (reverso.frames, reverso.steerable):
        converted = convert(model)
        assert {p.device.type for p in converted.parameters()} == {"meta"}
        converted.to_empty(device="cpu")
        reverso.nn.init_non_persistent_buffers(converted)
        for m in converted.modules():  # the fixed frames are back, with their values
            if isinstance(m, DynamicSteerableConv2d):
                assert torch.allclose(m.atoms, m.frame().float())
            if isinstance(m, reverso.nn.FrameConv2d):
                assert torch.allclose(
                    m.atoms, reverso.nn.frame_atoms(m.frame, m.kernel_size).float()
                )


def test_out_of_range_settings_are_refused_before_any_layer_is_built():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(OptionError, match="order must be a positive int"):
        reverso.steerable(model, order=0)
    with pytest.raises(OptionError, match="sigma must be a positive number"):
        reverso.steerable(model, sigma=-1.0)
    with pytest.raises(OptionError, match="sigma must be a positive number"):
        reverso.frames(model, sigma=0.0)
    plain = nn.Sequential(
        model[0],
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with pytest.raises(OptionError, match="Q"):
        reverso.hierarchical(plain, (3, 16, 16), Q=0)
    with pytest.raises(OptionError, match="odd"):
        reverso.hierarchical(plain, (3, 16, 16), attr_kernel=(4, 4))
