"""Hierarchical attribute convolutions, the thesis's CIFAR models and the hierarchical pass
(docs/methods/hcnn.md, sections 5, 6, 9 and 10)."""

import pytest
import timm
import torch
import torch.nn.functional as F

import reverso
from reverso.errors import OptionError, UnsupportedTopologyError
from reverso.nn import HConv2d, HLift, HReadout
from reverso.nn.hierarchical import factorise


@pytest.mark.parametrize(
    "name, count",
    [("hcnn_cifar10", 97_650), ("hcnn_plus_cifar10", 344_640),
     ("hcnn_cifar100", 250_308), ("hcnn_plus_cifar100", 887_424)],
)  # fmt: skip
def test_the_cifar_models_have_the_thesis_parameter_counts(name, count):
    model = reverso.models.create(name)
    assert sum(p.numel() for p in model.parameters()) == count
    y = model(torch.rand(2, 3, 32, 32))
    assert y.shape == (2, 100 if "100" in name else 10)


def test_shape_law_and_per_q_statistics():
    layer = HConv2d(8, 16, 16, Q=4, stride=2)
    assert layer(torch.rand(2, 8, 16, 12, 10)).shape == (2, 8, 16, 6, 5)
    assert layer(torch.rand(2, 128, 12, 10)).shape == (2, 128, 6, 5)  # flattened in a graph
    odd = HConv2d(4, 11, 5, Q=3, attr_kernel=(3, 5))
    assert odd(torch.rand(1, 4, 11, 7, 7)).shape == (1, 6, 5, 7, 7)  # ceil(11 / 2) = 6
    for m in (layer, odd):  # statistics per q and per output, whatever the attribute sizes
        assert m.norm_h.running_mean.shape == (m.Q,) and m.norm_g.running_mean.shape == (m.k_out,)
    assert HLift(16, 16)(torch.rand(2, 16, 8, 8)).shape == (2, 128, 8, 8)
    assert HReadout(10)(torch.rand(2, 80, 4, 4)).shape == (2, 10)


