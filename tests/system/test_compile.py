"""torch.compile on what reverso emits: its layers and networks compile whole (no graph
breaks), with the default inductor backend too. Compiling takes seconds, hence this tier."""

import copy

import pytest
import torch

from reverso.nn import DynamicSteerableConv2d, NJetConv2d


@pytest.fixture(scope="module")
def resnet32_td(converted):
    return converted("ResNet32", (3, 32, 32))[1]


def test_an_njet_layer_compiles_without_graph_breaks():
    """In eval mode (and with a fixed sigma) the layer is one graph; a learnable layer in training
    checks its support first (tests/unit/test_njet_support.py)."""
    torch._dynamo.reset()
    for route in ("dense", "separable"):
        layer = NJetConv2d(3, 4, sigma=1.2, route=route).eval()
        x = torch.rand(2, 3, 10, 10)
        explanation = torch._dynamo.explain(layer)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        assert torch.allclose(compiled(x), layer(x), atol=1e-6)


def test_the_structured_layers_compile_to_one_graph():
    """torch.compile sees each layer whole: no graph break (the steering's constants are plain
    Python data, not numpy calls traced at run time)."""
    from reverso.nn import FrameConv2d, HConv2d

    for layer, x in (
        (DynamicSteerableConv2d(4, 4, order=2, kernel_size=3), torch.rand(2, 4, 8, 8)),
        (DynamicSteerableConv2d(4, 4, order=2, mode="free", pose="shared"), torch.rand(2, 4, 8, 8)),
        (FrameConv2d(4, 4, 3, padding=1), torch.rand(2, 4, 8, 8)),
        (HConv2d(2, 4, 4, Q=3, attr_kernel=(3, 3)), torch.rand(2, 8, 8, 8)),
    ):
        assert torch._dynamo.explain(layer)(x).graph_break_count == 0, type(layer).__name__


def test_a_top_down_net_compiles_without_graph_breaks(resnet32_td):
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(resnet32_td).eval(), backend="aot_eager", fullgraph=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compiled(x), resnet32_td.eval()(x), atol=1e-5)
    resnet32_td.train()


def test_a_top_down_net_compiles_with_inductor(resnet32_td):
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(resnet32_td).eval())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compiled(x), resnet32_td.eval()(x), atol=1e-4)
