"""The closed-form shape rules agree with the layers they stand for."""

import pytest
import timm.layers as tl
import torch
from torch import nn

from reverso.frontend.tracing import register_timm_norm_shapes
from reverso.ir.shape_rules import SHAPE_RULES
from reverso.names import PYRAMIDS
from reverso.nn import ImagePyramid

register_timm_norm_shapes()  # what the first trace does

NORMS = [
    nn.BatchNorm2d(8),
    nn.BatchNorm2d(8, affine=False),
    nn.BatchNorm2d(8, affine=False, track_running_stats=False),
    nn.GroupNorm(2, 8),
    nn.GroupNorm(2, 8, affine=False),
    tl.BatchNormAct2d(8, act_layer=nn.SiLU),
    tl.GroupNormAct(8, num_groups=2),
    tl.GroupNorm1(8),
    tl.LayerNorm2d(8),
    tl.LayerNormAct2d(8),
]


def _real(module, x):
    try:
        return tuple(module.eval()(x).shape)
    except (RuntimeError, ValueError):
        return "error"


def _rule(module, x):
    try:
        return tuple(SHAPE_RULES[type(module)](module, x.to("meta")).shape)
    except RuntimeError:
        return "error"


@pytest.mark.parametrize("norm", NORMS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("channels", [8, 6, 3])
def test_norm_rules_agree_with_the_layers(norm, channels):
    x = torch.rand(2, channels, 5, 7)
    assert _rule(norm, x) == _real(norm, x)


@pytest.mark.parametrize("kind", PYRAMIDS)
@pytest.mark.parametrize("size", [(16, 16), (17, 10), (5, 3)])
def test_the_pyramid_rule_gives_every_levels_size(kind, size):
    pyramid = ImagePyramid((0, 1, 2, 3), kind)
    x = torch.rand(1, 3, *size)
    real = [tuple(level.shape) for level in pyramid(x)]
    assert [tuple(t.shape) for t in SHAPE_RULES[ImagePyramid](pyramid, x.to("meta"))] == real


def test_layers_run_on_meta_tensors_make_the_real_kernels_groups_check():
    """A meta conv kernel accepts a weight whose output channels do not divide into the groups
    (9 outputs, 2 groups); the real one refuses it, and so does the shape propagation, which is
    all that proves a converted network runs."""
    import torch.fx as fx
    import torch.nn.functional as F

    from reverso.ir.shapes import propagate

    class OddGroups(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(9, 4, 3, 3))

        def forward(self, x):
            return F.conv2d(x, self.weight, groups=2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = OddGroups()

        def forward(self, x):
            return self.layer(x)

    with pytest.raises(RuntimeError, match="groups"):
        Net()(torch.rand(1, 8, 6, 6))

    class KeepsLayers(fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, OddGroups) or super().is_leaf_module(m, name)

    net = Net()
    gm = fx.GraphModule(net, KeepsLayers().trace(net))  # the layer stays one node
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    with pytest.raises(RuntimeError, match="groups=2"):
        propagate(gm, torch.empty(1, 8, 6, 6, device="meta"))
