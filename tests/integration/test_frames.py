"""Frame convolutions and the frames pass (docs/methods/structured.md, sections 1, 2, 7 and 8)."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import reverso
from reverso.errors import OptionError, UnsupportedTopologyError
from reverso.nn import FRAMES, FrameConv2d, frame_atoms
from reverso.nn.frames import frame_rank
from reverso.nn.gaussian import gaussian_basis_2d


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("size", [3, (1, 3), (3, 1), 5])
def test_named_frames_are_complete(frame, size):
    if frame == "framelet" and size == 5:
        with pytest.raises(ValueError, match="framelet"):
            frame_atoms(frame, size)
        return
    atoms = frame_atoms(frame, size)
    k = size if isinstance(size, int) else size[0] * size[1]
    pixels = k * k if isinstance(size, int) else k
    assert atoms.shape[0] == pixels and frame_rank(atoms) == pixels


def test_framelets_are_the_b_spline_filters_and_not_orthogonal():
    atoms = frame_atoms("framelet", (1, 3))[:, 0]  # the three 1D filters, at unit norm
    h0, h2 = (
        torch.tensor([1.0, 2, 1], dtype=torch.float64),
        torch.tensor([-1.0, 2, -1], dtype=torch.float64),
    )
    assert torch.allclose(atoms[0], h0 / h0.norm()) and torch.allclose(atoms[2], h2 / h2.norm())
    assert atoms[0] @ atoms[2] == pytest.approx(2 / 6)  # non-orthogonal (2/16 before scaling)


def test_the_third_order_jet_on_3x3_is_rank_deficient_and_warned_about():
    jet = gaussian_basis_2d(1.0, 3, torch.arange(-1.0, 2.0))  # G^{i,j}, i + j <= 3: 10 atoms
    assert frame_rank(jet) == 8
    with pytest.warns(UserWarning, match="spans 8 of the 9"):
        FrameConv2d(2, 2, 3, frame=jet)


CONVS = [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=2, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=(1, 3), padding="same", padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=5, padding=2, padding_mode="circular"),
]


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("settings", CONVS)
def test_exact_conversion_and_collapse_reproduce_the_conv(frame, settings):
    if frame == "framelet" and settings["kernel_size"] == 5:
        return
    torch.manual_seed(0)
    conv = nn.Conv2d(**settings)
    layer, error = FrameConv2d.from_conv(conv, frame)
    assert error < 1e-6 and torch.allclose(layer.weight, conv.weight, atol=1e-6)
    x = torch.randn(2, 4, 11, 10)
    assert torch.allclose(layer(x), conv(x), atol=1e-5)
    collapsed = layer.collapse()
    assert type(collapsed) is nn.Conv2d and torch.allclose(collapsed(x), conv(x), atol=1e-5)


def test_a_gradient_step_moves_the_kernel_by_the_frame_metric():
    """SGD on the coefficients moves the kernel by -lr Phi^T Phi g (g the pixel gradient)."""
    torch.manual_seed(0)
    layer = FrameConv2d(3, 2, 3, padding=1, frame="naive").double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    before = layer.weight.detach().clone()
    pixel = before.clone().requires_grad_()
    F.conv2d(x, pixel, layer.bias, padding=1).square().sum().backward()
    layer(x).square().sum().backward()
    with torch.no_grad():
        layer.coeff -= 0.01 * layer.coeff.grad
    phi = layer.atoms.double().reshape(9, 9)  # (M, pixels)
    expected = before - 0.01 * (pixel.grad.reshape(-1, 9) @ phi.T @ phi).reshape(before.shape)
    assert torch.allclose(layer.weight.detach(), expected, atol=1e-10)
    assert not torch.allclose(phi.T @ phi, torch.eye(9, dtype=torch.float64))  # not plain SGD


def test_frames_converts_a_timm_model_exactly_and_reports_what_it_kept():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64)
    converted = reverso.frames(model, input_size=(3, 64, 64))
    assert type(converted) is type(model)
    assert torch.allclose(converted(x), model(x), atol=1e-4)
    assert len(converted.frames_report.layers) == 17 and converted.frames_report.max_error < 1e-6
    framelets = reverso.frames(model, frame="framelet")
    assert framelets.frames_report.kept == [("conv1", "a 7x7 kernel (framelets are 3-tap)")]
    alternate = reverso.frames(model, frame="alternate").frames_report.layers
    assert [f for _, f, _ in alternate[:4]] == ["gauss9", "framelet"] * 2
    plain = reverso.collapse_frames(converted)
    assert not any(isinstance(m, FrameConv2d) for m in plain.modules())
    assert torch.allclose(plain(x), model(x), atol=1e-4)


def test_a_frame_conv_on_its_own_collapses_to_its_plain_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    framed, _ = FrameConv2d.from_conv(conv, "gauss9")
    plain = reverso.collapse_frames(framed)
    x = torch.rand(2, 3, 8, 8)
    assert type(plain) is nn.Conv2d and torch.allclose(plain(x), conv(x), atol=1e-5)


def test_convs_that_compute_something_else_are_kept_and_bad_input_is_refused():
    from timm.layers import StdConv2d

    model = nn.Sequential(StdConv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    report = reverso.frames(model).frames_report
    assert report.kept == [("0", "StdConv2d overrides Conv2d.forward")] and len(report.layers) == 1
    with pytest.raises(UnsupportedTopologyError, match=r"no spatial nn\.Conv2d"):
        reverso.frames(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten()))
    with pytest.raises(OptionError, match="gauss9"):
        reverso.frames(model, frame="wavelet")


def test_frames_compose_with_topdown():
    torch.manual_seed(0)
    td = reverso.topdown(
        timm.create_model("resnet18", num_classes=10), input_size=(3, 64, 64)
    ).eval()
    framed = reverso.frames(td)
    x = torch.rand(2, 3, 64, 64)
    assert any(isinstance(m, FrameConv2d) for m in framed.modules())
    assert torch.allclose(framed(x), td(x), atol=1e-4)


def test_receptive_fields_see_through_the_structured_layers():
    from reverso.nn import DynamicSteerableConv2d

    model = reverso.models.create("lenet_fc")
    plain = reverso.receptive_fields(model, input_size=(1, 28, 28))
    framed = reverso.receptive_fields(reverso.frames(model), input_size=(1, 28, 28))
    assert [rf for _, (_, rf) in framed.rows.items()] == [rf for _, (_, rf) in plain.rows.items()]
    assert len(framed.convs()) == len(plain.convs())
    steer = nn.Sequential(DynamicSteerableConv2d(1, 2, kernel_size=3, stride=2))
    ((_kind, rf),) = [
        v
        for v in reverso.receptive_fields(steer, input_size=(1, 16, 16)).rows.values()
        if v[0].startswith("steerable")
    ]
    assert rf.max == 3 + 2 * 4 and rf.jump == 2  # the frame, then the pose net's 5x5 at stride 2


@pytest.mark.parametrize("dilation", [(1, 1), (2, 1)])
def test_the_gram_error_equals_the_projection_error(dilation):
    """projection_error reads the kernels once (their Gram matrix) and gives project_kernels'
    relative error, for complete, incomplete and larger-than-kernel frames."""
    from reverso.nn.frames import kernel_gram, project_kernels, projection_error
    from reverso.nn.steerable import steerable_frame

    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3)
    gram = kernel_gram(weight)
    for atoms in (steerable_frame(2, 1.0, 3), steerable_frame(3, 1.3, 7), frame_atoms("gauss9", 3)):
        if atoms.shape[-1] < 2 * dilation[0] + 1:
            continue
        expected = project_kernels(atoms, weight, dilation)[1]
        assert projection_error(atoms, gram, (3, 3), dilation) == pytest.approx(expected, abs=1e-9)
