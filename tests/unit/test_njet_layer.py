"""NJetConv2d and structured receptive fields as layers."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from reverso.nn import NJetConv2d, structured_receptive_field
from reverso.nn.gaussian import basis_size


@pytest.mark.parametrize(
    ("cin", "cout", "groups", "order", "bias"),
    [(4, 6, 1, 3, False), (4, 6, 2, 2, True), (8, 8, 8, 3, True)],
)
def test_parameter_count(cin, cout, groups, order, bias):
    layer = NJetConv2d(cin, cout, order=order, groups=groups, bias=bias)
    expected = cout * cin // groups * (order + 1) * (order + 2) // 2 + (cout if bias else 0) + 1
    assert sum(p.numel() for p in layer.parameters()) == expected
    fixed = NJetConv2d(cin, cout, order=order, groups=groups, bias=bias, learn_sigma=False)
    assert sum(p.numel() for p in fixed.parameters()) == expected - 1  # sigma is then a buffer


@pytest.mark.parametrize("route", ["dense", "separable"])
def test_gradient_reaches_sigma(route):
    layer = NJetConv2d(3, 4, sigma=1.3, route=route)
    layer(torch.rand(2, 3, 12, 12)).pow(2).mean().backward()
    assert layer.scale.grad is not None and layer.scale.grad.abs().item() > 0
    assert layer.alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("route", ["dense", "separable"])
def test_gradcheck_in_float64(route):
    torch.manual_seed(0)
    layer = NJetConv2d(2, 2, order=2, sigma=0.9, route=route).double()
    x = torch.rand(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, a, s: torch.func.functional_call(layer, {"alpha": a, "scale": s}, (x,)),
        (
            x,
            layer.alpha.detach().clone().requires_grad_(),
            layer.scale.detach().clone().requires_grad_(),
        ),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("route", ["dense", "separable"])
def test_runs_in_half_precision(dtype, route):
    layer = NJetConv2d(4, 4, route=route)
    ref = layer(torch.full((1, 4, 10, 10), 0.5))
    out = layer.to(dtype)(torch.full((1, 4, 10, 10), 0.5, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.05)


@settings(max_examples=25, deadline=None)
@given(
    sigma=st.floats(0.4, 3.0),
    order=st.integers(0, 4),
    stride=st.integers(1, 3),
    h=st.integers(5, 17),
    w=st.integers(5, 17),
    size_rule=st.sampled_from(["paper", "reference"]),
)
def test_both_routes_agree(sigma, order, stride, h, w, size_rule):
    torch.manual_seed(0)
    dense = NJetConv2d(
        3, 5, order=order, sigma=sigma, stride=stride, size_rule=size_rule, route="dense"
    ).double()
    separable = NJetConv2d(
        3, 5, order=order, sigma=sigma, stride=stride, size_rule=size_rule, route="separable"
    ).double()
    separable.load_state_dict(dense.state_dict())
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    assert torch.allclose(dense(x), separable(x), atol=1e-11)


def test_cost_model_picks_the_cheaper_route():
    assert NJetConv2d(64, 64, sigma=1.0).active_route() == "dense"  # 5x5: a dense conv is cheap
    wide = NJetConv2d(64, 64, sigma=1.0)
    with torch.no_grad():
        wide.scale.fill_(1.6)  # sigma 3: a 13x13 support, where linear beats quadratic
    assert wide.eval().active_route() == "separable" and wide.route == "auto"
    assert NJetConv2d(64, 64, sigma=3.0, groups=64).active_route() == "dense"  # depthwise: dense
    # per device: on CUDA cuDNN's dense conv beat the grouped 1D convs up to 17x17 (H100)
    assert wide.active_route("cuda") == "dense"
    assert NJetConv2d(64, 64, sigma=8.0).active_route("cuda") == "separable"  # 33x33


def test_sigma_is_clamped_to_a_safe_range():
    layer = NJetConv2d(2, 2, sigma=1.0, sigma_max=2.0)
    with torch.no_grad():
        layer.scale.fill_(20.0)
    assert layer.sigma.item() == 2.0 and torch.isfinite(layer(torch.rand(1, 2, 8, 8))).all()
    with torch.no_grad():
        layer.scale.fill_(-20.0)
    assert layer.sigma.item() == pytest.approx(layer.sigma_min)
    assert torch.isfinite(layer(torch.rand(1, 2, 8, 8))).all()


def test_fan_in_aware_init_keeps_the_output_scale():
    torch.manual_seed(0)
    for cin in (8, 64):
        layer = NJetConv2d(cin, 64, bias=False)
        x = torch.randn(8, cin, 24, 24)
        ratio = layer(x)[..., 6:-6, 6:-6].var().item() / x.var().item()
        assert 1.0 < ratio < 3.0  # He init: variance doubles, independently of the fan-in


def test_structured_receptive_field_is_a_fixed_multiscale_basis():
    torch.manual_seed(0)
    layer = structured_receptive_field(3, 8, order=2, sigmas=(1.0, 2.0, 4.0)).double()
    assert layer.sigma.tolist() == [1.0, 2.0, 4.0] and not layer.scale.requires_grad
    assert layer.alpha.shape == (8, 3, 3 * basis_size(2))
    assert (
        sum(p.numel() for p in layer.parameters()) == 8 * 3 * 18 + 8
    )  # alpha (the 1x1 mixing) + bias
    x = torch.rand(2, 3, 21, 19, dtype=torch.float64)
    conv = layer.collapse()
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (17, 17)
    assert torch.allclose(conv(x), layer(x), atol=1e-12)


def test_safe_subsampling_shrinks_with_sigma():
    layer = NJetConv2d(2, 2, sigma=1.0, safe_subsampling=True)
    small = layer(torch.rand(1, 2, 64, 64)).shape[-1]
    with torch.no_grad():
        layer.scale.fill_(1.5)  # sigma = 2.83
    assert layer(torch.rand(1, 2, 64, 64)).shape[-1] < small < 64  # (1/2)^(sigma / 4) of the size
    assert NJetConv2d(2, 2)(torch.rand(1, 2, 64, 64)).shape[-1] == 64  # off by default


def test_safe_subsampling_follows_the_paper_or_the_authors_code():
    """Paper: size x (1/2)^(sigma / r); code: size / max(1, 2^sigma / r), r = 4."""
    for rule, sigma, expected in (
        ("paper", 2.0, round(64 * 0.5**0.5)),
        ("code", 2.0, 64),
        ("code", 3.0, 32),
        ("code", 4.0, 16),
    ):
        layer = NJetConv2d(
            2, 2, sigma=sigma, safe_subsampling=True, subsampling_rule=rule, learn_sigma=False
        )
        out = layer(torch.rand(1, 2, 64 + 2 * layer.radius, 64 + 2 * layer.radius))
        assert layer._subsample(torch.rand(1, 2, 64, 64)).shape[-1] == expected, (rule, sigma)
        assert out.dim() == 4
    with pytest.raises(ValueError, match="subsampling_rule"):
        NJetConv2d(2, 2, subsampling_rule="tf")


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size_rule"):
        NJetConv2d(2, 2, size_rule="tf")
    with pytest.raises(ValueError, match="groups"):
        NJetConv2d(3, 4, groups=2)
    with pytest.raises(ValueError, match="separable"):
        NJetConv2d(4, 4, groups=2, route="separable")
    with pytest.raises(ValueError, match="sigma"):
        NJetConv2d(2, 2, sigma=0.0)


def test_cropping_the_taps_no_output_reads_changes_nothing():
    """On maps smaller than the kernel, the taps that only ever meet padding are cropped with the
    padding: the same outputs and output size, for every size, stride and (uneven) padding."""
    from reverso.nn.padding import crop_unreached_taps

    torch.manual_seed(0)
    weight = torch.randn(3, 2, 9, 9, dtype=torch.float64)
    for size in [(1, 1), (2, 3), (4, 4), (5, 2), (12, 12)]:
        x = torch.randn(1, 2, *size, dtype=torch.float64)
        for stride in (1, 2, 3):
            for pads in [(4, 4, 4, 4), (3, 5, 4, 4), (0, 0, 0, 0), (6, 2, 1, 7)]:
                padded = F.pad(x, pads)
                if min(padded.shape[-2:]) < 9:
                    continue
                expected = F.conv2d(padded, weight, stride=stride)
                w, p = crop_unreached_taps(weight, pads, size, stride)
                assert torch.allclose(F.conv2d(F.pad(x, p), w, stride=stride), expected, atol=1e-12)
                assert w.shape[-1] <= min(9, size[1] + max(pads[:2]))  # the crop happened


def test_a_large_support_on_a_small_map_computes_only_what_meets_it():
    torch.manual_seed(0)
    layer = NJetConv2d(3, 4, sigma=4.0, route="dense", learn_sigma=False).double()  # 17x17
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, layer.padding), layer.effective_weight(), layer.bias)
    assert torch.allclose(layer(x), expected, atol=1e-12)


def test_auto_takes_the_dense_route_when_the_map_crops_the_kernel():
    layer = NJetConv2d(64, 64, sigma=4.0)  # 17x17: separable on a large map, on the CPU
    assert layer.active_route("cpu", (64, 64)) == "separable"
    assert layer.active_route("cpu", (4, 4)) == "dense"  # 7x7 taps meet a 4x4 map
