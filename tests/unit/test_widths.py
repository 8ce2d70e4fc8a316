"""The width registry: how each layer type is rebuilt at other widths, and how users extend it."""

import warnings

import pytest
import timm.layers as tl
import torch
from torch import nn

import reverso
from reverso import ir
from reverso.rewrite.widths import REGISTRY


@pytest.mark.parametrize(
    ("layer", "cin", "cout", "x_shape"),
    [
        (nn.Conv2d(8, 16, 3, padding=1, bias=False), 5, 7, (2, 5, 6, 6)),
        (nn.Linear(8, 3), 5, 4, (2, 5)),
        (tl.Conv2dSame(8, 16, 3, stride=2), 5, 7, (2, 5, 9, 9)),
        (tl.StdConv2d(8, 16, 3, padding=1), 5, 7, (2, 5, 6, 6)),
        (tl.MixedConv2d(8, 16, [3, 5]), 6, 10, (2, 6, 6, 6)),
    ],
)
def test_width_defining_layers_rebuild_with_fresh_weights(layer, cin, cout, x_shape):
    new = REGISTRY.rebuild(layer, cin, cout)
    assert type(new) is type(layer)
    assert new(torch.rand(x_shape)).shape[1] == cout
    rule = REGISTRY.lookup(new)
    assert (rule.in_width(new), rule.out_width(new)) == (cin, cout)


def test_conv_keeps_its_configuration():
    conv = nn.Conv2d(8, 16, 5, stride=2, padding=4, dilation=2, bias=False, padding_mode="reflect")
    new = REGISTRY.rebuild(conv, 4, 6)
    assert (new.kernel_size, new.stride, new.padding, new.dilation, new.padding_mode) == (
        (5, 5),
        (2, 2),
        (4, 4),
        (2, 2),
        "reflect",
    )
    assert new.bias is None


def test_depthwise_conv_stays_depthwise_and_grouped_convs_check_divisibility():
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    new = REGISTRY.rebuild(dw, 12)
    assert (new.in_channels, new.out_channels, new.groups) == (12, 12, 12)
    grouped = nn.Conv2d(8, 16, 3, groups=4)
    assert REGISTRY.rebuild(grouped, 12, 16).groups == 4
    with pytest.raises(reverso.WidthError, match="groups=4"):
        REGISTRY.rebuild(grouped, 10, 16)


@pytest.mark.parametrize(
    ("norm", "x_shape"),
    [
        (nn.BatchNorm2d(8), (2, 5, 4, 4)),
        (nn.GroupNorm(4, 8), (2, 6, 4, 4)),
        (tl.LayerNorm2d(8), (2, 5, 4, 4)),
        (tl.BatchNormAct2d(8, act_layer=nn.SiLU), (2, 5, 4, 4)),
        (nn.LayerNorm(8), (2, 4, 4, 5)),
    ],
)
def test_norms_follow_their_input_width(norm, x_shape):
    with torch.no_grad():
        for p in norm.parameters():
            p.fill_(3.0)
    width = (
        x_shape[1]
        if not isinstance(norm, nn.LayerNorm) or isinstance(norm, tl.LayerNorm2d)
        else x_shape[-1]
    )
    new = REGISTRY.rebuild(norm, width)
    assert new(torch.rand(x_shape)).shape == x_shape
    assert all(torch.all((p == 1) | (p == 0)) for p in new.parameters())  # fresh affine parameters
    assert all(torch.all(p == 3) for p in norm.parameters())  # the original is untouched
    if isinstance(norm, tl.BatchNormAct2d):
        assert isinstance(new.act, nn.SiLU)


def test_timm_convmlp_head_is_rebuilt():
    from timm.models.vgg import ConvMlp

    mlp = ConvMlp(512, 64, kernel_size=7)
    new = REGISTRY.rebuild(mlp, 32, 64)
    assert new.fc1.in_channels == 32 and new.fc2.out_channels == 64


class Mystery(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c, 1, 1))

    def forward(self, x):
        return x * self.weight


class WithMystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.scale = Mystery(4)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(self.scale(self.pool(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def test_unknown_layer_keeps_its_width_behind_an_entry_projection():
    # in the top-down net `scale` opens the first group and reads the 3-channel image instead of
    # 4 channels: reverso cannot rebuild it, so a 1x1 projection gives it the 4 channels it reads
    td = reverso.topdown(WithMystery(), input_size=(3, 16, 16), leaf_modules=[Mystery])
    (mystery,) = [m for m in td.modules() if isinstance(m, Mystery)]
    assert mystery.weight.shape[0] == 4
    entries = [m for name, m in td.named_modules() if name.endswith("entry")]
    assert entries and all(m.out_channels == 4 for m in entries)
    td(torch.rand(2, 3, 16, 16)).sum().backward()


def test_unknown_layer_the_user_keeps_whole_converts_without_warning():
    # the user asked for Mystery to run whole (leaf_modules): its projection is no surprise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reverso.topdown(WithMystery(), input_size=(3, 16, 16), leaf_modules=[Mystery])


def test_registered_user_layer_is_rebuilt(monkeypatch):
    monkeypatch.setattr(REGISTRY, "_rules", dict(REGISTRY._rules))
    reverso.register_width_rule(
        Mystery,
        in_width=lambda m: m.weight.shape[0],
        out_width=lambda m: m.weight.shape[0],
        rebuild=lambda m, cin, cout: Mystery(cin),
        preserves_width=lambda m: True,
    )
    td = reverso.topdown(WithMystery(), input_size=(3, 16, 16))
    assert td(torch.rand(2, 3, 16, 16)).shape == (2, 2)
    scales = [m for m in td.modules() if isinstance(m, Mystery)]
    assert [m.weight.shape[0] for m in scales] == [3]  # rebuilt for the image's 3 channels


class OwnConv(nn.Module):
    """A conv of the user's own that reverso knows only through the width registry."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight, padding=self.k // 2)


@pytest.fixture
def own_conv_registered(monkeypatch):
    monkeypatch.setattr(REGISTRY, "_rules", dict(REGISTRY._rules))
    reverso.register_width_rule(
        OwnConv,
        in_width=lambda m: m.cin,
        out_width=lambda m: m.cout,
        rebuild=lambda m, cin, cout: OwnConv(cin, cout, m.k),
    )


@pytest.mark.parametrize("arrangement", ["td", "uni", "rev"])
def test_a_body_built_only_of_registered_convs_converts(own_conv_registered, arrangement):
    # no nn.Conv2d in the body to copy for the laterals, the uni width or the rev kernels: plain
    # 3x3 laterals, the median feature-map width, 3x3 kernels
    model = nn.Sequential(
        OwnConv(3, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        OwnConv(8, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    td = reverso.topdown(model, input_size=(3, 32, 32), arrangement=arrangement)
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    laterals = [m for m in td.modules() if type(m) is nn.Conv2d and m.in_channels == 3]
    assert len(laterals) == 2 and all(m.kernel_size == (3, 3) for m in laterals)  # one per level
    own = [m for m in td.modules() if isinstance(m, OwnConv)]
    assert len(own) == 2 and all(m.weight.shape == (m.cout, m.cin, 3, 3) for m in own)


def own_conv_classes(kernel: int) -> nn.Sequential:
    """A net of registered convs whose last conv outputs the 10 class maps."""
    return nn.Sequential(
        OwnConv(3, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        OwnConv(8, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        OwnConv(16, 10, kernel),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def test_a_registered_1x1_conv_to_the_classes_is_the_classifier(own_conv_registered):
    # the kernel read from the layer's 4-D weight: the class map moves to the head
    td = reverso.topdown(own_conv_classes(1), input_size=(3, 32, 32))
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(td.get_submodule(td.classifier_path()), OwnConv)


def test_a_classifier_reverso_cannot_read_is_refused_not_miscounted(own_conv_registered):
    # the class map comes from a 3x3 conv, which reads neighbours and so is a body layer: the
    # top-down form would answer with 8 classes instead of 10
    with pytest.raises(reverso.UnsupportedTopologyError, match=r"would output \(2, 8\) where"):
        reverso.topdown(own_conv_classes(3), input_size=(3, 32, 32))


class DenseLayer(nn.Module):
    """``cat(x, conv(x))``: the output width follows the input width."""

    def __init__(self, c, growth):
        super().__init__()
        self.conv = nn.Conv2d(c, growth, 3, padding=1)

    def forward(self, x):
        return torch.cat([x, torch.relu(self.conv(x))], 1)


def dense_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        DenseLayer(8, 4),
        nn.MaxPool2d(2),
        DenseLayer(12, 4),
        nn.MaxPool2d(2),
        DenseLayer(16, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(20, 10),
    )


def test_merges_read_the_widths_width_repair_will_give(monkeypatch):
    # after the first merge the dense layer it feeds grows by its input's change, so the second
    # merge must be built for the width the repair (run after the pass) will leave
    td = reverso.topdown(dense_net(), input_size=(3, 32, 32))
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    import reverso.passes.multiscale_inputs as pass_module

    monkeypatch.setattr(pass_module, "propagate_as_repaired", lambda gm, ctx: None)
    with pytest.raises(reverso.ReversoError):
        reverso.topdown(dense_net(), input_size=(3, 32, 32))


def test_the_dry_run_of_width_repair_changes_nothing():
    from reverso.convert.topdown import compile_context, working_copy
    from reverso.options import TopDownOptions
    from reverso.rewrite.repair import propagate_as_repaired

    ctx = compile_context(dense_net(), (3, 32, 32), TopDownOptions())
    gm = working_copy(ctx.bu)
    named = ir.by_name(gm)
    ir.set_module(gm, "0", nn.Conv2d(3, 6, 3, padding=1))  # the dense layer now receives 6, not 8
    modules, code = dict(gm.named_modules()), gm.code
    propagate_as_repaired(gm, ctx)
    assert dict(gm.named_modules()) == modules and gm.code == code  # nothing rebuilt or inserted
    assert gm.get_submodule("1.conv").in_channels == 8  # still the old layer...
    assert ir.channels(named["cat"]) == 6 + 4  # ...but the shapes are those after the repair


class Gain(nn.Module):
    """A per-channel scale and shift that nobody registered, kept whole as a leaf."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.full((c,), 2.0))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def test_an_unregistered_per_channel_layer_is_rebuilt_without_a_rule():
    def conv(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), Gain(cout), nn.ReLU())

    model = nn.Sequential(
        conv(3, 16),
        conv(16, 32, 2),
        conv(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    td = reverso.topdown(model, input_size=(3, 32, 32), arrangement=24, leaf_modules=[Gain])
    gains = [m for m in td.modules() if isinstance(m, Gain)]
    assert gains and all(g.weight.shape == (24,) and torch.all(g.weight == 2.0) for g in gains)
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert REGISTRY.lookup(nn.PReLU()) is None  # one shared slope: no width to change


def test_one_rule_finds_the_classifier():
    """The last resizable layer with a kernel of one and as many outputs as classes: the head's
    Linear, or a convolutional classifier's 1x1 conv; never a norm on the scores, a 3x3 conv
    with that many channels, or a layer of another width."""
    import torch.fx as fx

    from reverso.rewrite.classifier import classifier_node

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.wide = nn.Conv2d(8, 10, 3, padding=1)  # ten channels, but a 3x3 window
            self.conv = nn.Conv2d(10, 10, 1)
            self.fc = nn.Linear(10, 10)
            self.norm = nn.BatchNorm1d(10)  # keeps its width: not the classifier
            self.other = nn.Linear(10, 7)

        def forward(self, x):
            y = self.conv(self.wide(x)).mean((2, 3))
            return self.norm(self.fc(y)), self.other(y)

    gm = fx.symbolic_trace(Head())
    nodes = list(gm.graph.nodes)
    assert classifier_node(gm, nodes, 10).target == "fc"
    assert classifier_node(gm, [n for n in nodes if n.target != "fc"], 10).target == "conv"
    assert classifier_node(gm, [n for n in nodes if n.target in ("wide", "norm")], 10) is None
    assert classifier_node(gm, nodes, 7).target == "other"
