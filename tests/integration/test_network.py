"""The emitted network: a plain nn.Module that behaves like a timm model and like any PyTorch model."""

import copy

import pytest
import torch
import torch.nn.functional as F

import reverso


@pytest.fixture(scope="module")
def resnet32_td(golden):
    torch.manual_seed(0)
    return reverso.topdown(golden.ResNet32(), input_size=(3, 32, 32))


def test_timm_style_interface(resnet32_td):
    td = resnet32_td
    x = torch.rand(2, 3, 32, 32)
    features = td.forward_features(x)
    assert features.shape == (
        2,
        16,
        32,
        32,
    )  # ends at full input resolution, the last group's width
    assert td.num_classes == 10 and td.num_features == 16
    td.eval()
    assert torch.allclose(td.forward_head(td.forward_features(x)), td(x))
    td.train()
    assert td.forward_head(features, pre_logits=True).shape == (2, 16)
    assert [f["reduction"] for f in td.feature_info] == [1, 2, 4, 4]  # finest first, as timm
    assert td.pretrained_cfg["input_size"] == (3, 32, 32)
    assert isinstance(td.get_classifier(), torch.nn.Module)


def test_reset_classifier(golden):
    td = reverso.topdown(golden.ResNet32(), input_size=(3, 32, 32))
    td.reset_classifier(3)
    assert td(torch.rand(1, 3, 32, 32)).shape == (1, 3) and td.num_classes == 3
    x = torch.rand(1, 3, 32, 32)
    pre_logits = td.forward_head(td.forward_features(x), pre_logits=True)
    td.reset_classifier(0)  # timm's convention: no classifier, pre-logit features out
    assert td(x).shape == pre_logits.shape and td.num_classes == 0
    td.reset_classifier(7)  # and back
    assert td(x).shape == (1, 7) and td.num_classes == 7
    with pytest.raises(reverso.OptionError, match="num_classes must be an int >= 0"):
        td.reset_classifier(-1)


def test_prints_readable_code(resnet32_td):
    code = resnet32_td.code
    assert "def forward(self, x)" in code and "pyramid" in code and "merge" in code
    assert "level_2" in code  # the coarsest pyramid level feeds the stem
    printed = str(resnet32_td)
    assert printed.startswith("TopDownNet(") and "def forward(self, x)" in printed


@pytest.mark.parametrize("size", [(32, 32), (37, 29), (65, 40), (8, 8)])
def test_other_input_sizes(resnet32_td, size):
    y = resnet32_td(torch.rand(2, 3, *size))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert resnet32_td.forward_features(torch.rand(1, 3, *size)).shape[-2:] == size


def test_state_dict_round_trip_is_exact(resnet32_td, golden):
    other = reverso.topdown(golden.ResNet32(), input_size=(3, 32, 32))
    other.load_state_dict(resnet32_td.state_dict())
    x = torch.rand(2, 3, 32, 32)
    resnet32_td.eval(), other.eval()
    assert torch.equal(resnet32_td(x), other(x))
    resnet32_td.train()


def test_construction_is_deterministic_under_a_seed(golden):
    bu = golden.ResNet32()
    torch.manual_seed(3)
    a = reverso.topdown(bu, input_size=(3, 32, 32))
    torch.manual_seed(3)
    b = reverso.topdown(bu, input_size=(3, 32, 32))
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_does_not_share_parameters_with_the_bottom_up_model(golden):
    bu = golden.LeNetFC()
    td = reverso.topdown(bu, input_size=(1, 28, 28))
    bu_ids = {id(p) for p in bu.parameters()} | {p.data_ptr() for p in bu.parameters()}
    assert not any(id(p) in bu_ids or p.data_ptr() in bu_ids for p in td.parameters())
    assert bu.training and td.training


def test_moves_with_to_device_and_dtype(resnet32_td):
    td = copy.deepcopy(resnet32_td).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in td.parameters())
    assert td(torch.rand(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    assert all(
        b.dtype == torch.float64 for b in td.features.pyramid.buffers()
    )  # fixed filters move too


def test_forward_has_no_host_synchronisation(resnet32_td):
    for gm in (resnet32_td.features, resnet32_td.head.pre_logits, resnet32_td.head.fc):
        for node in gm.graph.nodes:
            assert not (
                node.op == "call_method" and node.target in {"item", "cpu", "tolist", "numpy"}
            ), node


def test_bf16_autocast_and_channels_last(resnet32_td):
    td = copy.deepcopy(resnet32_td).eval().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = resnet32_td.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = td(x.to(memory_format=torch.channels_last))
    resnet32_td.train()
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), ref, atol=5e-2, rtol=5e-2)


def test_torch_export(resnet32_td):
    td = copy.deepcopy(resnet32_td).eval()
    x = torch.rand(2, 3, 32, 32)
    exported = torch.export.export(td, (x,))
    assert torch.allclose(exported.module()(x), td(x))


def test_backward_reaches_every_parameter(resnet32_td):
    td = copy.deepcopy(resnet32_td)
    F.cross_entropy(td(torch.rand(4, 3, 32, 32)), torch.arange(4)).backward()
    missing = [
        n for n, p in td.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert not missing


def test_shares_no_module_with_the_bottom_up_model(golden):
    bu = golden.LeNetFC().eval()
    td = reverso.topdown(bu, input_size=(1, 28, 28))
    assert not ({id(m) for m in td.modules()} & {id(m) for m in bu.modules()})
    td.train()
    assert not any(
        m.training for m in bu.modules()
    )  # switching the network's mode leaves the model alone


def test_a_network_converted_on_the_meta_device_materialises_with_its_filters(golden):
    with torch.device("meta"):
        model = golden.ResNet32()
    td = reverso.topdown(model, input_size=(3, 32, 32), upsample="blur")
    assert all(t.is_meta for t in td.state_dict().values())
    td = reverso.nn.init_non_persistent_buffers(td.to_empty(device="cpu"))
    reference = reverso.topdown(golden.ResNet32(), input_size=(3, 32, 32), upsample="blur")
    fixed = {n: b for n, b in reference.named_buffers() if n not in reference.state_dict()}
    assert fixed and all(torch.equal(dict(td.named_buffers())[n], b) for n, b in fixed.items())


def test_the_smallest_input_is_the_architectures_not_the_converted_size(converted, golden):
    """Converted at 32 px or at 48 px, the top-down ResNet-32 takes the same smallest input: the
    smallest whose pyramid levels all differ (two levels below the image: 2**1 + 1 = 3 px), it
    runs there and refuses one pixel less."""
    small = converted("ResNet32", (3, 32, 32))[1]
    large = reverso.topdown(golden.ResNet32(), input_size=(3, 48, 48))
    assert small.plan.entry_level == large.plan.entry_level == 2
    assert small.min_size == large.min_size == 3
    large.eval()
    assert large(torch.rand(2, 3, 3, 3)).shape == (2, 10)
    with pytest.raises(reverso.InputSizeError, match="at least 3x3"):
        large(torch.rand(2, 3, 2, 3))