def explicit_4d(x, w, stride):
    """Reference: the 4-D convolution along (u1, u2, a, k) with zero padding and attribute stride
    2, by a loop over the filter taps: (B, k_out, H', W', A', K') from x (B, A, K, H, W)."""
    k_out, k, _, ak, bk = w.shape
    pad = F.pad(x, (k // 2, k // 2, k // 2, k // 2))
    pad = F.pad(pad.permute(0, 3, 4, 1, 2), (bk // 2, bk // 2, ak // 2, ak // 2))  # (B, H, W, A, K)
    b, hh, ww, a, kk = x.shape[0], x.shape[3], x.shape[4], x.shape[1], x.shape[2]
    ho, wo, ao, ko = -(-hh // stride), -(-ww // stride), -(-a // 2), -(-kk // 2)
    out = x.new_zeros(b, k_out, ho, wo, ao, ko)
    for dy in range(k):
        for dx in range(k):
            for da in range(ak):
                for db in range(bk):
                    patch = pad[
                        :,
                        dy : dy + stride * ho : stride,
                        dx : dx + stride * wo : stride,
                        da : da + 2 * ao : 2,
                        db : db + 2 * ko : 2,
                    ]
                    out += w[:, dy, dx, da, db].view(1, -1, 1, 1, 1, 1) * patch[:, None]
    return out


def test_the_cifar_model_moves_to_channels_last_and_loads_a_5d_lift_weight():
    """Every parameter is at most 4-D (torch's channels_last refuses 5-D ones), and a lift weight
    saved as the conv3d's (k_out, 1, a, k, k) kernel loads into the same layer."""
    torch.manual_seed(0)
    model = reverso.models.create("hcnn_cifar10").eval()
    x = torch.rand(2, 3, 32, 32)
    expected = model(x)
    last = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(last(x.to(memory_format=torch.channels_last)), expected)
    lift = HLift(16, 16)
    old = {k: v.unsqueeze(1) if k == "weight" else v for k, v in lift.state_dict().items()}
    fresh = HLift(16, 16)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.weight, lift.weight)


@pytest.mark.parametrize("stride", [1, 2])
def test_the_linear_layer_is_an_explicit_4d_convolution(stride):
    torch.manual_seed(0)
    layer = HConv2d(4, 6, 3, attr_kernel=(3, 5), stride=stride, variant="linear").double().eval()
    x = torch.randn(2, 4, 6, 5, 5, dtype=torch.float64)
    activated = F.elu(explicit_4d(x, layer.filters(), stride) / (1 + layer.norm_g.eps) ** 0.5)
    expected = activated.mean(dim=4).permute(0, 4, 1, 2, 3)  # the oldest attribute marginalised
    assert torch.allclose(layer(x), expected, atol=1e-10)


def test_nine_spatial_filters_hold_any_3x3_filter_bank_and_eight_do_not():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 7, 11, dtype=torch.float64)
    h, g, error = factorise(w, 9)
    assert error < 1e-12
    assert torch.allclose(torch.einsum("qyx,oqab->oyxab", h[:, 0], g), w, atol=1e-12)
    assert factorise(w, 8)[2] > 1e-3


def roll(t, shift, dim):
    return torch.roll(t, shift, dims=dim)


def test_attribute_and_space_covariance_with_circular_padding():
    torch.manual_seed(0)
    layer = HConv2d(8, 16, 4, Q=3, attr_kernel=(3, 5), stride=2, padding="circular").double().eval()
    x = torch.randn(1, 8, 16, 8, 8, dtype=torch.float64)
    y = layer(x)
    assert torch.allclose(layer(roll(x, 2 * 3, 2)), roll(y, 3, 1), atol=1e-12)  # along k_in
    assert torch.allclose(layer(roll(x, 2 * 2, 1)), y, atol=1e-12)  # along a_in: marginalised
    assert not torch.allclose(layer(roll(x, 1, 1)), y, atol=1e-6)  # an odd roll is not
    shifted = layer(roll(roll(x, 2 * 1, 3), 2 * 2, 4))
    assert torch.allclose(shifted, roll(roll(y, 1, 3), 2, 4), atol=1e-12)  # space, by the stride


def test_logits_are_invariant_to_shifts_of_an_intermediate_layer():
    """Proposition 5.3.1 on a small model (circular padding, eval): shifting x_j along space by the
    downstream stride product, its first attribute by 2 or its last by 4 leaves the logits."""
    torch.manual_seed(0)
    from reverso.hcnn import hcnn

    model = hcnn(4, K=8, Q=3, attr_kernel=(3, 5), padding="circular").double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    head, tail = model[:5], model[5:]  # x_3, then layers 4-11 (strides 2 at 5 and 9) and readout
    x3 = head(x).view(2, 4, 8, 16, 16)  # stored (v_2: 4, v_3: 8)
    logits = tail(x3.flatten(1, 2))
    for shifted in (roll(x3, 4, 3), roll(x3, 2, 1), roll(x3, 4, 2)):
        assert torch.allclose(tail(shifted.flatten(1, 2)), logits, atol=1e-10)
    assert not torch.allclose(tail(roll(x3, 1, 1).flatten(1, 2)), logits, atol=1e-6)


@pytest.mark.parametrize("name", ["lenet_fc", "nin_light", "nin"])
@pytest.mark.parametrize("head", ["keep", "readout"])
def test_the_pass_rebuilds_plain_cnns(name, head):
    torch.manual_seed(0)
    model = reverso.models.create(name)
    size = model.pretrained_cfg["input_size"]
    converted = reverso.hierarchical(model, size, K=8, Q=4, head=head)
    layers = [m for m in converted.modules() if isinstance(m, HConv2d)]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert len(layers) == convs - 1  # the first conv is layer 1 and the lift
    assert all((m.a_in, m.k_in) == (4, 8) for m in layers)  # one width, (K/2) K
    y = converted(torch.rand(2, *size))
    y.sum().backward()
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_the_pass_keeps_a_weighted_head_and_refuses_residual_models():
    torch.manual_seed(0)
    vgg = timm.create_model("vgg11_bn", num_classes=10)
    vgg.pre_logits.fc1.padding_mode = "reflect"
    converted = reverso.hierarchical(vgg, (3, 32, 32), K=8, Q=4)
    fc1 = converted.pre_logits.fc1  # rebuilt for the (K/2) K channels, its other settings kept
    assert (fc1.in_channels, fc1.kernel_size, fc1.padding_mode) == (32, (7, 7), "reflect")
    for model in (
        converted,
        reverso.hierarchical(timm.create_model("lcnet_050", num_classes=10), (3, 32, 32), K=8, Q=4),
    ):
        y = model(torch.rand(2, 3, 32, 32))  # the sweep's plain CNNs train
        y.sum().backward()
        assert y.shape == (2, 10) and torch.isfinite(y).all()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(UnsupportedTopologyError, match="residual shortcut"):
        reverso.hierarchical(timm.create_model("resnet18"), (3, 32, 32))
    with pytest.raises(OptionError, match="even"):
        reverso.hierarchical(vgg, (3, 32, 32), K=7)


def test_a_dilated_conv_is_refused():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    with pytest.raises(UnsupportedTopologyError, match=r"conv '_2' is dilated \(2, 2\)"):
        reverso.hierarchical(model, (3, 16, 16), K=8, Q=4)


@pytest.mark.parametrize("down", ["max", "resize"])
def test_a_pool_or_a_shrinking_resize_folds_into_the_next_layers_stride(down):
    """The pass folds a pool into the next HCNN layer's stride: a bilinear resize by 0.5 is
    such a pool, and the rebuilt layer downsamples by 2 (its map is not left 2x too large)."""
    pool = torch.nn.MaxPool2d(2) if down == "max" else torch.nn.Upsample(scale_factor=0.5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        pool,
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    converted = reverso.hierarchical(model, (3, 16, 16), K=8, Q=4)
    assert [m.stride for m in converted.modules() if isinstance(m, HConv2d)] == [2]
    assert not any(
        isinstance(m, (torch.nn.MaxPool2d, torch.nn.Upsample)) for m in converted.modules()
    )
    assert converted(torch.rand(2, 3, 16, 16)).shape == (2, 10)


class _Tokens(torch.nn.Module):
    """A conv stem whose maps become tokens for a Linear layer (as TNT's pixel embedding)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mix, self.fc = torch.nn.Linear(8, 8), torch.nn.Linear(8, 10)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (B, N, C)
        return self.fc(self.mix(tokens).mean(1))


@pytest.mark.parametrize("head", ["keep", "readout"])
def test_a_model_that_goes_on_working_on_its_maps_is_refused(head):
    # rebuilding its "head" would have to re-width the tokens (keep) or drop them (readout)
    with pytest.raises(UnsupportedTopologyError, match=r"'flatten'.*\(2, 8, 256\).*tokens"):
        reverso.hierarchical(_Tokens(), (3, 32, 32), K=8, Q=4, head=head)


def test_a_rebuilt_model_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    converted = reverso.hierarchical(reverso.models.create("nin_light"), (1, 28, 28), K=8, Q=4)
    loaded = reverso.load(reverso.save(converted, tmp_path / "hcnn.safetensors"))
    x = torch.rand(2, 1, 28, 28)
    converted.eval(), loaded.eval()
    assert torch.equal(converted(x), loaded(x))


def test_the_jacobian_shares_weights_along_both_attribute_axes():
    """Block-circulant along the attributes (circular padding): moving the input by 2 along k_in
    and the output by 1 along its first axis, or the input by 2 along a_in, leaves the Jacobian
    unchanged, which a dense 1x1 mixing of the flattened channels would not."""
    torch.manual_seed(0)
    layer = (
        HConv2d(4, 4, 2, attr_kernel=(3, 3), padding="circular", variant="linear").double().eval()
    )
    x = torch.zeros(1, 4, 4, 3, 3, dtype=torch.float64)  # ELU'(0) = 1: the linear part
    jac = torch.autograd.functional.jacobian(layer, x)[0]  # (K', k_out, H, W, 1, a, k, H, W)
    assert torch.allclose(jac.roll(1, 0).roll(2, 6), jac, atol=1e-12)  # along k: shared
    assert torch.allclose(jac.roll(2, 5), jac, atol=1e-12)  # along a: shared, then marginalised
    assert not torch.allclose(jac.roll(1, 6), jac, atol=1e-6)  # not any roll: a structure
