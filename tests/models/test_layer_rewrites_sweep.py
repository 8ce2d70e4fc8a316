"""The built-in layer rewrites (antialias, frames, njet, steerable) on timm's tiny test models and
every model of the timm sweep (reverso.support.SWEEP): real architectures, built untrained.
(The default tier runs each rewrite on timm's test_resnet in tests/integration/test_saving.py.)"""

import pytest
import timm
import torch
from torch import nn

import reverso
from reverso.errors import UnsupportedTopologyError
from reverso.nn import DynamicSteerableConv2d, FrameConv2d, NJetConv2d
from reverso.support import SWEEP

TIMM_TEST_MODELS = ["test_resnet", "test_efficientnet", "test_convnext"]

IDENTITY_MODELS = ["resnet18", "mobilenetv2_100", "vgg11_bn", "densenet121", "convnext_atto"]
CEIL_MODE_MODELS = [
    "resnet18d",
    "ese_vovnet19b_dw",
]  # ceil_mode avg-pool shortcut, ceil_mode max-pools
SAME_PADDING_MODELS = ["tf_mobilenetv3_small_minimal_100"]  # timm's Conv2dSame
ANTIALIAS_MODELS = [
    "test_resnet",
    "test_convnext",
    *IDENTITY_MODELS,
    *CEIL_MODE_MODELS,
    *SAME_PADDING_MODELS,
]


@pytest.mark.parametrize("name", ANTIALIAS_MODELS)
def test_filter_size_one_is_the_identity_rewrite(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval().double()
    rewritten = reverso.antialias(model, input_size=(3, 64, 64), filter_size=1)
    assert rewritten.antialiased  # something was rewritten
    for size in [(64, 64), (67, 61)]:
        x = torch.rand(2, 3, *size, dtype=torch.float64)
        assert torch.allclose(rewritten(x), model(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ANTIALIAS_MODELS)
def test_output_sizes_and_weights_are_kept(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    rewritten = reverso.antialias(model, input_size=(3, 64, 64))
    for size in [(64, 64), (67, 61), (97, 35)]:
        x = torch.rand(1, 3, *size)
        shapes = {}
        for net, key in ((model, "bu"), (rewritten, "aa")):
            gm = reverso.trace(net, (3, *size))
            shapes[key] = [tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.op == "output"]
        assert shapes["aa"] == shapes["bu"] and rewritten(x).shape == model(x).shape
    original, new = model.state_dict(), rewritten.state_dict()
    assert original.keys() == new.keys()  # blur filters are fixed buffers outside the state_dict
    assert all(torch.equal(original[k], new[k]) for k in original)
    rewritten.load_state_dict(original)  # a pretrained checkpoint loads as it is


@pytest.mark.parametrize("name", [*TIMM_TEST_MODELS, *SWEEP])
def test_frames_runs_on_the_timm_sweep(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    converted = reverso.frames(model, frame="alternate")
    assert any(isinstance(m, FrameConv2d) for m in converted.modules())
    y = converted(torch.rand(2, 3, 32, 32))
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in converted.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", [*TIMM_TEST_MODELS, *SWEEP])
def test_njet_runs_on_the_timm_sweep(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    spatial = sum(isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 for m in model.modules())
    converted = reverso.njet(model, input_size=(3, 64, 64))
    assert type(converted) is type(model)  # a timm model stays a timm model
    assert not any(type(m) is nn.Conv2d and max(m.kernel_size) > 1 for m in converted.modules())
    assert any(isinstance(m, NJetConv2d) for m in converted.modules())
    y = converted(torch.rand(2, 3, 64, 64))
    y.sum().backward()
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in converted.parameters() if p.grad is not None)
    assert (
        sum(isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 for m in model.modules()) == spatial
    )  # untouched


@pytest.mark.parametrize("name", [*TIMM_TEST_MODELS, *SWEEP])
def test_steerable_runs_on_the_timm_sweep(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    x = torch.rand(2, 3, 32, 32)
    for unit in ("conv", "block"):
        try:
            converted = reverso.steerable(model, input_size=(3, 32, 32), unit=unit)
        except UnsupportedTopologyError as refusal:  # no groups=1 spatial conv, or no units
            assert ("no residual units" if unit == "block" else "groups=1") in str(refusal)
            continue
        assert any(isinstance(m, DynamicSteerableConv2d) for m in converted.modules())
        y = converted(x)
        y.sum().backward()
        assert torch.isfinite(y).all()
        assert all(
            torch.isfinite(p.grad).all() for p in converted.parameters() if p.grad is not None
        )
